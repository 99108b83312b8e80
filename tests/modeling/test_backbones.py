"""Backbone construction: the depthwise rewrite keeps outputs, and every weights source works."""

from __future__ import annotations

import hashlib
import inspect
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.applications import convnext as keras_convnext
from keras.src.applications import densenet as keras_densenet
from keras.src.applications import inception_resnet_v2 as keras_inception
from keras.src.backend import config as keras_config
from keras.src.legacy.saving import legacy_h5_format

from rarespecies.modeling import backbones
from rarespecies.modeling.backbones import (
    PREPROCESSING_LAYER,
    WeightsUnavailableError,
    build_backbone,
    calibrate_batch_norm,
    to_depthwise,
    unfreeze_last,
    weights_file,
)

SIZE = 64
TINY_BLOCKS = 3 + 3 + 9 + 3  # ConvNeXtTiny depths: one depthwise conv per block
# The smallest input each architecture accepts keeps the models below fast.
SMALL = {"ConvNeXtTiny": 32, "DenseNet121": 32, "InceptionResNetV2": 75}
DENSENET_CONVS = 120  # DenseNet121 without its top: 120 convolutions and 121 BatchNormalizations
KERAS_MODULES = {"DenseNet121": keras_densenet, "InceptionResNetV2": keras_inception}


def _images(n: int = 3, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = []
    for layer in model.layers:
        layers += _flat_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return layers


def _weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in _flat_layers(model) if layer.weights]


def _refused_url() -> str:
    """An http:// prefix on a port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/"


@pytest.fixture(scope="module")
def small() -> Callable[..., keras.Model]:
    """`small(name, pooling)`: build_backbone at the smallest size, random init, built once."""
    cache: dict[tuple[str, str], keras.Model] = {}

    def get(name: str, pooling: str = "avg") -> keras.Model:
        if (name, pooling) not in cache:
            keras.utils.set_random_seed(11)
            cache[name, pooling] = build_backbone(name, SMALL[name], None, pooling)
        return cache[name, pooling]

    return get


@pytest.fixture(scope="module")
def keras_densenet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, str]:
    """Keras' own DenseNet121 (no preprocessing layer), random init, and its weights saved in
    the legacy HDF5 layout of Keras' ImageNet `*_notop.h5` files."""
    keras.utils.set_random_seed(5)
    model = keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path_factory.mktemp("keras") / weights_file("DenseNet121").name
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return model, str(path)


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
    with pytest.raises(ValueError, match=r"ConvNeXtTiny, ConvNeXtSmall.*DenseNet121, Incep"):
        build_backbone("ResNet50", SIZE, None)
    with pytest.raises(ValueError, match="null, 'imagenet' or a weights file path"):
        build_backbone("ConvNeXtTiny", SIZE, "imagenett")


