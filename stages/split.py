"""Stage `split`: stratified train/validation/test lists.

Each class is shuffled with the seed and cut by the fractions, so every class (even one of
three images) appears in all three splits and the proportions hold per family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stages.io import atomic_path, write_json

SPLITS = ("train", "val", "test")


def split_manifest(manifest: pd.DataFrame, *, val_fraction: float, test_fraction: float,
                   seed: int) -> pd.DataFrame:
    """Assign every image to one split, stratified by label.

    Args:
        manifest: rows with at least `id` and `label`.
        val_fraction: share of each class for validation (at least one image).
        test_fraction: share of each class for test (at least one image).
        seed: shuffling seed.

    Returns:
        `id`, `label`, `split`, `image_path`, sorted by id.

    Raises:
        ValueError: a class is too small to give every split an image.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for label, group in manifest.sort_values("id").groupby("label", sort=True):
        n = len(group)
        n_test = max(1, round(n * test_fraction))
        n_val = max(1, round(n * val_fraction))
        if n - n_test - n_val < 1:
            raise ValueError(f"class {label} has {n} images: too few for train, val and test "
                             "(raise validate.min_images_per_class or add images)")
        order = rng.permutation(n)
        split = np.array(["train"] * n, dtype=object)
        split[order[:n_test]] = "test"
        split[order[n_test:n_test + n_val]] = "val"
        parts.append(group.assign(split=split))
    result = pd.concat(parts).sort_values("id")
    return result[["id", "label", "split", "image_path"]].reset_index(drop=True)


def main() -> None:
    """Run the stage with the `split` keys of params.yaml."""
    from stages.cli_util import stage_main
    from stages.params import load_params

    def work() -> str:
        p = load_params().split
        manifest = pd.read_csv("artifacts/ingest/manifest.csv", dtype={"id": str})
        result = split_manifest(manifest, val_fraction=p.val_fraction,
                                test_fraction=p.test_fraction, seed=p.seed)
        with atomic_path(Path("artifacts/split/split.csv")) as tmp:
            result.to_csv(tmp, index=False)
        # Output order of the classifier, shared by every later stage and the ONNX metadata.
        write_json("artifacts/split/labels.json", sorted(result["label"].unique()))
        sizes = result["split"].value_counts()
        return ", ".join(f"{s} {sizes.get(s, 0)}" for s in SPLITS)

    stage_main("split", work)


if __name__ == "__main__":
    main()
