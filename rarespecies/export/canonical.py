"""The same model converts to the same bytes: other bytes would be another DVC hash, a stage
that never comes back from the run cache, and a fresh clone that disagrees with dvc.lock.

tf2onnx 1.17 leaves two sources of variation. Its optimizers iterate over sets in an order
that changes from run to run (`hash_nodes_by_creation` fixes it). And it names the nodes and
constants it creates from one process-wide counter (`Transpose__809`), keeping whichever of
two identical constants it meets first, so the same graph comes out under other names
(`canonicalize` renames them by position).
"""

from __future__ import annotations

import itertools
import re

import onnx

_GENERATED = re.compile(r"__\d+")
_creation = itertools.count()


def hash_nodes_by_creation() -> None:
    """Make tf2onnx's graph optimizers take the same decisions in every run; call it before
    each conversion.

    They keep nodes in sets hashed by memory address and list an output's consumers from a set
    of names hashed by PYTHONHASHSEED, so which of two equivalent rewrites won (and whether a
    redundant Reshape survived) changed from run to run. Here a node hashes as the number of
    its creation in the current conversion, and consumers come in creation order.
    """
    global _creation
    _creation = itertools.count()
    from tf2onnx.graph import Graph, Node

    if getattr(Node, "_hashed_by_creation", False):
        return
    made, consumers = Node.__init__, Graph.find_output_consumers

    def __init__(self, *args, **kwargs) -> None:
        self._creation = next(_creation)
        made(self, *args, **kwargs)

    Node.__init__ = __init__
    Node.__hash__ = lambda self: self._creation
    Graph.find_output_consumers = lambda graph, output: sorted(
        consumers(graph, output), key=lambda node: node._creation)
    Node._hashed_by_creation = True


def canonicalize(graph: onnx.GraphProto) -> None:
    """Rename, in place, what tf2onnx numbered: each generated node or tensor name is numbered
    again by first use in node order, and each initializer is named after its first consumer
    and input slot; initializers are then stored in that order.

    Args:
        graph: the converted graph; its inputs and outputs keep their names.
    """
    renamed: dict[str, str] = {}

    def generated(name: str) -> str:
        if not _GENERATED.search(name):
            return name
        if name not in renamed:
            renamed[name] = f"{_GENERATED.sub('', name)}__{len(renamed) + 1}"
        return renamed[name]

    initializers = {tensor.name: tensor for tensor in graph.initializer}
    constants: dict[str, str] = {}
    for node in graph.node:
        node.name = generated(node.name)
        for slot, name in enumerate(node.input):
            if name in initializers:
                node.input[slot] = constants.setdefault(name, f"{node.name}#{slot}")
            else:
                node.input[slot] = generated(name)
        for slot, name in enumerate(node.output):
            node.output[slot] = generated(name)
    for value in graph.value_info:
        value.name = generated(value.name)
    unused = sorted(set(initializers) - set(constants))
    ordered = [*constants, *unused]
    for tensor in initializers.values():
        tensor.name = constants.get(tensor.name, tensor.name)
    del graph.initializer[:]
    graph.initializer.extend(initializers[old] for old in ordered)
