"""Split: stratified, every class in every split, deterministic for a seed."""

import pandas as pd
import pytest

from stages.split import split_manifest


def manifest(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"id": f"{label}-{i:03d}", "label": label, "image_path": f"x/{label}{i}.jpg"}
            for label, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_every_class_in_every_split_with_fractions_kept():
    result = split_manifest(manifest({"a_x": 60, "b_y": 20, "c_z": 3}), val_fraction=0.15,
                            test_fraction=0.15, seed=42)
    table = pd.crosstab(result["label"], result["split"])
    assert (table > 0).all().all()
    assert table.loc["a_x", "test"] == 9 and table.loc["a_x", "val"] == 9
    assert len(result) == 83 and result["id"].is_unique


def test_same_seed_same_split_other_seed_differs():
    data = manifest({"a_x": 40, "b_y": 30})
    first = split_manifest(data, val_fraction=0.15, test_fraction=0.15, seed=1)
    again = split_manifest(data.sample(frac=1, random_state=3), val_fraction=0.15,
                           test_fraction=0.15, seed=1)
    other = split_manifest(data, val_fraction=0.15, test_fraction=0.15, seed=2)
    assert first.equals(again)
    assert not first["split"].equals(other["split"])


def test_too_small_class_is_named():
    with pytest.raises(ValueError, match="class b_y has 2 images"):
        split_manifest(manifest({"a_x": 10, "b_y": 2}), val_fraction=0.15, test_fraction=0.15,
                       seed=0)
