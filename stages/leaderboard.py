"""Stage `leaderboard`: every evaluated model in one table, best test macro F1 first.

The majority-class baseline (always predict the largest training family) sits in the same
table: a model that does not beat it has learned nothing useful.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from stages.io import atomic_path, read_json

COLUMNS = ["model", "backbone", "head", "trained on", "epochs", "val macro F1", "macro F1",
           "weighted F1", "accuracy", "top-5"]


def majority_baseline(split_csv: Path) -> dict:
    """Test metrics of always predicting the training split's most frequent family.

    Args:
        split_csv: output of the split stage (label and split per image).

    Returns:
        macro_f1, weighted_f1, accuracy over the families present in the test split.
    """
    table = pd.read_csv(split_csv, dtype={"id": str})
    majority = table.loc[table["split"] == "train", "label"].value_counts().idxmax()
    y_true = table.loc[table["split"] == "test", "label"].to_numpy()
    y_pred = np.full(len(y_true), majority, dtype=object)
    tested = np.unique(y_true)
    return {"macro_f1": float(f1_score(y_true, y_pred, labels=tested, average="macro",
                                       zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, labels=tested, average="weighted",
                                          zero_division=0)),
            "accuracy": float(np.mean(y_true == majority))}


def leaderboard(metrics_dir: Path, train_dir: Path, split_csv: Path) -> pd.DataFrame:
    """One row per evaluated model plus the baseline, sorted by test macro F1.

    Args:
        metrics_dir: the evaluate stage's `<model>.json` files.
        train_dir: the train stage's `<model>.json` reports.
        split_csv: the split stage's table, for the baseline.

    Returns:
        The table with `COLUMNS`.
    """
    rows = []
    for path in sorted(metrics_dir.glob("*.json")):
        test = read_json(path)
        trained_file = train_dir / path.name
        trained = read_json(trained_file) if trained_file.is_file() else {}
        rows.append({"model": path.stem, "backbone": trained.get("architecture", "?"),
                     "head": trained.get("head", "?"), "trained on": trained.get("inputs", "?"),
                     "epochs": trained.get("epochs"), "val macro F1": trained.get("val_macro_f1"),
                     "macro F1": test["macro_f1"], "weighted F1": test["weighted_f1"],
                     "accuracy": test["accuracy"], "top-5": test["top5_accuracy"]})
    base = majority_baseline(split_csv)
    rows.append({"model": "majority class (baseline)", "backbone": "-", "head": "-",
                 "trained on": "-", "macro F1": base["macro_f1"],
                 "weighted F1": base["weighted_f1"], "accuracy": base["accuracy"]})
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"epochs": "Int64"})
    return table.sort_values("macro F1", ascending=False, kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table, numbers to four decimals, blanks as '-'."""
    def cell(value: object) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.astype(object).itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write reports/leaderboard.md."""
    from stages.cli_util import stage_main

    def work() -> str:
        table = leaderboard(Path("metrics/models"), Path("reports/train"),
                            Path("artifacts/split/split.csv"))
        with atomic_path(Path("reports/leaderboard.md")) as tmp:
            tmp.write_text("# Leaderboard (test split, macro F1 first)\n\n" + to_markdown(table))
        top = table.iloc[0]
        return f"{len(table) - 1} models; best {top['model']} (test macro F1 {top['macro F1']:.4f})"

    stage_main("leaderboard", work)


if __name__ == "__main__":
    main()
