"""Backbone construction: the depthwise rewrite keeps outputs, and every weights source works."""

from __future__ import annotations

import socket
import time

import h5py
import keras
import numpy as np
import pytest
from keras.src.applications import convnext as keras_convnext
from keras.src.backend import config as keras_config
from keras.src.legacy.saving import legacy_h5_format

from stages.backbones import WeightsUnavailableError, build_backbone, to_depthwise, weights_file

SIZE = 64
TINY_BLOCKS = 3 + 3 + 9 + 3  # ConvNeXtTiny depths: one depthwise conv per block


def _images(n: int = 3, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = []
    for layer in model.layers:
        layers += _flat_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return layers


@pytest.fixture(scope="module")
def grouped() -> keras.Model:
    """Keras' own ConvNeXtTiny (grouped convs), random init."""
    keras.utils.set_random_seed(7)
    model = keras.applications.ConvNeXtTiny(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg"
    )
    # Keras initialises LayerScale at 1e-6, which hides every block (and so every depthwise
    # conv) from the output; a larger scale makes the equality tests meaningful.
    for layer in model.layers:
        if "layer_scale" in layer.name:
            layer.set_weights([np.full_like(w, 0.5) for w in layer.get_weights()])
    return model


@pytest.fixture(scope="module")
def depthwise(grouped: keras.Model) -> keras.Model:
    return to_depthwise(grouped)


@pytest.mark.slow
def test_rewrite_keeps_outputs(grouped: keras.Model, depthwise: keras.Model) -> None:
    x = _images()
    expected = grouped(x, training=False).numpy()
    assert np.max(np.abs(depthwise(x, training=False).numpy() - expected)) <= 1e-5

    # The check is not vacuous: breaking one depthwise kernel changes the output.
    broken = to_depthwise(grouped)
    conv = next(la for la in _flat_layers(broken) if isinstance(la, keras.layers.DepthwiseConv2D))
    kernel, bias = conv.get_weights()
    conv.set_weights([np.zeros_like(kernel), bias])
    assert np.max(np.abs(broken(x, training=False).numpy() - expected)) > 1e-3


@pytest.mark.slow
def test_rewrite_replaces_every_grouped_conv(depthwise: keras.Model) -> None:
    layers = _flat_layers(depthwise)
    assert not [la.name for la in layers if isinstance(la, keras.layers.Conv2D) and la.groups > 1]
    convs = [la for la in layers if isinstance(la, keras.layers.DepthwiseConv2D)]
    assert len(convs) == TINY_BLOCKS
    assert all(la.name.endswith("_depthwise_conv") for la in convs)
    assert convs[0].kernel.shape == (7, 7, 96, 1)


@pytest.mark.slow
def test_random_backbone_is_frozen_feature_extractor() -> None:
    keras.utils.set_random_seed(0)
    model = build_backbone("ConvNeXtTiny", 32, None)
    assert model.trainable is False
    assert model.trainable_weights == []
    assert model.output_shape == (None, 768)
    assert model(_images(2, 32), training=False).shape == (2, 768)


def test_unknown_name_and_weights_values_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="ConvNeXtTiny, ConvNeXtSmall"):
        build_backbone("ResNet50", SIZE, None)
    with pytest.raises(ValueError, match="null, 'imagenet' or a weights file path"):
        build_backbone("ConvNeXtTiny", SIZE, "imagenett")


def test_weights_file_is_keras_cache_path(monkeypatch, tmp_path) -> None:
    # Keras reads $KERAS_HOME once at import, so point its resolved value at tmp_path.
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    assert weights_file("ConvNeXtBase") == tmp_path / "models" / "convnext_base_notop.h5"
    assert weights_file("ConvNeXtLarge").name == "convnext_large_notop.h5"


def test_missing_imagenet_weights_fail_fast_and_clearly(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    with socket.socket() as probe:  # a port nothing listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(keras_convnext, "BASE_WEIGHTS_PATH", f"http://127.0.0.1:{port}/")

    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        build_backbone("ConvNeXtTiny", SIZE, "imagenet")
    message = str(caught.value)
    assert time.monotonic() - start < 10
    assert "\n" not in message
    assert str(tmp_path / "models" / "convnext_tiny_notop.h5") in message
    assert "weights: null" in message
    assert not (tmp_path / "models" / "convnext_tiny_notop.h5").exists()


def test_missing_weights_file_is_named(tmp_path) -> None:
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(WeightsUnavailableError, match=str(missing)):
        build_backbone("ConvNeXtTiny", SIZE, str(missing))


@pytest.mark.slow
def test_weights_file_is_loaded(grouped: keras.Model, depthwise: keras.Model, tmp_path) -> None:
    path = tmp_path / "backbone.weights.h5"
    grouped.save_weights(path)
    keras.utils.set_random_seed(123)  # loaded weights, not this seed, must decide the output
    model = build_backbone("ConvNeXtTiny", SIZE, str(path))
    x = _images()
    assert np.array_equal(model(x, training=False).numpy(), depthwise(x, training=False).numpy())


@pytest.mark.slow
def test_keras_legacy_h5_file_is_loaded(
    grouped: keras.Model, depthwise: keras.Model, tmp_path
) -> None:
    # Keras' own convnext_*_notop.h5 files use the legacy (Keras 2) HDF5 weights layout.
    path = tmp_path / "convnext_tiny_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, grouped)
    model = build_backbone("ConvNeXtTiny", SIZE, str(path))
    x = _images()
    assert np.array_equal(model(x, training=False).numpy(), depthwise(x, training=False).numpy())


@pytest.mark.slow
def test_depthwise_weights_file_is_loaded(depthwise: keras.Model, tmp_path) -> None:
    # A file saved from build_backbone's own (rewritten) model has the depthwise layout.
    path = tmp_path / "rewritten.weights.h5"
    depthwise.save_weights(path)
    model = build_backbone("ConvNeXtTiny", SIZE, str(path))
    x = _images()
    assert np.array_equal(model(x, training=False).numpy(), depthwise(x, training=False).numpy())
