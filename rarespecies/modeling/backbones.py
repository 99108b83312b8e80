"""Frozen feature extractors (ConvNeXt, DenseNet121, InceptionResNetV2) that take raw pixels.

Every backbone maps float RGB pixels (0..255) to features and normalizes them itself, as its
first layers, so a saved or exported model needs no outside preprocessing.

Keras 3 builds ConvNeXt's 7x7 depthwise convolutions as `Conv2D(groups=channels)`. On the
TensorFlow CPU backend that runs 3.5-7x slower than `DepthwiseConv2D`, and tf2onnx cannot
convert it (onnxruntime then refuses the file). `to_depthwise` swaps those layers for
`DepthwiseConv2D` holding the same weights, so the outputs do not change.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras.src.applications import convnext as keras_convnext
from keras.src.applications import densenet as keras_densenet
from keras.src.applications import inception_resnet_v2 as keras_inception
from keras.src.backend import config as keras_config

BACKBONES = (
    "ConvNeXtTiny",
    "ConvNeXtSmall",
    "ConvNeXtBase",
    "ConvNeXtLarge",
    "DenseNet121",
    "InceptionResNetV2",
)
POOLINGS = ("avg", "none")
# Name of the layer that normalizes pixels in DenseNet121 and InceptionResNetV2 (ConvNeXt keeps
# Keras' own, "<model>_prestem_normalization").
PREPROCESSING_LAYER = "preprocessing"
# Bounds each blocking socket operation of Keras' download (no total limit), so a firewalled
# machine fails within a minute instead of hanging; a slow but live download still completes.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0

# Smallest input side Keras accepts (checked here too, so that it fails before any download).
_MIN_SIZE = {"InceptionResNetV2": 75}
_DEFAULT_MIN_SIZE = 32
# Keras' notop ImageNet files outside ConvNeXt, with the MD5s that Keras' DenseNet and
# InceptionResNetV2 builders pass to `get_file` (literals there, so copied here).
_NOTOP = {
    "DenseNet121": (
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    "InceptionResNetV2": (
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4",
    ),
}
# keras.applications.densenet.preprocess_input ("torch" mode): x / 255, then per channel
# (x - mean) / std with ImageNet's RGB statistics.
_TORCH_MEAN = np.array([0.485, 0.456, 0.406])
_TORCH_STD = np.array([0.229, 0.224, 0.225])


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable, or a weights file is missing."""


def weights_file(name: str) -> Path:
    """Return where Keras caches (and looks for) the ImageNet "notop" weights of `name`.

    Mirrors `keras.utils.get_file(..., cache_subdir="models")`: `$KERAS_HOME/models` (as read
    when Keras was imported, default `~/.keras/models`), or `/tmp/.keras/models` when that
    folder is not writable.

    Args:
        name: one of `BACKBONES`, e.g. "ConvNeXtBase".

    Returns:
        The path, e.g. `~/.keras/models/convnext_base_notop.h5`.
    """
    _check_name(name)
    base = os.path.expanduser(keras_config.keras_home())
    if not os.access(base, os.W_OK):
        base = "/tmp/.keras"
    return Path(base) / "models" / _imagenet_source(name)[0]


def build_backbone(
    name: str, input_size: int, weights: str | None, pooling: str = "avg"
) -> keras.Model:
    """Build a frozen backbone that maps RGB pixels (float, 0..255) to features.

    The architecture's own preprocessing is the model's first layers: ConvNeXt's built-in
    normalization, DenseNet121's "torch" normalization, InceptionResNetV2's scaling to [-1, 1].
    ConvNeXt weights are loaded into Keras' own (grouped) architecture first, then it is
    rewritten with `to_depthwise`. For `weights=None`, seed first with
    `keras.utils.set_random_seed`.

    Args:
        name: one of `BACKBONES`.
        input_size: square input side in pixels (at least 32; 75 for InceptionResNetV2).
        weights: None (random init), "imagenet" (Keras' cache, downloaded if possible) or
            the path of a weights file (Keras' notop `.h5`, or a `.weights.h5`).
        pooling: "avg" (global average pooling) or "none" (the last feature map).

    Returns:
        A functional model with `trainable = False`, input `[batch, s, s, 3]`, output
        `[batch, channels]` ("avg") or `[batch, h, w, channels]` ("none").

    Raises:
        WeightsUnavailableError: the ImageNet weights or the given file cannot be had.
        ValueError: unknown `name`, `pooling` or `weights` value, or `input_size` too small.
    """
    _check_args(name, input_size, pooling)
    if weights is None:
        model = _rewrite(name, _keras_model(name, input_size, None, pooling))
    elif weights == "imagenet":
        model = _rewrite(name, _keras_model(name, input_size, _imagenet(name), pooling))
    elif _looks_like_path(weights):
        model = _from_file(name, input_size, pooling, Path(weights).expanduser())
    else:
        raise ValueError(
            f"weights must be null, 'imagenet' or a weights file path (.h5, .weights.h5, .keras); "
            f"got {weights!r}"
        )
    model.trainable = False
    return model


