"""Scoring a trained model on the test split (evaluate@<model>): metrics, the per-family table
and the confusion pairs.

Metrics are small JSON files tracked by git, so `dvc metrics diff` compares runs; their
definitions are `rarespecies.runtime.metrics`, shared with training, quantization and
promotion.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from rarespecies.core.files import atomic_path, write_json
from rarespecies.modeling.datasets import batches, load_split
from rarespecies.runtime.metrics import PerClass, score


def family_table(labels: list[str], figures: PerClass) -> pd.DataFrame:
    """Per-family precision, recall, F1 and support, in label order."""
    return pd.DataFrame({"family": labels, "precision": figures.precision,
                         "recall": figures.recall, "f1": figures.f1,
                         "support": figures.support})


def evaluate(model_file: Path, data_dir: Path, labels: list[str], out_metrics: Path,
             out_table: Path, out_confusion: Path) -> dict:
    """Score a trained model on the test split and write metrics, table and confusion pairs.

    Args:
        model_file: the saved Keras model (a head, or an end-to-end model).
        data_dir: the inputs it was trained on (features or arrays).
        labels: class names by index.
        out_metrics: metrics JSON.
        out_table: per-family CSV.
        out_confusion: CSV of (actual, predicted) family names, one row per test image.

    Returns:
        The metrics.
    """
    import tensorflow as tf

    model = keras.models.load_model(model_file)
    # Traced once: calling a whole end-to-end model eagerly per batch is several times slower.
    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    x, y = load_split(data_dir, "test")
    probabilities = np.concatenate([forward(xb).numpy() for xb, _ in batches(x, y, 64)])
    metrics, figures = score(y, probabilities, labels)
    write_json(out_metrics, metrics)
    with atomic_path(out_table) as tmp:
        family_table(labels, figures).to_csv(tmp, index=False, float_format="%.4f")
    names = np.asarray(labels)
    with atomic_path(out_confusion) as tmp:
        pd.DataFrame({"actual": names[y], "predicted": names[probabilities.argmax(1)]}).to_csv(
            tmp, index=False)
    return metrics
