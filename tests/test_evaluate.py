"""Metrics: macro F1 first, top-5, per-family table."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from stages.evaluate import score, top_k_accuracy


def test_top_k_accuracy_counts_the_true_class_among_the_k_best():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    y = np.array([1, 2, 2])
    assert top_k_accuracy(y, probabilities, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(y, probabilities, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(y, probabilities, 3) == 1.0


def test_score_weighs_every_family_equally_in_macro_f1():
    labels = ["a_big", "b_small", "c_never"]
    y = np.array([0] * 8 + [1] * 2)
    predicted = np.array([0] * 8 + [0, 1])
    probabilities = np.eye(3)[predicted]
    metrics, table = score(y, probabilities, labels)
    # c_never has no test image: it has no recall to measure and stays out of the mean.
    expected = f1_score(y, predicted, labels=[0, 1], average="macro", zero_division=0)
    assert metrics["macro_f1"] == pytest.approx(expected) and metrics["classes_tested"] == 2
    assert metrics["accuracy"] == pytest.approx(0.9)
    assert metrics["macro_f1"] < metrics["weighted_f1"] < metrics["accuracy"] + 1e-9
    assert list(table["family"]) == labels and table["support"].tolist() == [8, 2, 0]
    assert table.loc[1, "recall"] == pytest.approx(0.5)