def unfreeze_last(backbone: keras.Model, layers: int) -> int:
    """Make the last `layers` weight-holding layers of `backbone` trainable, the rest frozen.

    Layers are counted in topological order among those holding weights, nested models
    included. BatchNormalization layers stay frozen even inside that window (as the Keras
    transfer-learning guide advises): fine-tuning with small batches would ruin their
    statistics, and a frozen one runs in inference mode. Calling it again re-decides every
    layer, so `unfreeze_last(backbone, 0)` freezes the backbone again.

    Args:
        backbone: a model from `build_backbone` (changed in place).
        layers: how many weight-holding layers, counted from the output, to unfreeze; more
            than the backbone has unfreezes all of them.

    Returns:
        The number of layers made trainable (the window minus its BatchNormalization layers).

    Raises:
        ValueError: `layers` is negative.
    """
    if layers < 0:
        raise ValueError(f"layers must be >= 0; got {layers}")
    holders = [layer for _, layer in _leaf_layers(backbone)]
    first = len(holders) - layers
    # In Keras 3, `trainable` propagates to every sublayer: open the whole model (nested
    # models included), then close each leaf outside the window, and every BatchNormalization.
    backbone.trainable = True
    unfrozen = 0
    for index, layer in enumerate(holders):
        layer.trainable = index >= first and not isinstance(layer, keras.layers.BatchNormalization)
        unfrozen += layer.trainable
    return unfrozen