def test_weights_file_is_keras_cache_path(monkeypatch, tmp_path) -> None:
    # Keras reads $KERAS_HOME once at import, so point its resolved value at tmp_path.
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    assert weights_file("ConvNeXtBase") == tmp_path / "models" / "convnext_base_notop.h5"
    assert weights_file("ConvNeXtLarge").name == "convnext_large_notop.h5"
    assert weights_file("DenseNet121") == (
        tmp_path / "models" / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    assert weights_file("InceptionResNetV2").name == (
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


@pytest.mark.parametrize("name", ["ConvNeXtSmall", "DenseNet121", "InceptionResNetV2"])
def test_imagenet_source_is_the_one_keras_uses(name: str) -> None:
    file, url, file_hash = backbones._imagenet_source(name)
    assert file == weights_file(name).name
    if name.startswith("ConvNeXt"):
        assert url == keras_convnext.BASE_WEIGHTS_PATH + file
        assert file_hash == keras_convnext.WEIGHTS_HASHES["convnext_small"][1]
        return
    # Keras writes these URLs and hashes into its builders: the same text must be there.
    module = KERAS_MODULES[name]
    assert url.startswith("https://storage.googleapis.com/tensorflow/keras-applications/")
    assert url.endswith("/" + file)
    assert f'file_hash="{file_hash}"' in inspect.getsource(module)


@pytest.mark.parametrize(
    ("name", "module", "attribute", "suffix"),
    [
        ("ConvNeXtTiny", keras_convnext, "BASE_WEIGHTS_PATH", ""),
        ("DenseNet121", keras_densenet, "DENSENET121_WEIGHT_PATH_NO_TOP", "densenet121.h5"),
        ("InceptionResNetV2", keras_inception, "BASE_WEIGHT_URL", ""),
    ],
    ids=["ConvNeXtTiny", "DenseNet121", "InceptionResNetV2"],
)
def test_missing_imagenet_weights_fail_fast_and_clearly(
    monkeypatch, tmp_path, name: str, module: ModuleType, attribute: str, suffix: str
) -> None:
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    # Point the URL Keras would download from at a port nothing listens on.
    refused = _refused_url()
    monkeypatch.setattr(module, attribute, refused + suffix)

    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        build_backbone(name, SMALL.get(name, SIZE), "imagenet")
    message = str(caught.value)
    assert time.monotonic() - start < 10
    assert "\n" not in message
    cached = weights_file(name)
    assert str(cached) in message and cached.parent == tmp_path / "models"
    assert refused in message  # the download really went to Keras' (patched) URL
    assert "weights: null" in message
    assert not cached.exists()


@pytest.mark.parametrize("name", ["ConvNeXtTiny", "DenseNet121"])
def test_missing_weights_file_is_named(tmp_path, name: str) -> None:
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(WeightsUnavailableError, match=str(missing)):
        build_backbone(name, SMALL[name], str(missing))


@pytest.mark.parametrize("pooling", ["max", None, "avg "])
def test_unknown_pooling_is_rejected(pooling) -> None:
    with pytest.raises(ValueError, match="pooling must be one of 'avg', 'none'"):
        build_backbone("DenseNet121", 32, None, pooling=pooling)


def test_too_small_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="InceptionResNetV2 needs input_size >= 75; got 74"):
        build_backbone("InceptionResNetV2", 74, None)


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


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DenseNet121", "InceptionResNetV2"])
def test_preprocessing_layer_matches_keras_preprocess_input(small, name: str) -> None:
    model = small(name, "none" if name == "InceptionResNetV2" else "avg")
    layer = model.get_layer(PREPROCESSING_LAYER)
    # It is the only layer reading the pixels, so the whole network sees normalized input.
    assert [la.name for la in model.layers if la.input is model.input] == [PREPROCESSING_LAYER]
    x = _images(4, SMALL[name])
    expected = KERAS_MODULES[name].preprocess_input(x.copy())  # it works in place on arrays
    actual = keras.Model(model.input, layer.output)(x).numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "pooling", "shape"),
    [
        ("ConvNeXtTiny", "none", (1, 1, 768)),
        ("DenseNet121", "avg", (1024,)),
        ("DenseNet121", "none", (1, 1, 1024)),
        ("InceptionResNetV2", "none", (1, 1, 1536)),
    ],
)
def test_pooling_sets_output_shape(small, name: str, pooling: str, shape: tuple) -> None:
    model = small(name, pooling)
    assert model.trainable is False and model.trainable_weights == []
    assert model.output_shape == (None, *shape)
    with warnings.catch_warnings():
        # e.g. Keras' "structure of `inputs` doesn't match" when the model takes a list.
        warnings.simplefilter("error", UserWarning)
        assert model(_images(2, SMALL[name]), training=False).shape == (2, *shape)


