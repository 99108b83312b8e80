"""Stage `evaluate@<model>`: test-split metrics, per-family report and confusion matrix.

Macro F1 comes first: with 29 to 300 images per family, accuracy mostly measures the large
families. Metrics are small JSON files tracked by git, so `dvc metrics diff` compares runs.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from stages.data import batches, load_split
from stages.io import atomic_path, read_json, write_json


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose family is among the k most probable."""
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1)))


def score(y_true: np.ndarray, probabilities: np.ndarray,
          labels: list[str]) -> tuple[dict, pd.DataFrame]:
    """Overall metrics and the per-family table.

    Args:
        y_true: class indices.
        probabilities: (N, classes) model outputs.
        labels: class names by index.

    Returns:
        The metrics dictionary and a per-family precision/recall/F1/support table.
    """
    y_pred = probabilities.argmax(axis=1)
    every = list(range(len(labels)))
    # A family with no test image (train-only, or left out by the per-image split) has no
    # recall to measure: averaging its zero would only measure the split.
    tested = np.unique(y_true)
    metrics = {
        "macro_f1": float(f1_score(y_true, y_pred, labels=tested, average="macro",
                                   zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=tested, average="weighted",
                                      zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "top5_accuracy": top_k_accuracy(y_true, probabilities, min(5, len(labels))),
        "test_images": len(y_true),
        "classes": len(labels),
        "classes_tested": len(tested),
    }
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=every, zero_division=0)
    table = pd.DataFrame({"family": labels, "precision": precision, "recall": recall,
                          "f1": f1, "support": support})
    return metrics, table


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
    metrics, table = score(y, probabilities, labels)
    write_json(out_metrics, metrics)
    with atomic_path(out_table) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    names = np.asarray(labels)
    with atomic_path(out_confusion) as tmp:
        pd.DataFrame({"actual": names[y], "predicted": names[probabilities.argmax(1)]}).to_csv(
            tmp, index=False)
    return metrics


def main() -> None:
    """Run the stage for one model, on the inputs its training report names."""
    from stages.cli_util import stage_main

    def work(model: str) -> str:
        trained = read_json(f"reports/train/{model}.json")
        metrics = evaluate(Path(f"models/{model}/model.keras"),
                           Path(f"artifacts/{trained['inputs']}/{trained['backbone']}"),
                           read_json("artifacts/split/labels.json"),
                           Path(f"metrics/models/{model}.json"),
                           Path(f"reports/families/{model}.csv"),
                           Path(f"plots/{model}/confusion.csv"))
        return (f"test macro F1 {metrics['macro_f1']:.4f}, accuracy {metrics['accuracy']:.4f}, "
                f"top-5 {metrics['top5_accuracy']:.4f} on {metrics['test_images']} images")

    stage_main("evaluate", work, per="model")


if __name__ == "__main__":
    main()
