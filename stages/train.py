"""Stage `train@<model>`: fit the model's trainable part, log per-epoch curves with dvclive.

A frozen-backbone model trains only its head, on the cached features; the custom CNN trains
end to end on the image arrays. Early stopping on validation loss restores the best weights.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import f1_score

from stages.data import batches, inputs_dir, load_split
from stages.io import atomic_path, read_json
from stages.models import build_cnn, build_head, build_optimizer
from stages.params import ModelParams


class MacroF1(keras.callbacks.Callback):
    """Adds `val_macro_f1` to the epoch logs (before dvclive reads them)."""

    def __init__(self, val_data, y_true: np.ndarray) -> None:
        super().__init__()
        self.val_data, self.y_true = val_data, y_true

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        predicted = np.argmax(self.model.predict(self.val_data, verbose=0), axis=1)
        if logs is not None:
            logs["val_macro_f1"] = float(f1_score(self.y_true, predicted, average="macro",
                                                  zero_division=0))


def seed_everything(seed: int) -> None:
    """Same inputs and seed, same weights: seeded RNGs and deterministic TensorFlow ops."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train(settings: ModelParams, data_dir: Path, classes: int, out_file: Path,
          live_dir: Path) -> dict:
    """Train one model and save its trainable part.

    Args:
        settings: the model's params.
        data_dir: features (frozen backbone) or image arrays (custom CNN).
        classes: number of families.
        out_file: where to save the Keras model (`.keras`).
        live_dir: dvclive output folder (metrics and per-epoch plots).

    Returns:
        Epochs run, the best epoch and its validation loss and macro F1.
    """
    from dvclive.keras import DVCLiveCallback

    from dvclive import Live

    t = settings.training
    seed_everything(t.seed)
    x_train, y_train = load_split(data_dir, "train")
    x_val, y_val = load_split(data_dir, "val")
    if settings.backbone is None:
        model = build_cnn(settings.head, settings.input_size, classes)
    else:
        model = build_head(settings.head, x_train.shape[1], classes)
    model.compile(optimizer=build_optimizer(t), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    train_data = batches(x_train, y_train, t.batch_size, shuffle=True, seed=t.seed)
    val_data = batches(x_val, y_val, t.batch_size)
    with Live(str(live_dir), report=None, save_dvc_exp=False, dvcyaml=None) as live:
        history = model.fit(
            train_data, validation_data=val_data, epochs=t.epochs, verbose=2, shuffle=False,
            callbacks=[MacroF1(val_data, y_val),
                       keras.callbacks.EarlyStopping(monitor="val_loss", patience=t.patience,
                                                     restore_best_weights=True),
                       DVCLiveCallback(live=live)])
    with atomic_path(out_file) as tmp:
        model.save(tmp)
    losses = history.history["val_loss"]
    best = int(np.argmin(losses))
    return {"epochs": len(losses), "best_epoch": best + 1, "val_loss": float(losses[best]),
            "val_macro_f1": float(history.history["val_macro_f1"][best])}


def main() -> None:
    """Run the stage with `models.<model>.head` and `models.<model>.training`."""
    from stages.cli_util import stage_main
    from stages.params import load_params

    def work(model: str) -> str:
        settings = load_params().model(model)
        classes = len(read_json("artifacts/split/labels.json"))
        result = train(settings, inputs_dir(model, settings), classes,
                       Path(f"models/{model}/model.keras"), Path(f"dvclive/{model}"))
        return (f"{result['epochs']} epochs, best {result['best_epoch']}: val_loss "
                f"{result['val_loss']:.4f}, val macro F1 {result['val_macro_f1']:.4f}")

    stage_main("train", work, with_model=True)


if __name__ == "__main__":
    main()
