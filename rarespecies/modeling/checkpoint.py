"""Resumable training: an interrupted `train@<model>` goes on from its last finished epoch.

Keras' BackupAndRestore keeps the weights, optimizer and epoch, but not what early stopping has
seen nor the curves so far, and DVC deletes a stage's outputs (dvclive's too) before rerunning
it. So every epoch end writes all of it to `checkpoints/<model>/`, outside DVC's outputs: the
model with its optimizer state, the early-stopping state and best weights, and the history. A
checkpoint resumes only the run it came from (same params, same input files); a finished
training removes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from rarespecies.core.files import atomic_path

MODEL, STATE, BEST, FROZEN = "model.keras", "state.json", "best.npz", "frozen.npz"


def fingerprint(settings: dict, files: list[Path]) -> str:
    """A digest of the training params and the input files' bytes.

    Args:
        settings: the model's and its backbone's params, as plain data.
        files: the arrays or features trained on.

    Returns:
        A hex digest; any change to the params or the inputs changes it.
    """
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=16)
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as stream:
            digest.update(hashlib.file_digest(stream, "blake2b").digest())
    return digest.hexdigest()


def _save_weights(path: Path, weights: list[np.ndarray]) -> None:
    np.savez(path, *weights)


def _load_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as stored:
        return [stored[f"arr_{i}"] for i in range(len(stored.files))]


@dataclass
class StopperState:
    """What early stopping has seen in the current phase."""

    wait: int = 0
    best: float | None = None
    best_epoch: int = 0


@dataclass
class TrainingState:
    """Where a training stands; written with every epoch's checkpoint.

    Attributes:
        phase: "frozen" (the backbone frozen), then "fine_tune" when fine-tuning is on.
        epoch: epochs finished, both phases counted.
        history: per-epoch logs (loss, val_loss, val_macro_f1...).
        fine_tuned: layers unfrozen for fine-tuning.
        start: the first epoch of fine-tuning.
        stopped: early stopping ended the current phase.
        frozen_best: the frozen phase's best validation loss, which fine-tuning must beat.
        stopper: early stopping's state in the current phase.
    """

    phase: str = "frozen"
    epoch: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    fine_tuned: int = 0
    start: int = 0
    stopped: bool = False
    frozen_best: float | None = None
    stopper: StopperState | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data, for `state.json`."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        """The state `to_json` wrote (other keys, such as the fingerprint, are ignored)."""
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if fields.get("stopper") is not None:
            fields["stopper"] = StopperState(**fields["stopper"])
        return cls(**fields)


@dataclass
class Resumed:
    """What a checkpoint restores: the compiled model and where training stood."""

    model: keras.Model
    state: TrainingState
    best_weights: list[np.ndarray] | None
    frozen_weights: list[np.ndarray] | None = field(default=None)


class Checkpoint:
    """The checkpoint folder of one model's training."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint

    def resume(self) -> Resumed | None:
        """The saved run, if one exists for these params and inputs; a stale one is removed."""
        state_file = self.folder / STATE
        if not state_file.is_file():
            return None
        saved = json.loads(state_file.read_text())
        if saved.get("fingerprint") != self.fingerprint:
            print(f"Ignoring {self.folder}: it was saved with other params or inputs.")
            self.clear()
            return None
        best, frozen = self.folder / BEST, self.folder / FROZEN
        return Resumed(keras.saving.load_model(self.folder / MODEL),
                       TrainingState.from_json(saved),
                       _load_weights(best) if best.is_file() else None,
                       _load_weights(frozen) if frozen.is_file() else None)

    def save(self, model: keras.Model, state: TrainingState,
             best_weights: list[np.ndarray] | None,
             frozen_weights: list[np.ndarray] | None) -> None:
        """Replace the checkpoint with this epoch's, all files at once."""
        with atomic_path(self.folder) as tmp:
            tmp.mkdir()
            model.save(tmp / MODEL)
            if best_weights is not None:
                _save_weights(tmp / BEST, best_weights)
            if frozen_weights is not None:
                _save_weights(tmp / FROZEN, frozen_weights)
            (tmp / STATE).write_text(json.dumps({**state.to_json(),
                                                 "fingerprint": self.fingerprint}))

    def clear(self) -> None:
        """Remove the checkpoint (training finished, or it belongs to another run)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on val_loss that restores the best weights and can start from a saved state.

    Args:
        patience: epochs without improvement before stopping.
        saved: the state of an earlier run of the same phase.
        best_weights: that run's best weights.
    """

    def __init__(self, patience: int, saved: StopperState | None = None,
                 best_weights: list[np.ndarray] | None = None) -> None:
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.saved, self.saved_weights = saved, best_weights

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self.saved:
            self.best_weights = self.saved_weights
            self.wait, self.best = self.saved.wait, self.saved.best
            self.best_epoch = self.saved.best_epoch

    def state(self) -> StopperState:
        """What `saved` needs to continue this phase exactly."""
        return StopperState(self.wait, None if self.best is None else float(self.best),
                            self.best_epoch)


class SaveEachEpoch(keras.callbacks.Callback):
    """Writes the checkpoint after every epoch (after early stopping has updated its state).

    Args:
        checkpoint: where to write.
        stopper: the phase's early stopping.
        state: where training stands; its `history` is extended.
        frozen_weights: the frozen phase's final weights, kept during fine-tuning.
    """

    def __init__(self, checkpoint: Checkpoint, stopper: ResumableEarlyStopping,
                 state: TrainingState, frozen_weights: list[np.ndarray] | None) -> None:
        super().__init__()
        self.checkpoint, self.stopper, self.state = checkpoint, stopper, state
        self.frozen_weights = frozen_weights

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self.state.history.setdefault(key, []).append(float(value))
        self.state.epoch = epoch + 1
        self.state.stopper = self.stopper.state()
        self.state.stopped = bool(self.model.stop_training)
        self.checkpoint.save(self.model, self.state, self.stopper.best_weights,
                             self.frozen_weights)
