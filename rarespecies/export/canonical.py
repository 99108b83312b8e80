"""Stable names for a converted ONNX graph, so the same model always gives the same bytes.

tf2onnx names the nodes and constants its optimizers create from one process-wide counter
(`Transpose__809`), and when it merges identical constants it keeps whichever copy it meets
first. Converting the same model twice, or in another process, gives the same graph (same
nodes, same order, same values) under other names: other bytes, another DVC hash, a stage that
never comes back from the run cache. Renaming by position makes the bytes a function of the
graph alone.
"""

from __future__ import annotations

import re

import onnx

_GENERATED = re.compile(r"__\d+")


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
