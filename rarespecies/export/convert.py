"""Export the classifier (uint8 pixels in, probabilities out) to ONNX and check its parity.

Two workarounds make Keras 3 ConvNeXt models convertible with tf2onnx 1.17: the backbone must
use `DepthwiseConv2D` (see `rarespecies.modeling.backbones.to_depthwise`), and exact GELU
lowers to the TF op `Erfc`, which tf2onnx has no handler for (`register_tf2onnx_fixes`).
`from_keras` is used because `from_function` and Keras' own ONNX export lose ConvNeXt's
`Normalization` constants. `rarespecies.export.optimize` then rewrites the converted graph
into forms onnxruntime fuses (standard ONNX ops only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import onnx
import tensorflow as tf
from tqdm import tqdm

from rarespecies.core.files import atomic_path
from rarespecies.core.progress import bar, phase
from rarespecies.export.canonical import canonicalize, hash_nodes_by_creation
from rarespecies.export.optimize import optimize as optimize_graph
from rarespecies.export.portable import fold_reduce_unsqueeze
from rarespecies.runtime.session import (
    IMAGES_PER_RUN,
    INPUT_NAME,
    OUTPUT_NAME,
    open_session,
    probabilities,
)

_fixes_registered = False


class ParityError(RuntimeError):
    """The ONNX model's outputs differ from the Keras model's by more than the tolerance."""


def register_tf2onnx_fixes() -> None:
    """Teach tf2onnx the TF op `Erfc` as `1 - Erf(x)` (ONNX has Erf since opset 9). Idempotent."""
    global _fixes_registered
    if _fixes_registered:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    if any("Erfc" in handlers for opsets in tf_op.get_opsets().values() for handlers in opsets):
        _fixes_registered = True  # a later tf2onnx handles it natively
        return

    @tf_op("Erfc")
    class _Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            erf = ctx.insert_new_node_on_input(node, "Erf", node.input[0])
            # Reuse the Erfc node (its name and output edges) as the subtraction.
            node.type = "Sub"
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])

    _fixes_registered = True


def inference_model(backbone: keras.Model, head: keras.Model, input_size: int) -> keras.Model:
    """Chain cast, backbone and head into the model that ships: uint8 pixels -> probabilities.

    Args:
        backbone: maps float RGB pixels (0..255) to pooled features; it normalizes itself.
        head: maps pooled features to softmax probabilities.
        input_size: square input side in pixels.

    Returns:
        A functional model with input "pixels" `[None, s, s, 3]` uint8 and output
        "probabilities" `[None, classes]` float32.
    """
    pixels = keras.Input((input_size, input_size, 3), dtype="uint8", name=INPUT_NAME)
    features = backbone(keras.ops.cast(pixels, "float32"))
    probabilities = keras.layers.Identity(name=OUTPUT_NAME)(head(features))
    return keras.Model(pixels, probabilities, name="classifier")


def to_onnx(model: keras.Model, opset: int, optimize: bool = True) -> onnx.ModelProto:
    """Convert a one-input Keras model with tf2onnx, batch dynamic, then rewrite it for speed.

    Args:
        model: a functional model with one input (its name and dtype become the ONNX input's).
        opset: ONNX opset (tf2onnx 1.17 supports up to 18).
        optimize: rewrite the graph with `rarespecies.export.optimize.optimize` (fusable GELU,
            LayerNormalization, 4-D MatMul); False keeps tf2onnx's graph.

    Returns:
        The model, portable-folded (`fold_reduce_unsqueeze`), not yet canonicalized.
    """
    import tf2onnx

    register_tf2onnx_fixes()
    hash_nodes_by_creation()
    source = model.inputs[0]
    signature = (tf.TensorSpec([None, *source.shape[1:]], source.dtype, name=source.name),)
    # The same model converts in about the same time on the same machine: the last run's
    # duration of this key is the estimate (no count exists inside tf2onnx).
    key = f"{model.name} {tuple(source.shape[1:])} {model.count_params()} params opset {opset}"
    with phase(f"convert {model.name} ({model.count_params() / 1e6:.1f}M parameters) with "
               f"tf2onnx", key=f"tf2onnx {key}"), _quiet_tf2onnx():
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    for value_info in (*proto.graph.input, *proto.graph.output):
        # tf2onnx names the dynamic batch dimension "unk__<n>"; give it a readable name.
        value_info.type.tensor_type.shape.dim[0].dim_param = "batch"
    if optimize:
        with phase(f"optimize {model.name}'s graph ({len(proto.graph.node)} nodes) for "
                   "onnxruntime's fusions", key=f"optimize {key}"):
            proto = optimize_graph(proto)
    # A no-op after optimize_graph (its 4-D MatMul removes the pattern); without it, the fold
    # is what lets OpenCV's DNN run the file.
    fold_reduce_unsqueeze(proto)  # a walk over the nodes, well under a second: no phase
    return proto


def save_checked(proto: onnx.ModelProto, path: Path, metadata: dict[str, str]) -> Path:
    """Canonicalize names, set the metadata, write atomically, then validate the file.

    Args:
        proto: the model (changed in place).
        path: destination `.onnx` file.
        metadata: string pairs stored in `metadata_props` (replacing any there).

    Returns:
        `path`, once the file passed `onnx.checker.check_model(full_check=True)`.
    """
    canonicalize(proto.graph)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=str(key), value=str(value))
    path = Path(path)
    with phase(f"write {path} and check it with the ONNX checker"), atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        # By path: ConvNeXtBase (~350 MB) is too large for the in-memory check.
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def convert_to_onnx(model: keras.Model, path: Path, opset: int, metadata: dict[str, str],
                    optimize: bool = True) -> Path:
    """Convert `model` to ONNX with a dynamic batch, validate it and write it atomically.

    Args:
        model: the output of `inference_model` (one `[None, s, s, 3]` uint8 input).
        path: destination `.onnx` file.
        opset: ONNX opset (tf2onnx 1.17 supports up to 18).
        metadata: string pairs stored in the model's `metadata_props`.
        optimize: rewrite the graph with `rarespecies.export.optimize.optimize` (fusable GELU,
            LayerNormalization, 4-D MatMul); False keeps tf2onnx's graph.

    Returns:
        `path`, once the file passed `onnx.checker.check_model(full_check=True)`.
    """
    return save_checked(to_onnx(model, opset, optimize), path, metadata)


def parity(model: keras.Model, onnx_path: Path, images: np.ndarray, batch_size: int = 16,
           probabilities_out: Path | None = None) -> dict:
    """Run the Keras model and the ONNX file on the same uint8 images and compare them.

    Args:
        model: the Keras model that was converted.
        onnx_path: the converted file.
        images: uint8 array `[n, s, s, 3]`.
        batch_size: images per Keras call (onnxruntime runs them as `rarespecies predict`).
        probabilities_out: where to save the ONNX file's probabilities (`.npy`), if anywhere.

    Returns:
        {"images": n, "max_abs_diff": largest probability difference,
         "top1_agreement": fraction of images with the same predicted class}.
    """
    images = _checked_pixels(images)
    # A traced call is several times faster than model.predict for a few batches.
    keras_call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    expected = np.concatenate([np.asarray(keras_call(tf.constant(batch)))
                               for batch in _batches(images, batch_size, "parity: Keras")])
    return compare(expected, onnx_path, images, probabilities_out=probabilities_out)


def _batches(images: np.ndarray, batch_size: int, desc: str) -> Iterator[np.ndarray]:
    """`images` in batches, with a progress bar counting images."""
    with bar(tqdm, desc=f"{desc} on {len(images)} test images", total=len(images),
             unit="img") as shown:
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
            shown.update(len(images[start:start + batch_size]))


def compare(expected: np.ndarray, onnx_path: Path, images: np.ndarray,
            batch_size: int = IMAGES_PER_RUN, probabilities_out: Path | None = None) -> dict:
    """Run the ONNX file on uint8 images and compare its probabilities with Keras' `expected`.

    Args:
        expected: Keras' probabilities for `images`, `[n, classes]`.
        onnx_path: the converted file.
        images: uint8 array `[n, s, s, 3]`.
        batch_size: images per call.
        probabilities_out: where to save the ONNX file's probabilities (`.npy`), if anywhere:
            quantize compares its INT8 variant with them instead of running this file again.

    Returns:
        The figures `parity` returns.
    """
    images = _checked_pixels(images)
    if len(expected) != len(images):
        raise ValueError(f"{len(expected)} Keras outputs for {len(images)} images")
    session = open_session(onnx_path)  # the settings and call size `rarespecies predict` uses
    onnx_out = np.concatenate([probabilities(session, batch, batch_size) for batch in
                               _batches(images, batch_size, "parity: onnxruntime")])
    if probabilities_out is not None:
        Path(probabilities_out).parent.mkdir(parents=True, exist_ok=True)
        np.save(probabilities_out, onnx_out)
    return {
        "images": len(images),
        "max_abs_diff": float(np.max(np.abs(expected - onnx_out))),
        "top1_agreement": float(np.mean(expected.argmax(axis=1) == onnx_out.argmax(axis=1))),
    }


def _checked_pixels(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"parity needs uint8 images [n>0, s, s, 3], got {images.dtype} {images.shape}"
        )
    return images


def check_parity(report: dict, tolerance: float, min_agreement: float = 0.999) -> None:
    """Raise `ParityError` unless the ONNX outputs match (report from `parity`).

    Args:
        report: `parity`'s figures.
        tolerance: the largest probability difference allowed.
        min_agreement: the smallest share of images whose top-1 family must agree.
    """
    diff, agreement = report["max_abs_diff"], report["top1_agreement"]
    problems = []
    if diff > tolerance:
        problems.append(f"max |keras - onnx| probability difference {diff:.3g} exceeds "
                        f"tolerance {tolerance:.3g} by {diff - tolerance:.3g}")
    if agreement < min_agreement:
        problems.append(f"top-1 agreement {agreement:.2%} is below {min_agreement:.2%} by "
                        f"{(min_agreement - agreement) * 100:.2f} points")
    if problems:
        raise ParityError(f"ONNX parity failed over {report['images']} images: "
                          + "; ".join(problems))


@contextmanager
def _quiet_tf2onnx() -> Iterator[None]:
    """Raise tf2onnx's logger to WARNING for the block: its INFO output is per-step noise."""
    logger = logging.getLogger("tf2onnx")
    previous = logger.level
    logger.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(previous)
