"""Stage `train@<model>`: fit the model's trainable part, log per-epoch curves with dvclive.

A model on a frozen backbone without augmentation or fine-tuning trains only its head, on the
cached features; the others (the custom CNN too) train end to end on the image arrays, streamed
from disk. Early stopping on validation loss restores the best weights.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import f1_score

from stages.data import batches, load_split
from stages.io import atomic_path, read_json, write_json
from stages.models import (
    BACKBONE,
    build_backbone_model,
    build_end_to_end,
    build_head,
    build_optimizer,
)
from stages.params import BackboneParams, ModelParams


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


def class_weights(y: np.ndarray, classes: int) -> dict[int, float]:
    """Inverse-frequency weights ("balanced"): each present class weighs the same in the loss."""
    counts = np.bincount(y, minlength=classes)
    return {c: float(len(y) / (np.count_nonzero(counts) * n)) for c, n in enumerate(counts) if n}


def build_model(settings: ModelParams, backbone: BackboneParams, x_train: np.ndarray,
                classes: int) -> keras.Model:
    """The trainable model: the head alone on cached features, or the end-to-end model."""
    if not settings.end_to_end:
        return build_head(settings.head, x_train.shape[1:], classes)
    base = build_backbone_model(backbone)
    head = build_head(settings.head, base.output_shape[1:], classes)
    return build_end_to_end(base, head, settings.training.augmentation, settings.training.seed)


def _fit(model: keras.Model, optimizer: keras.optimizers.Optimizer, data: tuple, epochs: tuple,
         patience: int, weights: dict | None, live) -> dict:
    """One training phase from epoch `epochs[0]` to `epochs[1]`; returns its history."""
    from dvclive.keras import DVCLiveCallback

    train_data, val_data, y_val = data
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(
        train_data, validation_data=val_data, initial_epoch=epochs[0], epochs=epochs[1],
        verbose=2, shuffle=False, class_weight=weights,
        callbacks=[MacroF1(val_data, y_val),
                   keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                 restore_best_weights=True),
                   DVCLiveCallback(live=live)])
    return history.history


def train(settings: ModelParams, backbone: BackboneParams, data_dir: Path, classes: int,
          out_file: Path, live_dir: Path) -> dict:
    """Train one model and save it: the head (cached features) or the whole end-to-end model.

    A fine-tuning phase, when set, follows the frozen phase: the backbone's last layers are
    unfrozen and training goes on at the fine-tuning rate. Its weights are kept only if it
    lowered the validation loss.

    Args:
        settings: the model's params.
        backbone: its backbone's params (built here only for end-to-end training).
        data_dir: features (`artifacts/features/<backbone>`) or image arrays
            (`artifacts/arrays/<backbone>`).
        classes: number of families.
        out_file: where to save the Keras model (`.keras`).
        live_dir: dvclive output folder (per-epoch metrics and plots).

    Returns:
        What was trained on, epochs run, the best epoch and its validation loss and macro F1.
    """
    from dvclive import Live

    t = settings.training
    seed_everything(t.seed)
    x_train, y_train = load_split(data_dir, "train")
    x_val, y_val = load_split(data_dir, "val")
    model = build_model(settings, backbone, x_train, classes)
    data = (batches(x_train, y_train, t.batch_size, shuffle=True, seed=t.seed),
            batches(x_val, y_val, t.batch_size), y_val)
    weights = class_weights(y_train, classes) if t.class_weights else None
    with Live(str(live_dir), report=None, save_dvc_exp=False, dvcyaml=None) as live:
        history = _fit(model, build_optimizer(t.optimizer, t.learning_rate, t.weight_decay),
                       data, (0, t.epochs), t.patience, weights, live)
        fine_tuned = 0
        if t.fine_tune.layers:
            from stages.backbones import unfreeze_last

            frozen_weights, frozen_best = model.get_weights(), min(history["val_loss"])
            ft = t.fine_tune
            fine_tuned = unfreeze_last(model.get_layer(BACKBONE), ft.layers)
            done = len(history["val_loss"])
            tuned = _fit(model, build_optimizer(ft.optimizer, ft.learning_rate, ft.weight_decay),
                         data, (done, done + ft.epochs), t.patience, weights, live)
            history = {key: history[key] + tuned[key] for key in history}
            if min(tuned["val_loss"]) >= frozen_best:  # fine-tuning did not help: undo it
                model.set_weights(frozen_weights)
    with atomic_path(out_file) as tmp:
        model.save(tmp)
    losses = history["val_loss"]
    best = int(np.argmin(losses))
    return {"inputs": "arrays" if settings.end_to_end else "features",
            "epochs": len(losses), "best_epoch": best + 1, "val_loss": float(losses[best]),
            "val_macro_f1": float(history["val_macro_f1"][best]),
            "fine_tuned_layers": fine_tuned,
            "fine_tune_kept": bool(fine_tuned) and best >= len(losses) - len(tuned["val_loss"])}


def main() -> None:
    """Run the stage with `models.<model>` and its backbone's keys."""
    from stages.cli_util import stage_main
    from stages.params import load_params
    from stages.plan import check_model

    def work(model: str) -> str:
        params = load_params()
        settings = params.model(model)
        entry = check_model(params, model)
        classes = len(read_json("artifacts/split/labels.json"))
        backbone = params.backbone_of(model)
        result = train(settings, backbone,
                       Path(f"artifacts/{entry['inputs']}/{entry['backbone']}"), classes,
                       Path(f"models/{model}/model.keras"), Path(f"dvclive/{model}"))
        write_json(f"reports/train/{model}.json",
                   {"model": model, "backbone": settings.backbone,
                    "architecture": backbone.architecture,
                    "head": settings.head.type, **result})
        return (f"{result['epochs']} epochs on {entry['inputs']}, best {result['best_epoch']}: "
                f"val_loss {result['val_loss']:.4f}, val macro F1 {result['val_macro_f1']:.4f}")

    stage_main("train", work, per="model")


if __name__ == "__main__":
    main()
