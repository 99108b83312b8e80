"""Training one model (train@<model>): its trainable part fitted, per-epoch curves in dvclive.

A model on a frozen backbone without augmentation or fine-tuning trains only its head, on the
cached features; the others (the custom CNN too) train end to end on the image arrays, streamed
from disk. Early stopping on validation loss restores the best weights.

Per epoch: the validation split goes through the model once (`ValidationPass`: val_loss as
Keras computes it, val_accuracy, val_macro_f1), the checkpoint writes only what changed
(`checkpoint.py`), and one progress line gives the time at most left (`EpochProgress`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
from rarespecies.modeling.datasets import batches, epoch_batches, load_split, steps_per_epoch
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


class ValidationPass(keras.callbacks.Callback):
    """Validates once per epoch: `val_loss`, `val_accuracy` and `val_macro_f1` from one pass.

    Replaces Keras' `validation_data` pass plus a second `predict` for macro F1. Each batch's
    loss is the model's own `compute_loss` in inference mode, as Keras' evaluation computes it
    (cross-entropy without class weights, plus the regularization losses), averaged over the
    images; accuracy and macro F1 come from the same predictions. Put it first among the
    callbacks: the later ones (early stopping, dvclive, the checkpoint) read these logs.

    Args:
        val_data: the validation batches, (images, labels), in a fixed order.
        y_true: the validation labels in that order.
    """

    def __init__(self, val_data, y_true: np.ndarray) -> None:
        super().__init__()
        self.val_data, self.y_true = val_data, np.asarray(y_true)
        self._step = None

    def _predict_and_score(self):
        """A traced step: one batch's predictions and Keras' loss for them."""
        import tensorflow as tf

        model = self.model

        # One traced function (shapes vary only in the last batch), like Keras' test step.
        @tf.function(reduce_retracing=True)
        def step(x, y):
            y_pred = model(x, training=False)
            return y_pred, model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)

        return step

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._step = self._predict_and_score()  # traced anew for this fit's compiled model

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs.update(self.evaluate())

    def evaluate(self) -> dict[str, float]:
        """The validation figures of the model as it stands.

        Returns:
            `val_loss`, `val_accuracy`, `val_macro_f1`.
        """
        if self._step is None:
            self._step = self._predict_and_score()
        step = self._step
        predicted, loss_sum = [], 0.0
        for x, y in self.val_data:
            y_pred, loss = step(x, y)
            predicted.append(np.argmax(y_pred.numpy(), axis=1))
            loss_sum += float(loss) * len(y)  # Keras weighs each batch's mean by its size
        predicted = np.concatenate(predicted)
        if len(predicted) != len(self.y_true):
            raise ValueError(f"validation gave {len(predicted)} predictions for "
                             f"{len(self.y_true)} labels; the batches must hold the split once")
        return {"val_loss": loss_sum / len(predicted),
                "val_accuracy": float(np.mean(predicted == self.y_true)),
                "val_macro_f1": macro_f1(self.y_true, predicted)}


def duration(seconds: float) -> str:
    """`3h 02m`, `11m 47s` or `41 s`: short enough for a progress line."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds} s"


def progress_line(label: str, epoch: int, end: int, phase: str, logs: dict,
                  seconds_per_epoch: float, epochs_left: int, later: int = 0) -> str:
    """One epoch's progress: where it stands, its validation figures, the time at most left.

    Args:
        label: the stage, e.g. `train@densenet121`.
        epoch: epochs done, both phases counted.
        end: the last epoch this phase may reach.
        phase: "frozen" or "fine_tune".
        logs: the epoch's logs (`loss`, `val_loss`, `val_macro_f1` are shown if present).
        seconds_per_epoch: this phase's mean so far.
        epochs_left: epochs of this phase that may still run.
        later: fine-tuning epochs that may follow this phase; they are counted, not timed
            (an epoch that trains backbone layers costs more: 1.7x measured for DenseNet121).

    Returns:
        e.g. `train@densenet121: epoch 3/20 (frozen) loss 2.3104, val_loss 2.2870,
        val_macro_f1 0.0512; 41 s/epoch, at most 11m 37s left, then up to 5 fine-tuning
        epochs (early stopping may end sooner)`.
    """
    shown = ", ".join(f"{key} {logs[key]:.4f}" for key in ("loss", "val_loss", "val_macro_f1")
                      if key in logs)
    left = f"at most {duration(seconds_per_epoch * epochs_left)} left" if epochs_left else ""
    if later:
        left += f"{', then' if left else 'then'} up to {later} fine-tuning epochs"
    left = f"{left} (early stopping may end sooner)" if left else "phase done"
    return (f"{label}: epoch {epoch}/{end} ({phase.replace('_', '-')}) {shown}; "
            f"{seconds_per_epoch:.0f} s/epoch, {left}")


