"""Features: the frozen backbone runs once; its saved weights reproduce the features exactly."""

import numpy as np
import pytest

from rarespecies.config.params import BackboneParams
from rarespecies.modeling.features import BACKBONE_WEIGHTS, compute_features, extract, load_backbone

pytestmark = pytest.mark.slow


def test_features_are_cached_with_the_backbone_that_made_them(tmp_path):
    rng = np.random.default_rng(0)
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        np.save(arrays / f"{split}_x.npy", rng.integers(0, 255, (n, 32, 32, 3), np.uint8))
        np.save(arrays / f"{split}_y.npy", np.arange(n, dtype=np.int32) % 2)
    params = BackboneParams(architecture="ConvNeXtTiny", input_size=32, batch_size=2, seed=7)
    counts = compute_features(arrays, tmp_path / "features", params)
    assert counts == {"train": 5, "val": 2, "test": 3}
    features = np.load(tmp_path / "features/test_x.npy")
    assert features.shape == (3, 768) and np.isfinite(features).all()
    assert np.array_equal(np.load(tmp_path / "features/test_y.npy"), [0, 1, 0])

    test_images, out = np.load(arrays / "test_x.npy"), np.zeros_like(features)
    reloaded = load_backbone(params, tmp_path / "features" / BACKBONE_WEIGHTS)
    again = extract(reloaded, test_images, out.copy(), 3, progress=False)
    np.testing.assert_allclose(again, features, atol=1e-5)
    other_seed = load_backbone(params.model_copy(update={"seed": 8}))
    different = extract(other_seed, test_images, out.copy(), 3, progress=False)
    assert not np.allclose(different, features, atol=1e-3)


def test_unpooled_feature_maps_are_cached_for_a_flatten_head(tmp_path):
    rng = np.random.default_rng(1)
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    for split in ("train", "val", "test"):
        np.save(arrays / f"{split}_x.npy", rng.integers(0, 255, (2, 32, 32, 3), np.uint8))
        np.save(arrays / f"{split}_y.npy", np.zeros(2, np.int32))
    params = BackboneParams(architecture="ConvNeXtTiny", input_size=32, pooling="none")
    compute_features(arrays, tmp_path / "features", params)
    assert np.load(tmp_path / "features/val_x.npy", mmap_mode="r").shape == (2, 1, 1, 768)


def _random_arrays(folder, n=12, size=32, seed=3):
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for split in ("train", "val", "test"):
        np.save(folder / f"{split}_x.npy", rng.integers(0, 256, (n, size, size, 3), np.uint8))
        np.save(folder / f"{split}_y.npy", np.arange(n, dtype=np.int32) % 3)
    return folder


def _batchnorm_stats(model) -> list[np.ndarray]:
    import keras

    return [w.numpy() for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)]


DENSENET = BackboneParams(architecture="DenseNet121", input_size=32, batch_size=6, seed=5)


def test_random_batchnorm_backbone_gives_features_that_vary_across_images(tmp_path):
    arrays = _random_arrays(tmp_path / "arrays")
    spread = {}
    for count in (0, 8):
        out = tmp_path / f"features_{count}"
        compute_features(arrays, out, DENSENET.model_copy(update={"bn_calibration_images": count}))
        spread[count] = np.load(out / "test_x.npy").std(axis=0).mean()
    # A fresh BatchNorm (mean 0, var 1) in every block leaves nearly constant features (measured
    # 0.002 per-feature std across images); measured statistics give them their spread back.
    assert spread[8] > 0.1 and spread[8] > 20 * spread[0]

    # The statistics are saved with the weights: the reloaded backbone (as export builds it)
    # gives the same features, without measuring again.
    saved = tmp_path / "features_8"
    reloaded = load_backbone(DENSENET, saved / BACKBONE_WEIGHTS)
    test_images = np.load(arrays / "test_x.npy")
    again = extract(reloaded, test_images, np.zeros((12, 1024), np.float32), 6, progress=False)
    np.testing.assert_allclose(again, np.load(saved / "test_x.npy"), atol=1e-4)


def test_batchnorm_of_a_weights_file_stays_as_loaded(tmp_path):
    import keras

    from rarespecies.modeling.backbones import build_backbone, calibrate_batch_norm

    arrays = _random_arrays(tmp_path / "arrays")
    # A weights file whose BatchNorm statistics are neither a fresh layer's nor the sample's.
    keras.utils.set_random_seed(1)
    source = build_backbone("DenseNet121", 32, None)
    calibrate_batch_norm(source, np.random.default_rng(9).integers(0, 50, (8, 32, 32, 3)), 8, 0)
    file = tmp_path / "pretrained.weights.h5"
    source.save_weights(file)
    expected = _batchnorm_stats(source)

    params = DENSENET.model_copy(update={"weights": str(file)})
    compute_features(arrays, tmp_path / "features", params)
    saved = load_backbone(DENSENET, tmp_path / "features" / BACKBONE_WEIGHTS)
    for got, want in zip(_batchnorm_stats(saved), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # Not vacuous: measuring on these training images would have changed them.
    calibrate_batch_norm(saved, np.load(arrays / "train_x.npy"), 8, 0)
    assert not np.allclose(_batchnorm_stats(saved)[0], expected[0], atol=1e-3)
