"""Train/validation/test lists that stay stable as the data grows.

Each image's split comes from a salted hash of its identity (the EOL content id, else its
sha256), mapped to a number in [0, 1): below `test_fraction` is test, the next share is
validation, the rest is train. The number depends on nothing but the image and the seed, so
adding images never moves an existing one: yesterday's test image is today's test image.
Within a class the hashes are uniform, so the fractions hold per family up to sampling noise
(about ±sqrt(p(1-p)/n)); the per-split class counts are reported.

Families smaller than `min_class_size` follow `small_classes`: kept for training only, or
dropped. Either way they are named in `reports/split.json`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from rarespecies.config.paths import SPLITS
from rarespecies.core.files import atomic_path, write_json


def unit_hash(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by `key` and `seed`, uniform over keys."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def identity(manifest: pd.DataFrame) -> pd.Series:
    """What makes two rows the same image: the EOL content id, else the file's sha256."""
    content = manifest["eol_content_id"].astype("string").fillna("").str.strip()
    content = content.str.replace(r"\.0$", "", regex=True)  # an id read as a float
    return ("eol:" + content).where(content != "", "sha256:" + manifest["sha256"].astype(str))


def split_manifest(manifest: pd.DataFrame, *, test_fraction: float, val_fraction: float,
                   seed: int, min_class_size: int,
                   small_classes: str) -> tuple[pd.DataFrame, dict]:
    """Assign every image to a split, per image and stably.

    Args:
        manifest: ingest manifest (`id`, `label`, `eol_content_id`, `sha256`, `image_path`).
        test_fraction: share of each class held out for test.
        val_fraction: share of what test leaves that goes to validation.
        seed: hash salt; a new seed reshuffles every split.
        min_class_size: classes with fewer images follow `small_classes`.
        small_classes: `train_only` or `drop`.

    Returns:
        The split table (`id`, `label`, `split`, `image_path`, sorted by id) and the report.
    """
    manifest = manifest.reset_index(drop=True)
    keys = identity(manifest)
    u = keys.map(lambda key: unit_hash(key, seed))
    split = pd.Series("train", index=manifest.index, dtype=object)
    split[u < test_fraction + (1 - test_fraction) * val_fraction] = "val"
    split[u < test_fraction] = "test"

    sizes = manifest.groupby("label").size()
    small = sorted(sizes[sizes < min_class_size].index)
    is_small = manifest["label"].isin(small)
    # An image listed under a small class too goes to train everywhere, so it never leaks.
    split[is_small | keys.isin(keys[is_small])] = "train"
    table = manifest.assign(split=split)
    if small_classes == "drop":
        table = table[~is_small]
    table = table.sort_values("id")[["id", "label", "split", "image_path"]]

    _check_no_leakage(table.assign(key=keys, sha256=manifest["sha256"]))
    counts = pd.crosstab(table["label"], table["split"]).reindex(columns=SPLITS, fill_value=0)
    large = counts.drop(index=[c for c in small if c in counts.index])
    report = {
        "images": {s: int(counts[s].sum()) for s in SPLITS},
        "fractions": {s: round(float(counts[s].sum() / max(len(table), 1)), 4) for s in SPLITS},
        "classes": len(counts),
        "small_classes": {"policy": small_classes, "min_class_size": min_class_size,
                          "classes": {c: int(sizes[c]) for c in small},
                          "images": int(is_small.sum())},
        "classes_without": {s: sorted(large.index[large[s] == 0]) for s in SPLITS},
        "per_class": {label: {s: int(n) for s, n in row.items()}
                      for label, row in counts.iterrows()},
    }
    empty = [s for s in SPLITS if report["images"][s] == 0]
    if empty:
        raise ValueError(f"no image in the {' and '.join(empty)} split of {len(table)} images: "
                         "raise split.test_fraction / split.val_fraction, lower "
                         "split.min_class_size or add images")
    return table.reset_index(drop=True), report


def _check_no_leakage(table: pd.DataFrame) -> None:
    """The same image (content id or bytes) must never sit in two splits."""
    for column in ("key", "sha256"):
        spread = table.groupby(column)["split"].nunique()
        if (spread > 1).any():
            raise ValueError(f"{column} {spread[spread > 1].index[0]} is in more than one split")


def write_split(manifest_csv: Path, table_path: Path, labels_path: Path, report_path: Path,
                **settings) -> dict:
    """Split the ingest manifest and write the table, the labels and the report.

    Args:
        manifest_csv: the ingest manifest.
        table_path: the split table (`id`, `label`, `split`, `image_path`).
        labels_path: the classifier's output order: every label, sorted (JSON list).
        report_path: per-split and per-class counts, small classes, empty splits per class.
        settings: `split_manifest`'s keyword arguments.

    Returns:
        The report.
    """
    table, report = split_manifest(pd.read_csv(manifest_csv, dtype=str), **settings)
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    write_json(labels_path, sorted(table["label"].unique()))
    write_json(report_path, report)
    return report
