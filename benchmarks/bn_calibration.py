"""What measuring BatchNorm statistics does to random (`weights: null`) backbones, side by side.

For each model, in one run: the backbone's features on the sample (`artifacts/arrays/<backbone>`)
with `bn_calibration_images: 0` (a fresh layer's mean 0, var 1, as before) and with the value
of params.yaml; per-feature spread of the test features across images; then the model's head
trained on those cached features with the model's recipe from params.yaml, except that
augmentation and fine-tuning are off (they need end-to-end training, minutes per epoch), and its
test macro F1 against the majority-class baseline. A proxy for `dvc repro train@<model>`:
same backbone, head, optimizer, epochs and early stopping, without the augmented views.

    python benchmarks/bn_calibration.py [--models densenet121,inception_resnet_v2]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    models: Annotated[str, typer.Option(help="comma-separated end-to-end models")] =
        "densenet121,inception_resnet_v2",
) -> None:
    """Print, per model and calibration setting, feature spread and test macro F1."""
    import numpy as np

    from rarespecies.config import paths
    from rarespecies.config.params import Augmentation, load_params
    from rarespecies.modeling.evaluate import evaluate
    from rarespecies.modeling.features import compute_features
    from rarespecies.modeling.leaderboard import majority_baseline
    from rarespecies.modeling.training import train

    params = load_params()
    labels = json.loads(paths.LABELS.read_text())
    base = majority_baseline(paths.SPLIT_TABLE)
    print(f"majority-class baseline: test macro F1 {base['macro_f1']:.4f}")
    print("| model | bn_calibration_images | features s | feature std across test images "
          "| epochs (best) | val macro F1 | test macro F1 | beats baseline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in models.split(","):
        settings, backbone = params.model(name), params.backbone_of(name)
        t = settings.training
        head_only = settings.model_copy(update={"training": t.model_copy(update={
            "augmentation": Augmentation(),
            "fine_tune": t.fine_tune.model_copy(update={"layers": 0})})})
        for count in (0, backbone.bn_calibration_images):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "features"
                start = time.perf_counter()
                compute_features(paths.arrays_dir(settings.backbone), out,
                                 backbone.model_copy(update={"bn_calibration_images": count}))
                seconds = time.perf_counter() - start
                test = np.load(out / "test_x.npy")
                spread = float(test.reshape(len(test), -1).std(axis=0).mean())
                result = train(head_only, backbone, out, len(labels), Path(tmp) / "m.keras",
                               Path(tmp) / "live", Path(tmp) / "checkpoint")
                metrics = evaluate(Path(tmp) / "m.keras", out, labels, Path(tmp) / "m.json",
                                   Path(tmp) / "f.csv", Path(tmp) / "c.csv")
            f1 = metrics["macro_f1"]
            print(f"| {name} | {count} | {seconds:.0f} | {spread:.4f} "
                  f"| {result['epochs']} ({result['best_epoch']}) "
                  f"| {result['val_macro_f1']:.4f} | {f1:.4f} "
                  f"| {'yes' if f1 > base['macro_f1'] else 'no'} |", flush=True)


if __name__ == "__main__":
    app()
