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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from stages.io import atomic_path

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
class Resumed:
    """What a checkpoint restores: the compiled model and where training stood."""

    model: keras.Model
    state: dict[str, Any]
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
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != self.fingerprint:
            print(f"Ignoring {self.folder}: it was saved with other params or inputs.")
            self.clear()
            return None
        best, frozen = self.folder / BEST, self.folder / FROZEN
        return Resumed(keras.saving.load_model(self.folder / MODEL), state,
                       _load_weights(best) if best.is_file() else None,
                       _load_weights(frozen) if frozen.is_file() else None)

    def save(self, model: keras.Model, state: dict[str, Any],
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
            (tmp / STATE).write_text(json.dumps({**state, "fingerprint": self.fingerprint}))

    def clear(self) -> None:
        """Remove the checkpoint (training finished, or it belongs to another run)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on val_loss that restores the best weights and can start from a saved state.

    Args:
        patience: epochs without improvement before stopping.
        saved: `state()` of an earlier run of the same phase, and its best weights.
    """

    def __init__(self, patience: int, saved: tuple[dict, list | None] | None = None) -> None:
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.saved = saved

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self.saved:
            state, self.best_weights = self.saved
            self.wait, self.best = state["wait"], state["best"]
            self.best_epoch = state["best_epoch"]

    def state(self) -> dict[str, Any]:
        """What `saved` needs to continue this phase exactly."""
        return {"wait": self.wait, "best": None if self.best is None else float(self.best),
                "best_epoch": self.best_epoch}


class SaveEachEpoch(keras.callbacks.Callback):
    """Writes the checkpoint after every epoch (after early stopping has updated its state).

    Args:
        checkpoint: where to write.
        stopper: the phase's early stopping.
        state: where training stands (phase, fine-tuned layers...); its `history` is extended.
        frozen_weights: the frozen phase's final weights, kept during fine-tuning.
    """

    def __init__(self, checkpoint: Checkpoint, stopper: ResumableEarlyStopping,
                 state: dict[str, Any], frozen_weights: list[np.ndarray] | None) -> None:
        super().__init__()
        self.checkpoint, self.stopper, self.state = checkpoint, stopper, state
        self.frozen_weights = frozen_weights

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        history = self.state.setdefault("history", {})
        for key, value in (logs or {}).items():
            history.setdefault(key, []).append(float(value))
        self.state.update(epoch=epoch + 1, stopper=self.stopper.state(),
                          stopped=bool(self.model.stop_training))
        self.checkpoint.save(self.model, self.state, self.stopper.best_weights,
                             self.frozen_weights)
