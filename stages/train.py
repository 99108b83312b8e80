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

from stages.checkpoint import Checkpoint, ResumableEarlyStopping, SaveEachEpoch, fingerprint
from stages.data import batches, load_split
from stages.io import read_json, write_json
from stages.keras_file import save_keras
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


def _replay(live, history: dict[str, list[float]]) -> None:
    """Log the epochs a resumed run already did, as DVCLiveCallback logged them."""
    from dvclive.utils import standardize_metric_name

    for epoch in range(len(history.get("loss", []))):
        for key, values in history.items():
            live.log_metric(standardize_metric_name(key, "dvclive.keras"), values[epoch])
        live.next_step()


def _phase(model: keras.Model, optimizer: keras.optimizers.Optimizer | None, data: tuple,
           end: int, patience: int, weights: dict | None, live, saving: dict) -> None:
    """Train one phase up to epoch `end`, from where `saving["state"]` stands.

    `optimizer` None means the model comes compiled from a checkpoint, optimizer state and all.
    Early stopping restores the phase's best weights at its end.
    """
    from dvclive.keras import DVCLiveCallback

    state = saving["state"]
    stopper = ResumableEarlyStopping(patience, saved=saving.get("stopper"))
    if state.get("stopped") or state["epoch"] >= end:  # the phase had finished
        if stopper.saved and stopper.saved[1] is not None:
            model.set_weights(stopper.saved[1])
        return
    if optimizer is not None:
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    train_data, val_data, y_val = data
    model.fit(train_data, validation_data=val_data, initial_epoch=state["epoch"], epochs=end,
              verbose=2, shuffle=False, class_weight=weights,
              callbacks=[MacroF1(val_data, y_val), stopper, DVCLiveCallback(live=live),
                         SaveEachEpoch(saving["checkpoint"], stopper, state,
                                       saving.get("frozen_weights"))])


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
        [data_dir / f"{split}_{part}.npy" for split in ("train", "val") for part in "xy"]))
    resumed = checkpoint.resume()
    if resumed:
        model, state = resumed.model, resumed.state
        saving = {"state": state, "checkpoint": checkpoint, "frozen_weights":
                  resumed.frozen_weights, "stopper": (state["stopper"], resumed.best_weights)}
        print(f"Resuming from {checkpoint_dir}: {state['epoch']} epochs done "
              f"({state['phase']} phase).")
    else:
        model = build_model(settings, backbone, x_train, classes)
        state = {"phase": "frozen", "epoch": 0, "history": {}, "fine_tuned": 0}
        saving = {"state": state, "checkpoint": checkpoint}
    with Live(str(live_dir), report=None, save_dvc_exp=False, dvcyaml=None) as live:
        _replay(live, state["history"])
        if state["phase"] == "frozen":
            optimizer = None if resumed else build_optimizer(t.optimizer, t.learning_rate,
                                                             t.weight_decay)
            _phase(model, optimizer, data, t.epochs, t.patience, weights, live, saving)
            if ft.layers:
                from stages.backbones import unfreeze_last

                # The frozen phase may have stopped early: fine-tuning starts where it ended.
                state.update(phase="fine_tune", start=state["epoch"], stopped=False,
                             frozen_best=min(state["history"]["val_loss"]),
                             fine_tuned=unfreeze_last(model.get_layer(BACKBONE), ft.layers))
                saving = {"state": state, "checkpoint": checkpoint,
                          "frozen_weights": model.get_weights()}
                resumed = None
        if state["phase"] == "fine_tune":
            optimizer = None if resumed else build_optimizer(ft.optimizer, ft.learning_rate,
                                                             ft.weight_decay)
            _phase(model, optimizer, data, state["start"] + ft.epochs, t.patience, weights,
                   live, saving)
            if min(state["history"]["val_loss"][state["start"]:]) >= state["frozen_best"]:
                model.set_weights(saving["frozen_weights"])  # fine-tuning did not help
    save_keras(model, out_file)
    checkpoint.clear()
    return _summary(settings, state)


def _summary(settings: ModelParams, state: dict) -> dict:
    """The training report: inputs, epochs, best epoch and its validation figures."""
    losses = state["history"]["val_loss"]
    best = int(np.argmin(losses))
    return {"inputs": "arrays" if settings.end_to_end else "features",
            "epochs": len(losses), "best_epoch": best + 1, "val_loss": float(losses[best]),
            "val_macro_f1": float(state["history"]["val_macro_f1"][best]),
            "fine_tuned_layers": state["fine_tuned"],
            "fine_tune_kept": state["phase"] == "fine_tune" and best >= state["start"]}


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
                       Path(f"models/{model}/model.keras"), Path(f"dvclive/{model}"),
                       Path(f"checkpoints/{model}"))
        write_json(f"reports/train/{model}.json",
                   {"model": model, "backbone": settings.backbone,
                    "architecture": backbone.architecture,
                    "head": settings.head.type, **result})
        return (f"{result['epochs']} epochs on {entry['inputs']}, best {result['best_epoch']}: "
                f"val_loss {result['val_loss']:.4f}, val macro F1 {result['val_macro_f1']:.4f}")

    stage_main("train", work, per="model")


if __name__ == "__main__":
    main()