def calibrate_batch_norm(model: keras.Model, images: np.ndarray, count: int,
                         seed: int) -> int:
    """Set every BatchNormalization layer's moving mean and variance to its inputs' moments.

    A freshly initialised BatchNormalization layer holds mean 0 and variance 1; in a random
    backbone that runs in inference mode, activations then grow or shrink layer after layer
    until the features are nearly constant across images. This measures the statistics on
    `count` images picked at random (seeded) from `images`: one forward pass over them as a
    single batch, in training mode with momentum 0, so each layer normalizes with, and stores,
    the exact per-channel mean and (population) variance of its input over those images, given
    the layers before it already calibrated. In inference mode afterwards, every layer sees the
    inputs it was calibrated on. Memory grows with `count` (one batch of that many images; 64
    images took +0.9 GB for DenseNet121 at 224 px, +1.3 GB for InceptionResNetV2 at 299 px).
    A model without BatchNormalization (ConvNeXt uses LayerNormalization) is left untouched,
    without a forward pass. Every layer's `trainable` flag and momentum are restored.

    Args:
        model: a built model taking float pixels (changed in place).
        images: (N, S, S, 3) images (uint8 or float, possibly memory-mapped).
        count: how many images to measure on (all N if fewer); 0 does nothing.
        seed: picks which images.

    Returns:
        The number of BatchNormalization layers calibrated (0 when nothing changed).

    Raises:
        ValueError: `count` is negative, or `images` is empty while there is a layer to set.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0; got {count}")
    norms = [layer for _, layer in _leaf_layers(model)
             if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms or count == 0:
        return 0
    if len(images) == 0:
        raise ValueError("no images to measure BatchNormalization statistics on")
    rng = np.random.default_rng(seed)
    # Sorted indices read a memory map in order.
    picked = np.sort(rng.choice(len(images), min(count, len(images)), replace=False))
    batch = np.asarray(images[picked], dtype="float32")
    # A BatchNormalization layer uses batch statistics only when called with training=True
    # AND trainable; momentum 0 makes the stored statistics exactly this batch's.
    saved = [(layer.trainable, layer.momentum) for layer in norms]
    try:
        for layer in norms:
            layer.trainable, layer.momentum = True, 0.0
        # In a graph, each activation is freed once its consumers ran; eager Keras keeps
        # them all (DenseNet121, 64 images at 224 px: 13.5 GB eager).
        tf.function(lambda x: model(x, training=True))(batch)
    finally:
        for layer, (trainable, momentum) in zip(norms, saved, strict=True):
            layer.trainable, layer.momentum = trainable, momentum
    return len(norms)


def to_depthwise(model: keras.Model) -> keras.Model:
    """Rebuild `model` with each `Conv2D(groups == filters == in channels)` as `DepthwiseConv2D`.

    Args:
        model: a built functional or sequential model (nested models are rewritten too).

    Returns:
        A new model with the same layer names, computing the same function. All weights are
        copied, so the original model can be discarded.
    """
    clone = keras.models.clone_model(model, clone_function=_swap_layer, recursive=True)
    old_layers = dict(_leaf_layers(model))
    for layer_name, new in _leaf_layers(clone):
        values = old_layers[layer_name].get_weights()
        if isinstance(new, keras.layers.DepthwiseConv2D):
            # Grouped kernel (kh, kw, 1, C) -> depthwise kernel (kh, kw, C, multiplier=1).
            values[0] = np.transpose(values[0], (0, 1, 3, 2))
        new.set_weights(values)
    clone.trainable = model.trainable
    return clone


def _is_grouped_depthwise(layer: keras.layers.Layer) -> bool:
    if type(layer) is not keras.layers.Conv2D or layer.groups == 1:
        return False
    return layer.groups == layer.filters == layer.kernel.shape[-2] * layer.groups


def _swap_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """`clone_model` hook: a fresh copy of `layer`, depthwise if it is a grouped depthwise conv."""
    if not _is_grouped_depthwise(layer):
        return layer.__class__.from_config(layer.get_config())
    return keras.layers.DepthwiseConv2D(
        kernel_size=layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        data_format=layer.data_format,
        dilation_rate=layer.dilation_rate,
        depth_multiplier=1,
        activation=layer.activation,
        use_bias=layer.use_bias,
        name=layer.name,
        dtype=layer.dtype_policy,
    )


def _leaf_layers(model: keras.Model) -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yield (name, layer) for every non-model layer holding weights, nested models included."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        elif layer.weights:
            yield layer.name, layer


def _is_convnext(name: str) -> bool:
    return name.startswith("ConvNeXt")


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"backbone name must be one of {', '.join(BACKBONES)}; got {name!r}")


def _check_args(name: str, input_size: int, pooling: str) -> None:
    _check_name(name)
    if pooling not in POOLINGS:
        allowed = ", ".join(repr(p) for p in POOLINGS)
        raise ValueError(f"pooling must be one of {allowed}; got {pooling!r}")
    minimum = _MIN_SIZE.get(name, _DEFAULT_MIN_SIZE)
    if input_size < minimum:
        raise ValueError(f"{name} needs input_size >= {minimum}; got {input_size}")


def _looks_like_path(weights: str) -> bool:
    # A typo such as "imagenett" must not be reported as a missing file.
    path = Path(weights)
    return weights.endswith((".h5", ".hdf5", ".keras")) or path.name != weights or path.exists()


def _keras_model(name: str, input_size: int, weights: str | None, pooling: str) -> keras.Model:
    """Keras' notop architecture with its preprocessing first, loading `weights` as Keras does."""
    shape = (input_size, input_size, 3)
    application = getattr(keras.applications, name)
    options = {
        "include_top": False,
        "weights": weights,
        "input_shape": shape,
        "pooling": "avg" if pooling == "avg" else None,
    }
    if _is_convnext(name):
        return application(include_preprocessing=True, **options)
    pixels = keras.Input(shape)
    # Given an input tensor, Keras builds one flat model starting at `pixels`. The weightless
    # Rescaling layer leaves the order of weight-holding layers, which Keras' legacy .h5
    # weights files rely on, unchanged.
    model = application(input_tensor=_preprocessing(name)(pixels), **options)
    # Keras gives that model a list of inputs, and every call with a bare tensor then warns
    # that the structure does not match: rewrap the same layers with a single input.
    return keras.Model(pixels, model.output, name=model.name)