@pytest.mark.slow
def test_keras_notop_file_loads_behind_the_preprocessing(keras_densenet_file) -> None:
    keras_model, path = keras_densenet_file
    keras.utils.set_random_seed(123)  # loaded weights, not this seed, must decide the output
    model = build_backbone("DenseNet121", 32, path)
    x = _images(3, 32)
    expected = keras_model(keras_densenet.preprocess_input(x.copy()), training=False).numpy()
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, rtol=0, atol=1e-5)
    # Not vacuous: without the normalization, the same weights give another output.
    assert np.max(np.abs(keras_model(x, training=False).numpy() - expected)) > 1e-3


@pytest.mark.slow
def test_imagenet_weights_come_from_keras_cache(monkeypatch, tmp_path, keras_densenet_file):
    keras_model, path = keras_densenet_file
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    cached = weights_file("DenseNet121")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(Path(path).read_bytes())
    # Keras checks the cached file's hash: accept this stand-in, and forbid any download.
    md5 = hashlib.md5(cached.read_bytes()).hexdigest()
    monkeypatch.setitem(backbones._NOTOP, "DenseNet121", (cached.name, md5))
    monkeypatch.setattr(keras_densenet, "DENSENET121_WEIGHT_PATH_NO_TOP", _refused_url())
    model = build_backbone("DenseNet121", 32, "imagenet")
    x = _images(3, 32)
    expected = keras_model(keras_densenet.preprocess_input(x.copy()), training=False).numpy()
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_own_weights_file_is_loaded(small, tmp_path) -> None:
    path = tmp_path / "densenet.weights.h5"
    small("DenseNet121").save_weights(path)
    keras.utils.set_random_seed(123)
    model = build_backbone("DenseNet121", 32, str(path))
    x = _images(3, 32)
    expected = small("DenseNet121")(x, training=False).numpy()
    assert np.array_equal(model(x, training=False).numpy(), expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "pooling"), [("DenseNet121", "avg"), ("InceptionResNetV2", "none")]
)
def test_saved_model_reloads_without_custom_objects(small, tmp_path, name, pooling) -> None:
    model = small(name, pooling)
    model.save(tmp_path / "backbone.keras")
    loaded = keras.models.load_model(tmp_path / "backbone.keras")
    scale = model.get_layer(PREPROCESSING_LAYER).scale
    np.testing.assert_array_equal(loaded.get_layer(PREPROCESSING_LAYER).scale, scale)
    x = _images(2, SMALL[name])
    expected = model(x, training=False).numpy()
    np.testing.assert_allclose(loaded(x, training=False).numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_densenet_converts_to_onnx_with_its_preprocessing(small) -> None:
    import onnxruntime as ort
    import tf2onnx

    model = small("DenseNet121")
    signature = (tf.TensorSpec([None, 32, 32, 3], tf.float32, name="pixels"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _images(3, 32)
    actual = session.run(None, {"pixels": x})[0]
    np.testing.assert_allclose(actual, model(x, training=False).numpy(), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_unfreeze_last_keeps_batchnorm_frozen(small) -> None:
    model = small("DenseNet121")
    layers = _weight_layers(model)
    batchnorms = [la for la in layers if isinstance(la, keras.layers.BatchNormalization)]
    assert len(layers) - len(batchnorms) == DENSENET_CONVS
    try:
        # DenseNet ends with its final BatchNormalization: the last 10 are 5 BN + 5 convs.
        assert unfreeze_last(model, 10) == 5
        trainable = [la.name for la in layers if la.trainable]
        assert trainable == [la.name for la in layers[-10:] if la not in batchnorms]
        assert len(model.trainable_weights) == 5  # DenseNet's convolutions have no bias

        assert unfreeze_last(model, 10_000) == DENSENET_CONVS
        assert len(model.trainable_weights) == DENSENET_CONVS
        assert not any(la.trainable for la in batchnorms)

        assert unfreeze_last(model, 0) == 0
        assert model.trainable_weights == []
        with pytest.raises(ValueError, match="layers must be >= 0"):
            unfreeze_last(model, -1)
    finally:
        model.trainable = False


@pytest.mark.slow
def test_unfreeze_last_counts_nested_layers(small) -> None:
    model = small("ConvNeXtTiny", "none")
    layers = _weight_layers(model)
    stem = model.get_layer("convnext_tiny_stem")  # a nested Sequential: conv + LayerNorm
    assert isinstance(stem, keras.Model) and layers[0] is stem.layers[0]
    try:
        assert unfreeze_last(model, 1) == 1
        assert [la.name for la in layers if la.trainable] == [layers[-1].name]
        assert len(model.trainable_weights) == len(layers[-1].weights)

        assert unfreeze_last(model, len(layers)) == len(layers)  # no BatchNormalization here
        assert layers[0].trainable  # reached inside the nested stem
        assert len(model.trainable_weights) == len(model.weights)
    finally:
        model.trainable = False


def _two_batchnorms() -> keras.Model:
    """conv -> BatchNorm -> relu -> conv -> BatchNorm: the second one's input depends on the
    first one's statistics."""
    keras.utils.set_random_seed(3)
    pixels = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv1")(pixels)
    x = keras.layers.BatchNormalization(name="bn1", beta_initializer="random_normal",
                                        gamma_initializer="random_uniform")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    model = keras.Model(pixels, keras.layers.GlobalAveragePooling2D()(x))
    model.trainable = False
    return model


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)


@pytest.mark.slow
def test_calibration_stores_each_batchnorm_input_moments() -> None:
    model, images = _two_batchnorms(), _pixels(12)
    assert calibrate_batch_norm(model, images, 100, seed=0) == 2  # more than N: all 12 images
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        # Recomputed independently: the layer's input in inference mode, after calibration.
        inputs = keras.Model(model.input, layer.input)(images.astype("float32"),
                                                       training=False).numpy()
        mean, variance = (w.numpy() for w in (layer.moving_mean, layer.moving_variance))
        np.testing.assert_allclose(mean, inputs.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(variance, inputs.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-3)
        assert not np.allclose(variance, 1.0)  # a fresh layer's statistics are gone
        assert layer.momentum == 0.99 and not layer.trainable  # restored
    assert model.trainable_weights == []
    # Inference now normalizes the last layer's input (gamma 1, beta 0): per channel, mean 0
    # and variance var / (var + epsilon).
    last = model.get_layer("bn2")
    out = keras.Model(model.input, last.output)(images.astype("float32")).numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-3)
    variance = last.moving_variance.numpy()
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), variance / (variance + last.epsilon),
                               rtol=1e-3)


@pytest.mark.slow
def test_calibration_picks_a_seeded_subset() -> None:
    images = _pixels(20)

    def stats(count: int, seed: int) -> np.ndarray:
        model = _two_batchnorms()
        calibrate_batch_norm(model, images, count, seed)
        return model.get_layer("bn1").moving_mean.numpy()

    assert np.array_equal(stats(5, seed=1), stats(5, seed=1))
    assert not np.allclose(stats(5, seed=1), stats(5, seed=2))
    assert not np.allclose(stats(5, seed=1), stats(20, seed=1))  # a subset, not all 20


@pytest.mark.slow
def test_calibration_leaves_models_without_batchnorm_alone(small) -> None:
    model = small("ConvNeXtTiny")  # LayerNormalization only
    before = [w.copy() for w in model.get_weights()]
    # No forward pass either: it would fail on an empty image array.
    assert calibrate_batch_norm(model, np.zeros((0, 32, 32, 3), np.uint8), 64, 0) == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.slow
def test_calibration_count_zero_changes_nothing_and_negative_is_refused() -> None:
    model = _two_batchnorms()
    assert calibrate_batch_norm(model, _pixels(4), 0, 0) == 0
    assert np.array_equal(model.get_layer("bn2").moving_variance.numpy(), np.ones(5))
    with pytest.raises(ValueError, match="count must be >= 0"):
        calibrate_batch_norm(model, _pixels(4), -1, 0)
