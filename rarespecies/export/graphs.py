"""Joining ONNX graphs without TensorFlow: a backbone graph and a head graph become one model.

The export stage grafts a converted head onto its backbone's graph, the quantize stage a
quantized head onto the backbone's INT8 graph; both join them here, so either file has the
inputs, outputs, opsets and producer of a whole-model conversion.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import compose

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

    Args:
        backbone: pixels -> `features`.
        head: `head/features` (or `features`) -> `head/probabilities` (or `probabilities`),
            its other names prefixed with `head/` (`compose.add_prefix`).

    Returns:
        pixels -> probabilities, one opset entry per domain, the backbone's producer, no
        metadata (the caller writes the exported model's; both parts lose theirs).
    """
    # merge_models refuses differing IR versions; both come from the same converter.
    head.ir_version = backbone.ir_version
    del backbone.metadata_props[:]
    del head.metadata_props[:]
    merged = compose.merge_models(backbone, head,
                                  io_map=[(FEATURES, head.graph.input[0].name)])
    _rename_output(merged.graph, HEAD_PREFIX + OUTPUT_NAME, OUTPUT_NAME)
    # merge_models lists each part's opset (onnxruntime's quantizer then finds two ai.onnx
    # domains and refuses the file) and signs as itself: keep one entry per domain and the
    # converter's name, as a whole conversion has them.
    opsets = {("" if entry.domain == "ai.onnx" else entry.domain): entry.version
              for entry in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(domain, version)
                               for domain, version in sorted(opsets.items()))
    merged.producer_name, merged.producer_version = (backbone.producer_name,
                                                     backbone.producer_version)
    del merged.graph.value_info[:]  # as a whole export: shapes are inferred at load
    return merged


def _rename_output(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename graph output `old` (and every use of it) to `new`, in place."""
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for value in graph.output:
        if value.name == old:
            value.name = new
