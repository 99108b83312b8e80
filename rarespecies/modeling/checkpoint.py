"""Resumable training: an interrupted `train@<model>` goes on from its last finished epoch.

Keras' BackupAndRestore keeps the weights, optimizer and epoch, but not what early stopping has
seen nor the curves so far, and DVC deletes a stage's outputs (dvclive's too) before rerunning
it. So the training writes all of it to `checkpoints/<model>/`, outside DVC's outputs.

A frozen backbone's weights do not change during a phase (it runs in inference mode, so even
its BatchNormalization statistics stay), and they are most of the model (54M parameters for
InceptionResNetV2). So the whole compiled model is written once per phase, when the phase
starts (`<phase>.keras`), and each epoch writes only what can change, in `epoch-<n>.npz`: every
weight outside the backbone's non-trainable ones, the random layers' seed states, the
optimizer's variables, and early stopping's best weights (same subset); then `state.json`,
which makes that epoch the current one. Resuming loads the phase's model and puts the epoch's
values back, so it continues from exactly that epoch's weights, optimizer, random state and
early-stopping state. A checkpoint resumes only the run it came from (same params, same input
files); a finished training removes it.
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
from rarespecies.modeling.models import BACKBONE

STATE = "state.json"


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


def _frozen(model: keras.Model) -> set[int]:
    """Ids of the backbone's non-trainable weights: frozen layers' weights and BatchNorm
    statistics, which stay as they are during a phase because the backbone always runs in
    inference mode (`models.build_end_to_end`). A head-only model has no backbone."""
    try:
        return {id(v) for v in model.get_layer(BACKBONE).non_trainable_weights}
    except ValueError:  # no nested backbone: the head alone, on cached features
        return set()


def changing_weights(model: keras.Model) -> list[int]:
    """Positions in `model.get_weights()` of the weights that a phase's epochs can change.

    Args:
        model: the model being trained, with this phase's `trainable` flags.

    Returns:
        Indices of all weights but the backbone's non-trainable ones, in order.
    """
    frozen = _frozen(model)
    return [i for i, v in enumerate(model.weights) if id(v) not in frozen]


def changing_variables(model: keras.Model) -> list[keras.Variable]:
    """The model's state that a phase's epochs can change: the changing weights plus the
    random layers' seed states (Dropout, augmentation), so a resumed run draws the same
    masks and transforms as an uninterrupted one."""
    frozen = _frozen(model)
    return [v for v in model.variables if id(v) not in frozen]


def _phase_file(phase: str) -> str:
    return f"{phase}.keras"


def _epoch_file(epoch: int) -> str:
    return f"epoch-{epoch:04d}.npz"


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
    """What a checkpoint restores: the compiled model and where training stood.

    Attributes:
        model: compiled, with the last epoch's weights and optimizer state.
        state: where training stood.
        best_weights: early stopping's best weights of the phase (all of the model's).
        frozen_weights: in the fine-tuning phase, the frozen phase's final weights.
    """

    model: keras.Model
    state: TrainingState
    best_weights: list[np.ndarray] | None
    frozen_weights: list[np.ndarray] | None = field(default=None)


class Checkpoint:
    """The checkpoint folder of one model's training."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint

    def start_phase(self, model: keras.Model, phase: str) -> None:
        """Write the whole compiled model once, as a phase starts (before its first epoch).

        The optimizer is built first, so the saved model carries its variables and a resumed
        one can take the epoch's values. Until an epoch of this phase is saved, `state.json`
        still names the previous phase (or nothing), so a crash here resumes as before.

        Args:
            model: compiled with the phase's optimizer and `trainable` flags.
            phase: "frozen" or "fine_tune".
        """
        model.optimizer.build(model.trainable_variables)
        with atomic_path(self.folder / _phase_file(phase)) as tmp:
            model.save(tmp)

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
        state = TrainingState.from_json(saved)
        model = keras.saving.load_model(self.folder / _phase_file(state.phase))
        start = model.get_weights()  # the phase's first weights: the frozen phase's last
        variables = changing_variables(model) + list(model.optimizer.variables)
        with np.load(self.folder / _epoch_file(state.epoch)) as stored:
            if int(stored["variables"]) != len(variables):
                raise ValueError(f"{self.folder}: the epoch's weights do not fit the model; "
                                 f"delete the folder to train from the start")
            for n, variable in enumerate(variables):
                variable.assign(stored[f"variable_{n}"])
            best = None
            if "best_0" in stored:
                best = list(start)
                for n, i in enumerate(changing_weights(model)):
                    best[i] = stored[f"best_{n}"]
        return Resumed(model, state, best, start if state.phase == "fine_tune" else None)

    def save(self, model: keras.Model, state: TrainingState,
             best_weights: list[np.ndarray] | None) -> None:
        """Save this epoch: what changes (weights, seed states, optimizer), best, then state.

        `state.json` is replaced last (atomically), so a crash at any point leaves the
        previous epoch's checkpoint whole; older epoch files are removed after it.
        """
        variables = changing_variables(model) + list(model.optimizer.variables)
        arrays = {f"variable_{n}": keras.ops.convert_to_numpy(v)
                  for n, v in enumerate(variables)}
        arrays["variables"] = np.asarray(len(variables))
        if best_weights is not None:
            arrays |= {f"best_{n}": best_weights[i]
                       for n, i in enumerate(changing_weights(model))}
        with atomic_path(self.folder / _epoch_file(state.epoch)) as tmp, tmp.open("wb") as out:
            np.savez(out, **arrays)
        with atomic_path(self.folder / STATE) as tmp:
            tmp.write_text(json.dumps({**state.to_json(), "fingerprint": self.fingerprint}))
        keep = {_epoch_file(state.epoch), _phase_file(state.phase), STATE}
        for old in self.folder.glob("*"):
            if old.is_file() and old.name not in keep:
                old.unlink()

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
        checkpoint: where to write (`start_phase` or `resume` has run for this phase).
        stopper: the phase's early stopping.
        state: where training stands; its `history` is extended.
    """

    def __init__(self, checkpoint: Checkpoint, stopper: ResumableEarlyStopping,
                 state: TrainingState) -> None:
        super().__init__()
        self.checkpoint, self.stopper, self.state = checkpoint, stopper, state

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self.state.history.setdefault(key, []).append(float(value))
        self.state.epoch = epoch + 1
        self.state.stopper = self.stopper.state()
        self.state.stopped = bool(self.model.stop_training)
        self.checkpoint.save(self.model, self.state, self.stopper.best_weights)
