"""Frozen ConvNeXt feature extractors, rebuilt with true depthwise convolutions.

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
from keras.src.applications import convnext as keras_convnext
from keras.src.backend import config as keras_config

BACKBONES = ("ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge")
# Bounds each blocking socket operation of Keras' download (no total limit), so a firewalled
# machine fails within a minute instead of hanging; a slow but live download still completes.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable, or a weights file is missing."""


def weights_file(name: str) -> Path:
    """Return where Keras caches (and looks for) the ImageNet "notop" weights of `name`.

    Mirrors `keras.utils.get_file(..., cache_subdir="models")`: `$KERAS_HOME/models` (as read
    when Keras was imported, default `~/.keras/models`), or `/tmp/.keras/models` when that
    folder is not writable.

    Args:
        name: a ConvNeXt variant, e.g. "ConvNeXtBase".

    Returns:
        The path, e.g. `~/.keras/models/convnext_base_notop.h5`.
    """
    _check_name(name)
    base = os.path.expanduser(keras_config.keras_home())
    if not os.access(base, os.W_OK):
        base = "/tmp/.keras"
    # Keras names the file after the model's default name, e.g. "convnext_base".
    return Path(base) / "models" / f"convnext_{name.removeprefix('ConvNeXt').lower()}_notop.h5"


def build_backbone(name: str, input_size: int, weights: str | None) -> keras.Model:
    """Build a frozen ConvNeXt that maps RGB pixels (float, 0..255) to pooled features.

    Weights are loaded into Keras' own (grouped) architecture first, then it is rewritten
    with `to_depthwise`. For `weights=None`, seed first with `keras.utils.set_random_seed`.

    Args:
        name: one of `BACKBONES`.
        input_size: square input side in pixels (at least 32).
        weights: None (random init), "imagenet" (Keras' cache, downloaded if possible) or
            the path of a weights file (Keras' notop `.h5`, or a `.weights.h5`).

    Returns:
        The depthwise model with `trainable = False`, output `[batch, channels]`.

    Raises:
        WeightsUnavailableError: the ImageNet weights or the given file cannot be had.
        ValueError: unknown `name` or `weights` value.
    """
    _check_name(name)
    if weights is None:
        model = to_depthwise(_keras_model(name, input_size, None))
    elif weights == "imagenet":
        model = to_depthwise(_imagenet(name, input_size))
    elif _looks_like_path(weights):
        model = _from_file(name, input_size, Path(weights).expanduser())
    else:
        raise ValueError(
            f"weights must be null, 'imagenet' or a weights file path (.h5, .weights.h5, .keras); "
            f"got {weights!r}"
        )
    model.trainable = False
    return model


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


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"backbone name must be one of {', '.join(BACKBONES)}; got {name!r}")


def _looks_like_path(weights: str) -> bool:
    # A typo such as "imagenett" must not be reported as a missing file.
    path = Path(weights)
    return weights.endswith((".h5", ".hdf5", ".keras")) or path.name != weights or path.exists()


def _keras_model(name: str, input_size: int, weights: str | None) -> keras.Model:
    return getattr(keras.applications, name)(
        include_top=False,
        include_preprocessing=True,
        weights=weights,
        input_shape=(input_size, input_size, 3),
        pooling="avg",
    )


def _imagenet(name: str, input_size: int) -> keras.Model:
    """Load ImageNet weights the way Keras does (cache, else download); fail in one clear line."""
    path = weights_file(name)
    url = keras_convnext.BASE_WEIGHTS_PATH + path.name  # read now: tests point it elsewhere
    file_hash = keras_convnext.WEIGHTS_HASHES[path.name.removesuffix("_notop.h5")][1]
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        # The same call as in keras.applications.ConvNeXt*(weights="imagenet").
        cached = keras.utils.get_file(path.name, url, cache_subdir="models", file_hash=file_hash)
    except Exception as error:
        cause = " ".join(str(error).split())[:200]
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached at {path} and could not be "
            f"downloaded from {url} ({cause}). Fix: copy {path.name} to {path}, or set "
            f"`weights:` to the path of a weights file, or `weights: null` for random init."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return _keras_model(name, input_size, cached)


def _from_file(name: str, input_size: int, path: Path) -> keras.Model:
    """Load a weights file into Keras' grouped architecture, then rewrite it as depthwise.

    Files saved from a depthwise model (e.g. `build_backbone(...).save_weights`) have another
    kernel layout; they are loaded into the rewritten model instead.
    """
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights file {path} does not exist. Fix: copy it there, or set `weights:` to "
            f"'imagenet' or null."
        )
    grouped = _keras_model(name, input_size, None)
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
