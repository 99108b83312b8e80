"""Split: per-image stable assignment, fractions per family, no leakage, small-class policy.

The real dataset's metadata (11,983 rows, 202 families) gives the scale and the class
distribution; no image is needed to split.
"""

import numpy as np
import pandas as pd
import pytest

from rarespecies.data.split import split_manifest

from conftest import SHARED_DATA, require_shared

OPTIONS = {"test_fraction": 0.15, "val_fraction": 0.1, "seed": 42, "min_class_size": 10,
           "small_classes": "train_only"}


def manifest(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"id": f"{label}-{i:03d}", "label": label, "eol_content_id": f"{label}{i}",
             "sha256": f"{label}{i}", "image_path": f"x/{label}{i}.jpg"}
            for label, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    """The full dataset's metadata as a manifest (sha256 stands in for the bytes)."""
    meta = pd.read_csv(require_shared(SHARED_DATA / "rare-species-metadata.csv"), dtype=str)
    return pd.DataFrame({"id": meta["rare_species_id"],
                         "label": meta["phylum"] + "_" + meta["family"],
                         "eol_content_id": meta["eol_content_id"],
                         "sha256": "sha-" + meta["rare_species_id"],
                         "image_path": meta["file_path"]})


def test_fractions_hold_per_family_at_real_scale(real):
    table, report = split_manifest(real, **OPTIONS)
    assert len(table) == len(real) == 11_983 and report["classes"] == 202
    expected = {"test": 0.15, "val": 0.85 * 0.1, "train": 0.85 * 0.9}
    for split, p in expected.items():
        assert report["fractions"][split] == pytest.approx(p, abs=0.01)
    counts = pd.crosstab(table["label"], table["split"])
    n = counts.sum(axis=1)
    for split, p in expected.items():
        # Per-image hashing is binomial per family: allow 4 standard deviations.
        tolerance = 4 * np.sqrt(p * (1 - p) / n)
        assert ((counts[split] / n - p).abs() <= tolerance).all(), split
    for split in expected:  # per-image hashing can leave a small family out of a split
        assert report["classes_without"][split] == sorted(counts.index[counts[split] == 0])
    assert len(report["classes_without"]["test"]) <= 2


def test_adding_ten_percent_more_images_moves_none(real):
    before = real.sample(frac=1 / 1.1, random_state=7)
    old, _ = split_manifest(before, **OPTIONS)
    new, _ = split_manifest(real, **OPTIONS)
    merged = old.merge(new, on="id", suffixes=("_old", "_new"))
    assert len(merged) == len(old) and (merged["split_old"] == merged["split_new"]).all()
    assert len(new) - len(old) == len(real) - len(before) > 1000


def test_the_order_of_rows_does_not_matter_and_the_seed_does(real):
    first, _ = split_manifest(real, **OPTIONS)
    shuffled, _ = split_manifest(real.sample(frac=1, random_state=3), **OPTIONS)
    other, _ = split_manifest(real, **OPTIONS | {"seed": 1})
    assert first.equals(shuffled)
    assert (first["split"] != other["split"]).mean() > 0.2


def test_no_content_id_or_bytes_in_two_splits(real):
    doubled = pd.concat([real, real.assign(id=real["id"] + "-copy")])
    table, _ = split_manifest(doubled, **OPTIONS)
    table["content"] = table["id"].str.removesuffix("-copy")
    assert (table.groupby("content")["split"].nunique() == 1).all()


def test_image_without_content_id_is_split_by_its_bytes():
    data = manifest({"a_x": 40})
    data.loc[0, "eol_content_id"] = None
    table, _ = split_manifest(data, **OPTIONS)
    again, _ = split_manifest(data.assign(eol_content_id=None), **OPTIONS)
    assert table.loc[0, "split"] == again.loc[0, "split"]


@pytest.mark.parametrize("policy", ["train_only", "drop"])
def test_small_classes_follow_the_policy_and_are_reported(policy):
    table, report = split_manifest(manifest({"a_x": 60, "b_y": 3, "c_z": 1}),
                                   **OPTIONS | {"small_classes": policy})
    small = table[table["label"].isin(["b_y", "c_z"])]
    if policy == "drop":
        assert small.empty and len(table) == 60
    else:
        assert len(small) == 4 and (small["split"] == "train").all()
    assert report["small_classes"] == {"policy": policy, "min_class_size": 10,
                                       "classes": {"b_y": 3, "c_z": 1}, "images": 4}
    assert set(table[table["label"] == "a_x"]["split"]) == {"train", "val", "test"}


def test_an_empty_split_is_a_clear_error():
    with pytest.raises(ValueError, match="no image in the test split of 4 images"):
        split_manifest(manifest({"a_x": 4}), **OPTIONS | {"min_class_size": 1,
                                                          "test_fraction": 0.01})


def test_a_class_with_no_test_image_by_chance_is_reported():
    # 10 images and a 15% test share: some seed leaves the class without a test image.
    data = manifest({"a_x": 10, "b_y": 200})
    for seed in range(50):
        table, report = split_manifest(data, **OPTIONS | {"seed": seed})
        if "test" not in set(table[table["label"] == "a_x"]["split"]):
            assert report["classes_without"]["test"] == ["a_x"]
            return
    pytest.fail("no seed left the class without a test image")
