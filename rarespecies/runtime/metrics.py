"""The one definition of every classification metric, used by training (validation macro F1),
evaluation, the leaderboard's baseline, quantization's gate and promotion.

Macro F1 comes first: with 29 to 300 images per family, accuracy mostly measures the large
families. F1 is averaged over the *tested* families, those with at least one true image: a
family with no image to recall (train-only, or left out of a split by chance) has nothing to
measure, and counting it as zero would measure the split, not the model. A family predicted
but never true counts through the precision of the others, not as a row of its own.

NumPy only, computed exactly as scikit-learn's `f1_score(..., labels=tested,
zero_division=0)` (tests/runtime/test_metrics.py compares them bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PerClass:
    """Precision, recall, F1 and support (true images) per class, in the order of `classes`."""

    classes: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence) -> PerClass:
    """Per-class figures of predictions; a ratio with a zero denominator is 0.

    Args:
        y_true: true classes (indices or names).
        y_pred: predicted classes, same kind.
        classes: the classes to report, in order.

    Returns:
        The figures, one entry per class.
    """
    y_true, y_pred, classes = np.asarray(y_true), np.asarray(y_pred), np.asarray(classes)
    true = (y_true[:, None] == classes[None, :]) if len(classes) else np.zeros((len(y_true), 0))
    pred = (y_pred[:, None] == classes[None, :]) if len(classes) else np.zeros((len(y_pred), 0))
    tp = np.sum(true & pred, axis=0)
    true_sum, pred_sum = true.sum(axis=0), pred.sum(axis=0)
    return PerClass(classes, _divide(tp, pred_sum), _divide(tp, true_sum),
                    _divide(2.0 * tp.astype(np.float64),
                            1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64)),
                    true_sum)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        result = numerator / denominator
    return np.where(denominator == 0, 0.0, result).astype(np.float64)


def tested(y_true: np.ndarray) -> np.ndarray:
    """The classes that have at least one true image, sorted."""
    return np.unique(np.asarray(y_true))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the tested classes (0.0 when nothing is tested)."""
    figures = per_class(y_true, y_pred, tested(y_true))
    return float(np.nanmean(figures.f1)) if len(figures.f1) else 0.0


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 over the tested classes, weighted by their number of true images."""
    figures = per_class(y_true, y_pred, tested(y_true))
    return float(np.average(figures.f1, weights=figures.support)) if len(figures.f1) else 0.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct predictions."""
    return float(np.average(np.asarray(y_true) == np.asarray(y_pred)))


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose class is among the k most probable."""
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def score(y_true: np.ndarray, probabilities: np.ndarray,
          labels: list[str]) -> tuple[dict, PerClass]:
    """The test metrics of a model's probabilities, and its per-family figures.

    Args:
        y_true: class indices.
        probabilities: [N, classes] model outputs.
        labels: class names by index.

    Returns:
        `{"macro_f1", "weighted_f1", "accuracy", "top5_accuracy", "test_images", "classes",
        "classes_tested"}` and the figures of every class (tested or not) by index.
    """
    y_true = np.asarray(y_true)
    y_pred = probabilities.argmax(axis=1)
    metrics = {
        "macro_f1": macro_f1(y_true, y_pred),
        "weighted_f1": weighted_f1(y_true, y_pred),
        "accuracy": accuracy(y_true, y_pred),
        "top5_accuracy": top_k_accuracy(y_true, probabilities, min(5, len(labels))),
        "test_images": len(y_true),
        "classes": len(labels),
        "classes_tested": len(tested(y_true)),
    }
    return metrics, per_class(y_true, y_pred, np.arange(len(labels)))


# The keys of a model's metrics file: short, because each is a column of `dvc exp show`.
TEST_F1 = "f1"  # test macro F1, the headline
VAL_F1 = "val_f1"  # validation macro F1, what `export.model: best` ranks by


def headline(model: str, test: dict, val_macro_f1: float) -> dict:
    """The numbers people compare for one model, keyed by the model's name.

    A key that two metrics files share gets its file's path in the column name
    (`metrics/models/custom_cnn.json:f1`); under the model's name it stays `custom_cnn.f1`.

    Args:
        model: the model's name.
        test: the evaluation's figures (`score`'s).
        val_macro_f1: the training report's validation macro F1.

    Returns:
        `{model: {"f1", "wf1", "acc", "top5", "val_f1"}}`.
    """
    return {model: {TEST_F1: test["macro_f1"], "wf1": test["weighted_f1"],
                    "acc": test["accuracy"], "top5": test["top5_accuracy"],
                    VAL_F1: val_macro_f1}}
