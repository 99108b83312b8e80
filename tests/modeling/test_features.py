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
