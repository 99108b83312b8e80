"""The one definition of every metric: macro F1 over the tested families first, exactly as
scikit-learn computes it, and what the pipeline's callers rely on."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from rarespecies.runtime.metrics import (
    accuracy,
    headline,
    macro_f1,
    per_class,
    score,
    top_k_accuracy,
    weighted_f1,
)


def test_top_k_accuracy_counts_the_true_class_among_the_k_best():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    y = np.array([1, 2, 2])
    assert top_k_accuracy(y, probabilities, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(y, probabilities, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(y, probabilities, 3) == 1.0


def test_score_weighs_every_tested_family_equally_in_macro_f1():
    labels = ["a_big", "b_small", "c_never"]
    y = np.array([0] * 8 + [1] * 2)
    predicted = np.array([0] * 8 + [0, 1])
    metrics, figures = score(y, np.eye(3)[predicted], labels)
    # c_never has no test image: it has no recall to measure and stays out of the mean.
    assert metrics["macro_f1"] == pytest.approx((16 / 17 + 2 / 3) / 2)
    assert metrics["classes_tested"] == 2 and metrics["accuracy"] == pytest.approx(0.9)
    assert metrics["macro_f1"] < metrics["weighted_f1"] < metrics["accuracy"] + 1e-9
    assert figures.support.tolist() == [8, 2, 0] and figures.recall[1] == pytest.approx(0.5)


def test_a_family_predicted_but_never_true_is_not_averaged():
    """The old per-epoch figure averaged over true and predicted labels: predicting an absent
    family then counted a zero of its own. Over the tested families it does not."""
    y, predicted = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    assert macro_f1(y, predicted) == pytest.approx((2 / 3 + 1.0) / 2)
    assert f1_score(y, predicted, average="macro", zero_division=0) < macro_f1(y, predicted)


@pytest.mark.parametrize("seed", range(20))
def test_bit_for_bit_what_scikit_learn_computes(seed):
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 9))
    y = rng.integers(0, classes, int(rng.integers(1, 60)))
    predicted = np.where(rng.random(len(y)) < 0.6, y, rng.integers(0, classes + 2, len(y)))
    tested = np.unique(y)
    assert macro_f1(y, predicted) == f1_score(y, predicted, labels=tested, average="macro",
                                              zero_division=0)
    assert weighted_f1(y, predicted) == f1_score(y, predicted, labels=tested,
                                                 average="weighted", zero_division=0)
    assert accuracy(y, predicted) == accuracy_score(y, predicted)
    expected = precision_recall_fscore_support(y, predicted, labels=list(range(classes)),
                                               zero_division=0)
    figures = per_class(y, predicted, np.arange(classes))
    for ours, theirs in zip((figures.precision, figures.recall, figures.f1, figures.support),
                            expected, strict=True):
        assert np.array_equal(ours, theirs)


def test_names_work_as_well_as_indices():
    y = np.array(["b", "a", "a", "c"], dtype=object)
    predicted = np.array(["a", "a", "a", "a"], dtype=object)
    assert macro_f1(y, predicted) == f1_score(y, predicted, labels=["a", "b", "c"],
                                              average="macro", zero_division=0)


def test_a_models_headline_is_keyed_by_the_model_with_short_names():
    test = {"macro_f1": 0.5, "weighted_f1": 0.6, "accuracy": 0.7, "top5_accuracy": 0.9,
            "test_images": 55, "classes": 13, "classes_tested": 11}
    assert headline("convnext_full", test, 0.4) == {"convnext_full": {
        "f1": 0.5, "wf1": 0.6, "acc": 0.7, "top5": 0.9, "val_f1": 0.4}}
