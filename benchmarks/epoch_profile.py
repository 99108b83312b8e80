"""Where one epoch of end-to-end training goes, measured in one process, parts interleaved.

For one end-to-end model of params.yaml (on the sample's `artifacts/arrays/<backbone>`), each
round times, one after the other: reading the train split through the input pipeline alone;
one training epoch of the stage's model (augmentation on); the same epoch with augmentation
off (same weights); the frozen backbone's forward pass over the same batches alone (the floor
of a frozen-backbone epoch); the per-epoch validation as `train` ran it before (Keras'
validation pass, then a second `predict` pass for macro F1) and as it runs now
(`ValidationPass`, one pass); and the per-epoch checkpoint write before (the whole model,
frozen backbone included, plus all best weights) and now (`Checkpoint.save`: the weights that
change, optimizer, best, state). The phase's one-off model write (`Checkpoint.start_phase`) is
timed too, outside the epoch. Every part is warmed up (traced) first. Medians over rounds, each
part's share of the old epoch, and the old and new epoch compared.

    python benchmarks/epoch_profile.py [--model inception_resnet_v2] [--rounds 2] [--steps 10]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)

TRAIN = "train epoch, augmentation on (stage)"
OLD_VAL = ("validation before: Keras pass (val_loss)", "validation before: MacroF1 predict pass")
NEW_VAL = "validation now: ValidationPass (one pass)"
FORWARD = "train epoch's frozen-backbone forward pass alone (no head, no gradients)"
OLD_SAVE = "checkpoint before: whole model + all best weights"
NEW_SAVE = "checkpoint now: epoch file"
PHASE_SAVE = "checkpoint now: phase start (once per phase, not per epoch)"


def _clock(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _old_checkpoint(model, folder: Path, weights) -> None:
    """What the checkpoint wrote every epoch before: the whole model and all best weights."""
    import numpy as np

    folder.mkdir(exist_ok=True)
    model.save(folder / "model.keras")
    np.savez(folder / "best.npz", *weights)


@app.command()
def main(
    model: Annotated[str, typer.Option(help="an end-to-end model of params.yaml")] =
        "inception_resnet_v2",
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds (median reported)")] = 2,
    steps: Annotated[int, typer.Option(min=0, help="train batches timed; 0 = a whole epoch "
                                       "(times are then scaled to one epoch)")] = 0,
) -> None:
    """Time the parts of one training epoch of `model`; print a table of seconds and shares."""
    import numpy as np
    import tensorflow as tf

    from rarespecies.config.params import Augmentation, load_params
    from rarespecies.modeling.checkpoint import Checkpoint, TrainingState
    from rarespecies.modeling.datasets import batches, epoch_batches, load_split
    from rarespecies.modeling.models import build_end_to_end, build_optimizer
    from rarespecies.modeling.training import ValidationPass, build_model, seed_everything

    params = load_params()
    settings, backbone = params.model(model), params.backbone_of(model)
    if not settings.end_to_end:
        raise typer.BadParameter(f"{model} trains on cached features, not end to end")
    t = settings.training
    seed_everything(t.seed)
    folder = Path("artifacts/arrays") / settings.backbone
    x, y = load_split(folder, "train")
    x_val, y_val = load_split(folder, "val")
    classes = int(max(y.max(), y_val.max())) + 1
    train_data = epoch_batches(x, y, t.batch_size, seed=t.seed, first_epoch=0, epochs=1)
    per_epoch = -(-len(x) // t.batch_size)
    timed = min(steps or per_epoch, per_epoch)
    scale = per_epoch / timed  # train-side parts are timed on `timed` batches
    train_data = train_data.take(timed)
    val_data = batches(x_val, y_val, t.batch_size)

    full = build_model(settings, backbone, x, classes)
    # Augmentation off, same backbone and head objects (so the same weights).
    plain = build_end_to_end(full.get_layer("backbone"), full.get_layer("head"),
                             Augmentation(), t.seed)
    for net in (full, plain):
        net.compile(optimizer=build_optimizer(t.optimizer, t.learning_rate, t.weight_decay),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        net.fit(train_data.take(1), epochs=1, verbose=0)  # trace outside the clock
    frozen = tf.function(full.get_layer("backbone"))  # compiled, as fit runs it
    for batch, _ in train_data.take(1):
        frozen(batch, training=False)
    validation = ValidationPass(val_data, y_val)
    validation.set_model(full)
    validation.on_train_begin()
    validation.evaluate()
    full.evaluate(val_data, verbose=0)
    full.predict(val_data, verbose=0)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Checkpoint(Path(tmp) / "checkpoint", "profile")
        weights = full.get_weights()
        state = TrainingState(epoch=1)
        parts = {
            "input pipeline only (read + batch)": lambda: [None for _ in train_data],
            TRAIN: lambda: full.fit(train_data, epochs=1, verbose=0),
            "train epoch, augmentation off": lambda: plain.fit(train_data, epochs=1,
                                                               verbose=0),
            FORWARD: lambda: [frozen(batch, training=False) for batch, _ in train_data],
            OLD_VAL[0]: lambda: full.evaluate(val_data, verbose=0),
            OLD_VAL[1]: lambda: np.argmax(full.predict(val_data, verbose=0), axis=1),
            NEW_VAL: validation.evaluate,
            PHASE_SAVE: lambda: checkpoint.start_phase(full, "frozen"),
            OLD_SAVE: lambda: _old_checkpoint(full, Path(tmp) / "old", weights),
            NEW_SAVE: lambda: checkpoint.save(full, state, weights),
        }
        times: dict[str, list[float]] = {name: [] for name in parts}
        for _ in range(rounds):
            for name, work in parts.items():
                times[name].append(_clock(work))
        sizes = {OLD_SAVE: sum(f.stat().st_size for f in (Path(tmp) / "old").iterdir()),
                 NEW_SAVE: (Path(tmp) / "checkpoint" / "epoch-0001.npz").stat().st_size,
                 PHASE_SAVE: (Path(tmp) / "checkpoint" / "frozen.keras").stat().st_size}
    train_parts = [name for name in parts if "train" in name or "input" in name]
    times = {name: [v * (scale if name in train_parts else 1) for v in values]
             for name, values in times.items()}
    median = {name: statistics.median(v) for name, v in times.items()}
    before = median[TRAIN] + median[OLD_VAL[0]] + median[OLD_VAL[1]] + median[OLD_SAVE]
    after = median[TRAIN] + median[NEW_VAL] + median[NEW_SAVE]
    print(f"{model}: {len(x)} train images, {len(x_val)} val, batch {t.batch_size}, "
          f"{rounds} rounds, {timed} of {per_epoch} train batches timed (scaled to one "
          f"epoch)")
    print("| part | median s | all rounds s | share of the epoch before | written MB |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in times.items():
        size = f"{sizes[name] / 1e6:.1f}" if name in sizes else ""
        print(f"| {name} | {median[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} "
              f"| {median[name] / before:.0%} | {size} |")
    print(f"\nstage epoch before = train + both validation passes + whole checkpoint "
          f"= {before:.1f} s")
    validation = median[NEW_VAL] / sum(median[name] for name in OLD_VAL)
    print(f"stage epoch now = train + one validation pass + epoch checkpoint = {after:.1f} s "
          f"({after / before:.2f}x; validation {validation:.2f}x, "
          f"checkpoint {median[NEW_SAVE] / median[OLD_SAVE]:.2f}x)")


if __name__ == "__main__":
    app()
