"""Time and peak memory of feature extraction and training per backbone, projected to full scale.

Each measurement runs in a fresh process (peak RSS is per process) on the sample's arrays
from `dvc repro`, at two dataset sizes: half of the train split and all of it. Times scale to
the Rare Species dataset's 11,983 images; the memory growth between the two sizes shows
whether memory stays flat as data grows (only the cached features, on disk, should grow).

    python benchmarks/training_cost.py [--images 11983] [--epochs 1]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import typer

app = typer.Typer(add_completion=False)
FULL_SCALE = 11_983


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(model: str, fraction: float, epochs: int) -> None:
    """Child process: measure one model at one dataset fraction, print JSON."""
    import numpy as np

    from stages.data import batches, load_split
    from stages.features import extract, load_backbone
    from stages.params import load_params
    from stages.train import build_model, seed_everything

    params = load_params()
    settings, backbone = params.model(model), params.backbone_of(model)
    arrays = Path("artifacts/arrays") / settings.backbone
    x, y = load_split(arrays, "train")
    n = max(1, int(len(x) * fraction))
    x, y = x[:n], y[:n]
    seed_everything(settings.training.seed)
    result = {"model": model, "images": n, "inputs": "arrays" if settings.end_to_end
              else "features"}
    if not settings.end_to_end:
        net = load_backbone(backbone)
        out = np.lib.format.open_memmap(Path("/tmp") / f"bench_{model}.npy", mode="w+",
                                        dtype=np.float32, shape=(n, *net.output_shape[1:]))
        start = time.perf_counter()
        extract(net, x, out, backbone.batch_size, progress=False)
        result["features_s_per_image"] = (time.perf_counter() - start) / n
        result["features_mb_per_image"] = out.nbytes / n / 2**20
        x = out
    labels = len(np.unique(y))
    model_ = build_model(settings, backbone, x, int(y.max()) + 1)
    model_.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    data = batches(x, y.astype(np.int32), settings.training.batch_size, shuffle=True)
    model_.fit(data.take(1), epochs=1, verbose=0)  # compile and warm up outside the clock
    start = time.perf_counter()
    model_.fit(data, epochs=epochs, verbose=0)
    result["train_s_per_image_epoch"] = (time.perf_counter() - start) / n / epochs
    if settings.training.fine_tune.layers:  # the fine-tuning phase backpropagates further
        from stages.backbones import unfreeze_last
        from stages.models import BACKBONE

        unfreeze_last(model_.get_layer(BACKBONE), settings.training.fine_tune.layers)
        model_.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model_.fit(data.take(1), epochs=1, verbose=0)
        start = time.perf_counter()
        model_.fit(data, epochs=epochs, verbose=0)
        result["fine_tune_s_per_image_epoch"] = (time.perf_counter() - start) / n / epochs
    result["classes"] = labels
    result["peak_mb"] = round(_peak_mb(), 1)
    print(json.dumps(result))


def _measure(model: str, fraction: float, epochs: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", f"{model}:{fraction}",
                           "--epochs", str(epochs)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{model}: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@app.command()
def main(images: int = typer.Option(FULL_SCALE, help="dataset size to project to"),
         epochs: int = typer.Option(1, help="timed training epochs"),
         models: str = typer.Option("", help="comma-separated models; default all"),
         child: str = typer.Option("", hidden=True, help="MODEL:FRACTION, in a fresh process"),
         ) -> None:
    """Measure every model of params.yaml at half and full sample size, print the projection."""
    from stages.params import load_params

    if child:
        name, fraction = child.rsplit(":", 1)
        one(name, float(fraction), epochs)
        return
    names = models.split(",") if models else list(load_params().models)
    print(f"{'model':22} {'inputs':8} {'features/img':>12} {'epoch/img':>10} "
          f"{'peak MB half → all':>19} {'projected: features':>20} {'per epoch':>10}")
    for name in names:
        half, full = _measure(name, 0.5, epochs), _measure(name, 1.0, epochs)
        feat = full.get("features_s_per_image", 0.0)
        epoch = full["train_s_per_image_epoch"]
        tuned = full.get("fine_tune_s_per_image_epoch")
        disk = full.get("features_mb_per_image", 0.0) * images / 1024
        print(f"{name:22} {full['inputs']:8} {feat * 1000:10.1f}ms {epoch * 1000:8.1f}ms "
              f"{half['peak_mb']:9.0f} → {full['peak_mb']:6.0f} "
              f"{feat * images / 60:15.1f} min {epoch * images / 60:7.1f} min"
              + (f"  (features on disk {disk:.2f} GB)" if disk else "")
              + (f"  (fine-tuning {tuned * images / 60:.1f} min per epoch)" if tuned else ""))
    print(f"Projected to {images} images from the train split of the sample "
          f"({full['images']} images); peak memory compared between half and all of it.")


if __name__ == "__main__":
    app()