class EpochProgress(keras.callbacks.Callback):
    """Prints one line per epoch with an estimate of the time left (put it last).

    The estimate is this phase's mean epoch time (its first epoch, which traces the graph,
    left out once there are others) times the epochs of this phase that may still run (none
    once early stopping ended it); the fine-tuning epochs that may follow are named, and timed
    once they run.

    Args:
        label: the stage, e.g. `train@densenet121`.
        phase: "frozen" or "fine_tune".
        end: the last epoch this phase may reach.
        later: epochs of the phase after this one (0 if none).
        clock: seconds, monotonic (replaced in tests).
    """

    def __init__(self, label: str, phase: str, end: int, later: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self.label, self.phase, self.end, self.later, self.clock = label, phase, end, later, clock
        self.times: list[float] = []
        self.last_line = ""
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = self.clock()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.times.append(self.clock() - self._started)
        steady = self.times[1:] or self.times
        left = 0 if self.model.stop_training else self.end - epoch - 1
        self.last_line = progress_line(self.label, epoch + 1, self.end, self.phase, logs or {},
                                       sum(steady) / len(steady), left, self.later)
        print(self.last_line, flush=True)


@dataclass
class Phase:
    """What one phase's fit needs beyond the model: where it saves and what it resumes.

    Attributes:
        checkpoint: written after every epoch.
        frozen_weights: the frozen phase's final weights, kept while fine-tuning.
        stopper: early stopping's saved state and best weights, when resuming this phase.
        name: "frozen" or "fine_tune", as the checkpoint and progress lines name it.
        later: epochs that may follow this phase (fine-tuning's), for the time estimate.
    """

    checkpoint: Checkpoint
    frozen_weights: list[np.ndarray] | None = None
    stopper: tuple[StopperState | None, list[np.ndarray] | None] | None = None
    name: str = "frozen"
    later: int = 0


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
           phase: Phase, label: str) -> None:
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
        phase.checkpoint.start_phase(model, phase.name)
    train_batches, steps, val_data, y_val = data
    # Keras' per-batch bar only on a terminal; a log gets EpochProgress's line per epoch.
    # The epochs' batches depend on the epoch alone, so a resumed phase sees the same ones.
    model.fit(train_batches(first_epoch=state.epoch, epochs=end), steps_per_epoch=steps,
              initial_epoch=state.epoch, epochs=end,
              verbose=1 if sys.stdout.isatty() else 0, shuffle=False, class_weight=weights,
              callbacks=[ValidationPass(val_data, y_val), stopper, DVCLiveCallback(live=live),
                         SaveEachEpoch(phase.checkpoint, stopper, state),
                         EpochProgress(label, phase.name, end, phase.later)])


def train(settings: ModelParams, backbone: BackboneParams, data_dir: Path, classes: int,
          out_file: Path, live_dir: Path, checkpoint_dir: Path, label: str = "train") -> dict:
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
        label: what the per-epoch progress lines start with (the stage's name).

    Returns:
        What was trained on, epochs run, the best epoch and its validation loss and macro F1.
    """
    from dvclive import Live

    t, ft = settings.training, settings.training.fine_tune
    seed_everything(t.seed)
    x_train, y_train = load_split(data_dir, "train")
    x_val, y_val = load_split(data_dir, "val")
    data = (partial(epoch_batches, x_train, y_train, t.batch_size, seed=t.seed),
            steps_per_epoch(len(x_train), t.batch_size),
            batches(x_val, y_val, t.batch_size), y_val)
    weights = class_weights(y_train, classes) if t.class_weights else None
    checkpoint = Checkpoint(checkpoint_dir, fingerprint(
        {"model": settings.model_dump(mode="json"), "classes": classes,
         # The keys train declares; batch_size is the feature stage's.
         "backbone": backbone.model_dump(mode="json", exclude={"batch_size"})},
        [split_file(data_dir, split, part) for split in ("train", "val") for part in "xy"]))
    resumed = checkpoint.resume()
    fine_tune_epochs = ft.epochs if ft.layers else 0
    if resumed:
        model, state = resumed.model, resumed.state
        phase = Phase(checkpoint, resumed.frozen_weights, (state.stopper, resumed.best_weights),
                      state.phase, fine_tune_epochs if state.phase == "frozen" else 0)
        print(f"Resuming from {checkpoint_dir}: {state.epoch} epochs done "
              f"({state.phase} phase).")
    else:
        model = build_model(settings, backbone, x_train, classes)
        state, phase = TrainingState(), Phase(checkpoint, later=fine_tune_epochs)
    with Live(str(live_dir), report=None, save_dvc_exp=False, dvcyaml=None) as live:
        _replay(live, state.history)
        if state.phase == "frozen":
            optimizer = None if resumed else build_optimizer(t.optimizer, t.learning_rate,
                                                             t.weight_decay)
            _phase(model, optimizer, data, t.epochs, t.patience, weights, live, state, phase,
                   label)
            if ft.layers:
                # The frozen phase may have stopped early: fine-tuning starts where it ended.
                state.phase, state.start, state.stopped = "fine_tune", state.epoch, False
                state.frozen_best = min(state.history["val_loss"])
                state.fine_tuned = unfreeze_last(model.get_layer(BACKBONE), ft.layers)
                phase = Phase(checkpoint, frozen_weights=model.get_weights(), name="fine_tune")
                resumed = None
        if state.phase == "fine_tune":
            optimizer = None if resumed else build_optimizer(ft.optimizer, ft.learning_rate,
                                                             ft.weight_decay)
            _phase(model, optimizer, data, state.start + ft.epochs, t.patience, weights, live,
                   state, phase, label)
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
