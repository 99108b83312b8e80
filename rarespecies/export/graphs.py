"""Joining ONNX graphs without TensorFlow: a backbone graph and a head graph become one model.

The export stage grafts a converted head onto its backbone's graph, the quantize stage a
quantized head onto the backbone's INT8 graph; both join them here, so either file has the
inputs, outputs, opsets and producer of a whole-model conversion.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from rarespecies.runtime.session import OUTPUT_NAME

FEATURES = "features"  # the backbone graph's output, the head graph's input
HEAD_PREFIX = "head/"  # keeps the head's node and tensor names apart from the backbone's
WEIGHTS_SHA256 = "backbone_weights_sha256"  # metadata key: the weights a backbone graph holds


class GraftError(RuntimeError):
    """The backbone graph cannot take this head (other weights, sizes or opset)."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (a backbone's weights are ~350 MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def join(backbone: onnx.ModelProto, head: onnx.ModelProto) -> onnx.ModelProto:
    """One model of a backbone graph and a head graph, as a whole conversion has it.

    The head's nodes and weights are appended to the backbone's graph in place: onnx's
    `compose.merge_models` copies the backbone twice and runs the in-memory checker on it,
    1.2 s of a head experiment for ConvNeXtBase, and the joined file is checked by path
    once written.

    Args:
        backbone: pixels -> `features`; becomes the joined model.
        head: `head/features` (or `features`) -> `head/probabilities` (or `probabilities`),
            its other names prefixed with `head/` (`compose.add_prefix`).

    Returns:
        `backbone`, now pixels -> probabilities, one opset entry per domain, the backbone's
        producer, no metadata (the caller writes the exported model's; both parts lose theirs).

    Raises:
        GraftError: the backbone does not end in `features`, a name is in both graphs, or
            they import an operator domain at different versions.
    """
    graph, part = backbone.graph, head.graph
    if [value.name for value in graph.output] != [FEATURES]:
        raise GraftError(f"the backbone graph's outputs are {[v.name for v in graph.output]}, "
                         f"not [{FEATURES!r}]")
    clash = _names(graph) & _names(part)
    if clash:
        raise GraftError(f"names in both the backbone and the head graph: {sorted(clash)[:3]}")
    # One entry per domain (onnxruntime's quantizer refuses a file listing ai.onnx twice).
    opsets: dict[str, int] = {}
    for entry in (*backbone.opset_import, *head.opset_import):
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        if opsets.setdefault(domain, entry.version) != entry.version:
            raise GraftError(f"the backbone and the head import {domain or 'ai.onnx'} at "
                             f"versions {opsets[domain]} and {entry.version}")
    # Every check above comes before the first change to `backbone`.
    feeds = part.input[0].name
    for node in part.node:
        node.input[:] = [FEATURES if name == feeds else name for name in node.input]
    graph.node.extend(part.node)
    graph.initializer.extend(part.initializer)
    del graph.output[:]
    graph.output.extend(part.output)
    _rename_output(graph, HEAD_PREFIX + OUTPUT_NAME, OUTPUT_NAME)
    del backbone.opset_import[:]
    backbone.opset_import.extend(onnx.helper.make_opsetid(domain, version)
                                 for domain, version in sorted(opsets.items()))
    del backbone.metadata_props[:]
    del graph.value_info[:]  # as a whole export: shapes are inferred at load
    return backbone


def _names(graph: onnx.GraphProto) -> set[str]:
    """The node, tensor and weight names a graph defines."""
    return ({node.name for node in graph.node} | {out for node in graph.node for out in node.output}
            | {tensor.name for tensor in graph.initializer}) - {""}


def _rename_output(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename graph output `old` (and every use of it) to `new`, in place."""
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for value in graph.output:
        if value.name == old:
            value.name = new
