"""Scoring a trained model on the test split (evaluate@<model>): metrics, the per-family table
and the confusion pairs.

Every test figure goes to a report (`reports/test/<model>.json`, what code reads); the
numbers people compare go to a small metrics file tracked by git (`headline`), so
`dvc exp show` and `dvc metrics diff` compare runs in narrow columns. The definitions are
`rarespecies.runtime.metrics`, shared with training, quantization and promotion.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from rarespecies.core.files import atomic_path, write_json, write_metrics
from rarespecies.modeling.datasets import batches, load_split
from rarespecies.runtime.metrics import PerClass, headline, score


def family_table(labels: list[str], figures: PerClass) -> pd.DataFrame:
    """Per-family precision, recall, F1 and support, in label order."""
    return pd.DataFrame({"family": labels, "precision": figures.precision,
                         "recall": figures.recall, "f1": figures.f1,
                         "support": figures.support})


def write_headline(out_metrics: Path, model: str, test: dict, trained: dict) -> dict:
    """Write `headline` to the model's metrics file (numbers only) and return it.

    Args:
        out_metrics: the metrics file (`metrics/models/<model>.json`).
        model: the model's name.
        test: the evaluation's figures.
        trained: the training report (its `val_macro_f1`).

    Returns:
        What was written.
    """
    figures = headline(model, test, trained["val_macro_f1"])
    write_metrics(out_metrics, figures)
    return figures


def evaluate(model_file: Path, data_dir: Path, labels: list[str], out_report: Path,
             out_table: Path, out_confusion: Path) -> dict:
    """Score a trained model on the test split and write its figures, table and confusion pairs.

    Args:
        model_file: the saved Keras model (a head, or an end-to-end model).
        data_dir: the inputs it was trained on (features or arrays).
        labels: class names by index.
        out_report: JSON of every test figure (`score`'s).
        out_table: per-family CSV.
        out_confusion: CSV of (actual, predicted) family names, one row per test image.

    Returns:
        The figures.
    """
    import tensorflow as tf

    model = keras.models.load_model(model_file)
    # Traced once: calling a whole end-to-end model eagerly per batch is several times slower.
    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    x, y = load_split(data_dir, "test")
    probabilities = np.concatenate([forward(xb).numpy() for xb, _ in batches(x, y, 64)])
    metrics, figures = score(y, probabilities, labels)
    write_json(out_report, metrics)
    with atomic_path(out_table) as tmp:
        family_table(labels, figures).to_csv(tmp, index=False, float_format="%.4f")
    names = np.asarray(labels)
    with atomic_path(out_confusion) as tmp:
        pd.DataFrame({"actual": names[y], "predicted": names[probabilities.argmax(1)]}).to_csv(
            tmp, index=False)
    return metrics
