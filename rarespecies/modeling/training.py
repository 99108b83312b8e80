"""Training one model (train@<model>): its trainable part fitted, per-epoch curves in dvclive.

A model on a frozen backbone without augmentation or fine-tuning trains only its head, on the
cached features; the others (the custom CNN too) train end to end on the image arrays, streamed
from disk. Early stopping on validation loss restores the best weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from rarespecies.config.params import BackboneParams, ModelParams
from rarespecies.config.paths import split_file
from rarespecies.modeling.backbones import unfreeze_last
from rarespecies.modeling.checkpoint import (
    Checkpoint,
    ResumableEarlyStopping,
    SaveEachEpoch,
    StopperState,
    TrainingState,
    fingerprint,
)
from rarespecies.modeling.datasets import batches, load_split
from rarespecies.modeling.heads import build_head
from rarespecies.modeling.keras_file import save_keras
from rarespecies.modeling.models import (
    BACKBONE,
    build_backbone_model,
    build_end_to_end,
    build_optimizer,
    calibrate_random_backbone,
)
from rarespecies.runtime.metrics import macro_f1


class MacroF1(keras.callbacks.Callback):
    """Adds `val_macro_f1` to the epoch logs (before dvclive reads them)."""

    def __init__(self, val_data, y_true: np.ndarray) -> None:
        super().__init__()
        self.val_data, self.y_true = val_data, y_true

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        predicted = np.argmax(self.model.predict(self.val_data, verbose=0), axis=1)
        if logs is not None:
            logs["val_macro_f1"] = macro_f1(self.y_true, predicted)


@dataclass
class Phase:
    """What one phase's fit needs beyond the model: where it saves and what it resumes.

    Attributes:
        checkpoint: written after every epoch.
        frozen_weights: the frozen phase's final weights, kept while fine-tuning.
        stopper: early stopping's saved state and best weights, when resuming this phase.
    """

    checkpoint: Checkpoint
    frozen_weights: list[np.ndarray] | None = None
    stopper: tuple[StopperState | None, list[np.ndarray] | None] | None = None


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
    """The trainable model: the head alone on cached features, or the end-to-end model.

    An end-to-end model's random backbone (`weights: null`) has its BatchNormalization
    statistics measured on `x_train` (the image arrays) first.
    """
    if not settings.end_to_end:
        return build_head(settings.head, x_train.shape[1:], classes)
    base = build_backbone_model(backbone)
    # weights null: BatchNormalization statistics measured on the (unaugmented) training
    # images, then frozen like pretrained ones; the saved model keeps them.
    calibrate_random_backbone(base, backbone, x_train)
    head = build_head(settings.head, base.output_shape[1:], classes)
    return build_end_to_end(base, head, settings.training.augmentation, settings.training.seed)


def _replay(live, history: dict[str, list[float]]) -> None:
    """Log the epochs a resumed run already did, as DVCLiveCallback logged them."""
    from dvclive.utils import standardize_metric_name

    for epoch in range(len(history.get("loss", []))):
        for key, values in history.items():
            live.log_metric(standardize_metric_name(key, "dvclive.keras"), values[epoch])
        live.next_step()


def _phase(model: keras.Model, optimizer: keras.optimizers.Optimizer | None, data: tuple,
           end: int, patience: int, weights: dict | None, live, state: TrainingState,
           phase: Phase) -> None:
    """Train one phase up to epoch `end`, from where `state` stands.

    `optimizer` None means the model comes compiled from a checkpoint, optimizer state and all.
    Early stopping restores the phase's best weights at its end.
    """
    from dvclive.keras import DVCLiveCallback

    saved, best_weights = phase.stopper or (None, None)
    stopper = ResumableEarlyStopping(patience, saved, best_weights)
    if state.stopped or state.epoch >= end:  # the phase had finished
        if phase.stopper and best_weights is not None:
            model.set_weights(best_weights)
        return
    if optimizer is not None:
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    train_data, val_data, y_val = data
    model.fit(train_data, validation_data=val_data, initial_epoch=state.epoch, epochs=end,
              verbose=2, shuffle=False, class_weight=weights,
              callbacks=[MacroF1(val_data, y_val), stopper, DVCLiveCallback(live=live),
                         SaveEachEpoch(phase.checkpoint, stopper, state,
                                       phase.frozen_weights)])


def train(settings: ModelParams, backbone: BackboneParams, data_dir: Path, classes: int,
          out_file: Path, live_dir: Path, checkpoint_dir: Path) -> dict:
    """Train one model and save it: the head (cached features) or the whole end-to-end model.

    A fine-tuning phase, when set, follows the frozen phase: the backbone's last layers are
    unfrozen and training goes on at the fine-tuning rate. Its weights are kept only if it
    lowered the validation loss. Each epoch is checkpointed; an interrupted run of the same
    params on the same inputs resumes where it stopped.

    Args:
        settings: the model's params.
        backbone: its backbone's params (built here only for end-to-end training).
        data_dir: features (`artifacts/features/<backbone>`) or image arrays
            (`artifacts/arrays/<backbone>`).
        classes: number of families.
        out_file: where to save the Keras model (`.keras`).
        live_dir: dvclive output folder (per-epoch metrics and plots).
        checkpoint_dir: this training's checkpoint folder, removed once it finishes.

    Returns:
        What was trained on, epochs run, the best epoch and its validation loss and macro F1.
    """
    from dvclive import Live

    t, ft = settings.training, settings.training.fine_tune
    seed_everything(t.seed)
    x_train, y_train = load_split(data_dir, "train")
    x_val, y_val = load_split(data_dir, "val")
    data = (batches(x_train, y_train, t.batch_size, shuffle=True, seed=t.seed),
            batches(x_val, y_val, t.batch_size), y_val)
    weights = class_weights(y_train, classes) if t.class_weights else None
    checkpoint = Checkpoint(checkpoint_dir, fingerprint(
        {"model": settings.model_dump(mode="json"), "classes": classes,
         # The keys train declares; batch_size is the feature stage's.
         "backbone": backbone.model_dump(mode="json", exclude={"batch_size"})},
        [split_file(data_dir, split, part) for split in ("train", "val") for part in "xy"]))
    resumed = checkpoint.resume()
    if resumed:
        model, state = resumed.model, resumed.state
        phase = Phase(checkpoint, resumed.frozen_weights, (state.stopper, resumed.best_weights))
        print(f"Resuming from {checkpoint_dir}: {state.epoch} epochs done "
              f"({state.phase} phase).")
    else:
        model = build_model(settings, backbone, x_train, classes)
        state, phase = TrainingState(), Phase(checkpoint)
    with Live(str(live_dir), report=None, save_dvc_exp=False, dvcyaml=None) as live:
        _replay(live, state.history)
        if state.phase == "frozen":
            optimizer = None if resumed else build_optimizer(t.optimizer, t.learning_rate,
                                                             t.weight_decay)
            _phase(model, optimizer, data, t.epochs, t.patience, weights, live, state, phase)
            if ft.layers:
                # The frozen phase may have stopped early: fine-tuning starts where it ended.
                state.phase, state.start, state.stopped = "fine_tune", state.epoch, False
                state.frozen_best = min(state.history["val_loss"])
                state.fine_tuned = unfreeze_last(model.get_layer(BACKBONE), ft.layers)
                phase = Phase(checkpoint, frozen_weights=model.get_weights())
                resumed = None
        if state.phase == "fine_tune":
            optimizer = None if resumed else build_optimizer(ft.optimizer, ft.learning_rate,
                                                             ft.weight_decay)
            _phase(model, optimizer, data, state.start + ft.epochs, t.patience, weights, live,
                   state, phase)
            if min(state.history["val_loss"][state.start:]) >= state.frozen_best:
                model.set_weights(phase.frozen_weights)  # fine-tuning did not help
    save_keras(model, out_file)
    checkpoint.clear()
    return _summary(settings, state)


def _summary(settings: ModelParams, state: TrainingState) -> dict:
    """The training report: inputs, epochs, best epoch and its validation figures."""
    losses = state.history["val_loss"]
    best = int(np.argmin(losses))
    return {"inputs": "arrays" if settings.end_to_end else "features",
            "epochs": len(losses), "best_epoch": best + 1, "val_loss": float(losses[best]),
            "val_macro_f1": float(state.history["val_macro_f1"][best]),
            "fine_tuned_layers": state.fine_tuned,
            "fine_tune_kept": state.phase == "fine_tune" and best >= state.start}
