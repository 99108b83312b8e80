"""Every evaluated model in one table, best test macro F1 first (the leaderboard stage).

The majority-class baseline (always predict the largest training family) sits in the same
table: a model that does not beat it has learned nothing useful.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rarespecies.config import paths
from rarespecies.core.files import atomic_path, read_json
from rarespecies.runtime.metrics import accuracy, macro_f1, weighted_f1

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
    return {"macro_f1": macro_f1(y_true, y_pred), "weighted_f1": weighted_f1(y_true, y_pred),
            "accuracy": accuracy(y_true, y_pred)}


def leaderboard(models: list[str], root: Path, split_csv: Path) -> pd.DataFrame:
    """One row per evaluated model plus the baseline, sorted by test macro F1.

    Args:
        models: the models to rank; each has its test metrics and training report under
            `root`.
        root: the project folder.
        split_csv: the split stage's table, for the baseline.

    Returns:
        The table with `COLUMNS`.
    """
    rows = []
    for model in models:
        test = read_json(root / paths.test_report(model))
        trained = read_json(root / paths.train_report(model))
        rows.append({"model": model, "backbone": trained["architecture"],
                     "head": trained["head"], "trained on": trained["inputs"],
                     "epochs": trained["epochs"], "val macro F1": trained["val_macro_f1"],
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


def write_leaderboard(table: pd.DataFrame, out: Path) -> None:
    """`out` as Markdown: a title and the table."""
    with atomic_path(out) as tmp:
        tmp.write_text("# Leaderboard (test split, macro F1 first)\n\n" + to_markdown(table))
