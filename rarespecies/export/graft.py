"""A frozen backbone converted to ONNX once, and each head grafted onto it in seconds.

A head trained on a backbone's cached features changes far more often than the backbone
(every head experiment), yet converting the whole model with tf2onnx reconverts ConvNeXtBase
(~2-3 min, ~10.5 GB). So the backbone (uint8 pixels in, pooled features out, optimised and
portable-folded like a whole export) is converted once per backbone setting
(`export_backbone@<backbone>`), and the export stage converts only the head and appends it
to the backbone's graph (`rarespecies.export.graphs.join`). The backbone's file records the
SHA-256 of the weights it was converted from, so a graft onto other weights than the head was
trained on is refused before the parity gate would catch it.
"""

from __future__ import annotations

from pathlib import Path

import keras
import onnx
from onnx import compose

from rarespecies.config.params import BackboneParams
from rarespecies.core.progress import phase
from rarespecies.export.convert import save_checked, to_onnx
from rarespecies.export.graphs import (
    FEATURES,
    HEAD_PREFIX,
    WEIGHTS_SHA256,
    GraftError,
    file_sha256,
    join,
)
from rarespecies.modeling.features import load_backbone
from rarespecies.runtime.session import INPUT_NAME, OUTPUT_NAME


def backbone_model(backbone: keras.Model, input_size: int) -> keras.Model:
    """The backbone as the exported model starts: uint8 pixels -> features.

    Args:
        backbone: maps float RGB pixels (0..255) to pooled features; it normalizes itself.
        input_size: square input side in pixels.

    Returns:
        A functional model, input "pixels" `[None, s, s, 3]` uint8, output "features".
    """
    pixels = keras.Input((input_size, input_size, 3), dtype="uint8", name=INPUT_NAME)
    features = keras.layers.Identity(name=FEATURES)(
        backbone(keras.ops.cast(pixels, "float32")))
    return keras.Model(pixels, features, name="backbone_graph")


def head_model(head: keras.Model) -> keras.Model:
    """The head as the exported model ends: float features -> "probabilities"."""
    features = keras.Input(head.input_shape[1:], dtype="float32", name=FEATURES)
    probabilities = keras.layers.Identity(name=OUTPUT_NAME)(head(features))
    return keras.Model(features, probabilities, name="head_graph")


def convert_backbone(backbone: keras.Model, input_size: int, weights_file: Path, path: Path,
                     opset: int, metadata: dict[str, str], optimize: bool = True) -> Path:
    """Convert a frozen backbone once, for every head trained on its features.

    Args:
        backbone: the features stage's backbone, loaded from `weights_file`.
        input_size: square input side in pixels.
        weights_file: the `backbone.weights.h5` it was loaded from; its SHA-256 goes into the
            file's metadata, so `graft` can tell which weights the graph holds.
        path: destination `.onnx` file.
        opset: ONNX opset.
        metadata: more string pairs for `metadata_props` (e.g. the backbone's settings).
        optimize: the graph optimisation of a whole export (`rarespecies.export.optimize`).

    Returns:
        `path`, validated by the ONNX checker.
    """
    proto = to_onnx(backbone_model(backbone, input_size), opset, optimize)
    return save_checked(proto, path, {**metadata, WEIGHTS_SHA256: file_sha256(weights_file)})


def graft(backbone_path: Path, head: keras.Model, weights_file: Path, path: Path, opset: int,
          metadata: dict[str, str], optimize: bool = True) -> Path:
    """Convert `head` alone and join it to the backbone graph: uint8 pixels -> probabilities.

    Args:
        backbone_path: `convert_backbone`'s file.
        head: maps pooled features to probabilities (trained on that backbone's features).
        weights_file: the backbone weights the head was trained on; must be the ones the
            backbone graph was converted from.
        path: destination `.onnx` file.
        opset: ONNX opset; must be the backbone graph's.
        metadata: the exported model's `metadata_props` (of the backbone graph's, only the
            weights' digest is kept).
        optimize: rewrite the head's graph too (its GELU, if any).

    Returns:
        `path`, validated by the ONNX checker, with the same input and output as a whole-model
        conversion.

    Raises:
        GraftError: one line naming the backbone file and how to rebuild it.
    """
    with phase(f"load the backbone graph {backbone_path}"):
        backbone = onnx.load(str(backbone_path))
    recorded = {entry.key: entry.value for entry in backbone.metadata_props}
    rebuild = "rebuild it with `dvc repro export_backbone`"
    if recorded.get(WEIGHTS_SHA256) != file_sha256(weights_file):
        raise GraftError(f"{backbone_path} was converted from other weights than {weights_file} "
                         f"(the ones the head was trained on): {rebuild}")
    head_proto = to_onnx(head_model(head), opset, optimize)
    for part, name in ((backbone, backbone_path), (head_proto, "the head")):
        opsets = {entry.domain: entry.version for entry in part.opset_import}
        if opsets.get("", opsets.get("ai.onnx")) != opset:
            raise GraftError(f"{name} is not at opset {opset} (export.opset): {rebuild}")
    # The weights' digest stays in the exported model: quantize grafts the head onto the
    # backbone's INT8 variant only if that was quantized from the same weights.
    with phase("graft the head onto the backbone graph"):
        merged = join(backbone, compose.add_prefix(head_proto, HEAD_PREFIX))
    return save_checked(merged, path, {**metadata, WEIGHTS_SHA256: recorded[WEIGHTS_SHA256]})


def export_backbone(params: BackboneParams, weights_file: Path, path: Path, opset: int,
                    optimize: bool = True) -> dict[str, str]:
    """The export_backbone stage: the features stage's backbone, as an ONNX graph.

    Args:
        params: the backbone's settings (its weights come from `weights_file`).
        weights_file: `backbone.weights.h5` of the features stage, which every head on these
            features was trained on.
        path: destination `.onnx` file.
        opset: `export.opset`.
        optimize: `export.optimize`.

    Returns:
        The metadata written into the file.
    """
    with phase(f"build the Keras {params.architecture} backbone from {weights_file}"):
        backbone = load_backbone(params, weights_file)
    metadata = {"backbone": params.architecture, "input_size": str(params.input_size),
                "pooling": params.pooling}
    convert_backbone(backbone, params.input_size, weights_file, path, opset, metadata, optimize)
    return metadata