def _preprocessing(name: str) -> keras.layers.Rescaling:
    """`preprocess_input` of DenseNet121 or InceptionResNetV2 as one weightless layer.

    Rescaling accepts per-channel scale and offset arrays and saves them in the model's
    config, so the model reloads without custom objects and converts with tf2onnx.
    """
    if name == "DenseNet121":
        # (x / 255 - mean) / std  ==  x * (1 / (255 std)) + (-mean / std), per channel.
        scale = (1 / (255 * _TORCH_STD)).astype("float32")
        offset = (-_TORCH_MEAN / _TORCH_STD).astype("float32")
        return keras.layers.Rescaling(scale, offset, name=PREPROCESSING_LAYER)
    # InceptionResNetV2, "tf" mode: [0, 255] -> [-1, 1].
    return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=PREPROCESSING_LAYER)


def _rewrite(name: str, model: keras.Model) -> keras.Model:
    """Keras' model as built, except ConvNeXt's grouped convolutions become depthwise."""
    return to_depthwise(model) if _is_convnext(name) else model


def _imagenet_source(name: str) -> tuple[str, str, str]:
    """Return the notop ImageNet weights' (file name, URL, hash) exactly as Keras uses them.

    The URLs are read from Keras' modules at each call, so tests can point them elsewhere.
    """
    if _is_convnext(name):
        key = f"convnext_{name.removeprefix('ConvNeXt').lower()}"  # Keras' default model name
        file = f"{key}_notop.h5"
        return file, keras_convnext.BASE_WEIGHTS_PATH + file, keras_convnext.WEIGHTS_HASHES[key][1]
    file, file_hash = _NOTOP[name]
    if name == "DenseNet121":
        return file, keras_densenet.DENSENET121_WEIGHT_PATH_NO_TOP, file_hash
    return file, keras_inception.BASE_WEIGHT_URL + file, file_hash


def _imagenet(name: str) -> str:
    """Return the cached ImageNet weights file (downloading it if possible); fail in one line."""
    path = weights_file(name)
    file, url, file_hash = _imagenet_source(name)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        # The same call as in keras.applications.<name>(weights="imagenet", include_top=False).
        return keras.utils.get_file(file, url, cache_subdir="models", file_hash=file_hash)
    except Exception as error:
        cause = " ".join(str(error).split())[:200]
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached at {path} and could not be "
            f"downloaded from {url} ({cause}). Fix: copy {file} to {path}, or set "
            f"`weights:` to the path of a weights file, or `weights: null` for random init."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _from_file(name: str, input_size: int, pooling: str, path: Path) -> keras.Model:
    """Build `name` and load the weights file `path` into it (Keras' notop files included)."""
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights file {path} does not exist. Fix: copy it there, or set `weights:` to "
            f"'imagenet' or null."
        )
    model = _keras_model(name, input_size, None, pooling)
    if not _is_convnext(name):
        model.load_weights(path)
        return model
    return _load_convnext_file(model, path)


def _load_convnext_file(grouped: keras.Model, path: Path) -> keras.Model:
    """Load a weights file into Keras' grouped ConvNeXt, then rewrite it as depthwise.

    Files saved from a depthwise model (e.g. `build_backbone(...).save_weights`) have another
    kernel layout; they are loaded into the rewritten model instead.
    """
    # Keras warns per layer before failing on a depthwise-layout file: keep the warnings
    # only if this layout is the right one.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            grouped.load_weights(path)
        except ValueError as grouped_error:
            model = to_depthwise(grouped)
            try:
                model.load_weights(path)
            except ValueError:
                raise grouped_error from None
            return model
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return to_depthwise(grouped)
