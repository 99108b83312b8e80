"""Stage `split`: per-image hashed train/validation/test lists, stable as the data grows."""

from __future__ import annotations

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.data.split import write_split


def work() -> str:
    """Split with the `split` keys of params.yaml."""
    p = load_params().split
    report = write_split(paths.MANIFEST, paths.SPLIT_TABLE, paths.LABELS, paths.SPLIT_REPORT,
                         test_fraction=p.test_fraction, val_fraction=p.val_fraction,
                         seed=p.seed, min_class_size=p.min_class_size,
                         small_classes=p.small_classes)
    small = report["small_classes"]
    note = (f"; {len(small['classes'])} classes under {p.min_class_size} images "
            f"{'kept in train only' if p.small_classes == 'train_only' else 'dropped'}"
            if small["classes"] else "")
    return ", ".join(f"{s} {n}" for s, n in report["images"].items()) + note


def main(debug: Debug = False) -> None:
    """Put every image in train, validation or test by a salted hash of its identity."""
    run_stage("split", work, debug)


if __name__ == "__main__":
    run_command(main)
