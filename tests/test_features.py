"""Features: the frozen backbone runs once; its saved weights reproduce the features exactly."""

import numpy as np
import pytest

from stages.features import BACKBONE_WEIGHTS, compute_features, extract, load_backbone
from stages.params import BackboneParams

pytestmark = pytest.mark.slow


def test_features_are_cached_with_the_backbone_that_made_them(tmp_path):
    rng = np.random.default_rng(0)
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        np.save(arrays / f"{split}_x.npy", rng.integers(0, 255, (n, 32, 32, 3), np.uint8))
        np.save(arrays / f"{split}_y.npy", np.arange(n, dtype=np.int32) % 2)
    params = BackboneParams(name="ConvNeXtTiny", weights=None, batch_size=2, seed=7)
    counts = compute_features(arrays, tmp_path / "features", params, 32)
    assert counts == {"train": 5, "val": 2, "test": 3}
    features = np.load(tmp_path / "features/test_x.npy")
    assert features.shape == (3, 768) and np.isfinite(features).all()
    assert np.array_equal(np.load(tmp_path / "features/test_y.npy"), [0, 1, 0])

    reloaded = load_backbone(params, 32, tmp_path / "features" / BACKBONE_WEIGHTS)
    again = extract(reloaded, np.load(arrays / "test_x.npy"), 3, progress=False)
    np.testing.assert_allclose(again, features, atol=1e-5)
    other_seed = load_backbone(BackboneParams(name="ConvNeXtTiny", seed=8), 32)
    different = extract(other_seed, np.load(arrays / "test_x.npy"), 3, progress=False)
    assert not np.allclose(different, features, atol=1e-3)
