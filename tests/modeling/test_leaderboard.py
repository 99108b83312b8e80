"""Leaderboard: models ranked by test macro F1, beside the majority-class baseline."""

import pandas as pd
import pytest

from rarespecies.config import paths
from rarespecies.core.files import write_json
from rarespecies.modeling.leaderboard import leaderboard, majority_baseline, to_markdown


def _split_csv(path, test_labels):
    rows = [{"id": f"t{i}", "label": "a", "split": "train"} for i in range(5)]
    rows += [{"id": f"t{i}", "label": "b", "split": "train"} for i in range(5, 7)]
    rows += [{"id": f"s{i}", "label": label, "split": "test"}
             for i, label in enumerate(test_labels)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_majority_baseline_predicts_the_largest_training_family(tmp_path):
    base = majority_baseline(_split_csv(tmp_path / "split.csv", ["a", "a", "b", "b"]))
    assert base["accuracy"] == pytest.approx(0.5)
    # F1 of "a": precision 0.5, recall 1 -> 2/3; of "b": 0; macro over the tested families.
    assert base["macro_f1"] == pytest.approx(1 / 3)


def test_models_are_ranked_by_test_macro_f1(tmp_path):
    for name, f1 in (("weak", 0.2), ("strong", 0.9)):
        write_json(tmp_path / paths.test_report(name),
                   {"macro_f1": f1, "weighted_f1": f1, "accuracy": f1, "top5_accuracy": 1.0})
        write_json(tmp_path / paths.train_report(name),
                   {"architecture": "DenseNet121", "head": "gap", "inputs": "arrays",
                    "epochs": 7, "val_macro_f1": f1})
    write_json(tmp_path / paths.test_report("stale"), {"macro_f1": 1.0})  # not listed: ignored
    table = leaderboard(["weak", "strong"], tmp_path,
                        _split_csv(tmp_path / "split.csv", ["a", "b"]))
    # The baseline scores 1/3 here: "weak" has learned less than always answering "a".
    assert list(table["model"]) == ["strong", "majority class (baseline)", "weak"]
    markdown = to_markdown(table).splitlines()
    assert markdown[2].startswith("| strong | DenseNet121 | gap | arrays | 7 | 0.9000 |")
    assert markdown[3].startswith("| majority class (baseline) | - | - | - | - | - | 0.3333 |")
