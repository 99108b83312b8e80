"""Time and peak memory of feature extraction and training per model, projected to full scale.

Reads the sample's arrays from `dvc repro` (`artifacts/arrays/<backbone>`). Each measurement
runs in a fresh process, so its peak memory is its own, at two dataset sizes: the train split
and the train split repeated `--grow` times (written as a memory map, like the stages do).
Times scale linearly to the Rare Species dataset's 11,983 images; the memory difference
between the two sizes shows whether memory grows with the data. Two memory figures: peak RSS,
which counts the memory-mapped file pages the kernel can drop at will, and peak anonymous
memory (heap, tensors), which it cannot.

    python benchmarks/training_cost.py [--models a,b] [--grow 2] [--images 11983]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)
FULL_SCALE = 11_983


class AnonPeak:
    """Samples the process's anonymous resident memory (RssAnon) every 20 ms; keeps the peak."""

    def __init__(self) -> None:
        self.peak_kb, self._stop = 0, threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def stop(self) -> float:
        self._stop.set()
        return self.peak_kb / 1024


def _grown(x, y, times: int, folder: Path):
    """The train split repeated `times` times, as a memory map written chunk by chunk."""
    import numpy as np

    if times == 1:
        return x, y
    out = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=x.dtype,
                                    shape=(len(x) * times, *x.shape[1:]))
    for i in range(times):
        out[i * len(x):(i + 1) * len(x)] = x
    out.flush()
    return np.load(folder / "x.npy", mmap_mode="r"), np.tile(y, times)


def _timed_epoch(model, data) -> float:
    """Seconds of one epoch, after a one-batch warm-up that builds and traces the step."""
    model.fit(data.take(1), epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    return time.perf_counter() - start


def one(model_name: str, times: int) -> dict:
    """Measure one model on the train split repeated `times` times (in this process)."""
    import numpy as np

    from rarespecies.config.params import load_params
    from rarespecies.modeling.datasets import batches, load_split
    from rarespecies.modeling.features import extract, load_backbone
    from rarespecies.modeling.models import BACKBONE, build_optimizer
    from rarespecies.modeling.training import build_model, seed_everything

    memory = AnonPeak()
    params = load_params()
    settings, backbone = params.model(model_name), params.backbone_of(model_name)
    t = settings.training
    seed_everything(t.seed)
    with tempfile.TemporaryDirectory() as tmp:
        x, y = load_split(Path("artifacts/arrays") / settings.backbone, "train")
        x, y = _grown(x, y.astype(np.int32), times, Path(tmp))
        result = {"model": model_name, "images": len(x),
                  "inputs": "arrays" if settings.end_to_end else "features",
                  "array_mb_per_image": x[0].nbytes / 2**20}
        if not settings.end_to_end:
            net = load_backbone(backbone)
            out = np.lib.format.open_memmap(Path(tmp) / "features.npy", mode="w+",
                                            dtype=np.float32,
                                            shape=(len(x), *net.output_shape[1:]))
            extract(net, x[: backbone.batch_size], out[: backbone.batch_size],
                    backbone.batch_size, progress=False)  # trace outside the clock
            start = time.perf_counter()
            extract(net, x, out, backbone.batch_size, progress=False)
            result["features_s"] = time.perf_counter() - start
            result["features_mb_per_image"] = out[0].nbytes / 2**20
            x = out
        model = build_model(settings, backbone, x, int(y.max()) + 1)
        model.compile(optimizer=build_optimizer(t.optimizer, t.learning_rate, t.weight_decay),
                      loss="sparse_categorical_crossentropy")
        data = batches(x, y, t.batch_size, shuffle=True, seed=t.seed)
        result["epoch_s"] = _timed_epoch(model, data)
        ft = t.fine_tune
        if ft.layers:  # backpropagating into the backbone costs more per epoch
            from rarespecies.modeling.backbones import unfreeze_last

            unfreeze_last(model.get_layer(BACKBONE), ft.layers)
            model.compile(optimizer=build_optimizer(ft.optimizer, ft.learning_rate,
                                                    ft.weight_decay),
                          loss="sparse_categorical_crossentropy")
            result["fine_tune_epoch_s"] = _timed_epoch(model, data)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_anon_mb"] = memory.stop()
    return result


def _measure(model: str, times: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", f"{model}:{times}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise typer.Exit(f"{model} at {times}x failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _projection(small: dict, large: dict, images: int, epochs: int, fine_tune_epochs: int,
                ) -> dict:
    """Per-model figures at `images`: times scale per image, memory by its measured growth."""
    n = large["images"]
    growth = (large["peak_anon_mb"] - small["peak_anon_mb"]) / (n - small["images"])
    row = {"model": large["model"], "inputs": large["inputs"],
           "features_min": large.get("features_s", 0.0) / n * images / 60,
           "epoch_min": large["epoch_s"] / n * images / 60,
           "fine_tune_epoch_min": large.get("fine_tune_epoch_s", 0.0) / n * images / 60,
           "anon_mb": [small["peak_anon_mb"], large["peak_anon_mb"]],
           "rss_mb": [small["peak_rss_mb"], large["peak_rss_mb"]],
           "anon_mb_per_1000_images": growth * 1000,
           "projected_anon_mb": large["peak_anon_mb"] + growth * (images - n),
           "arrays_gb": large["array_mb_per_image"] * images / 1024,
           "features_gb": large.get("features_mb_per_image", 0.0) * images / 1024}
    row["max_total_min"] = (row["features_min"] + epochs * row["epoch_min"]
                            + fine_tune_epochs * row["fine_tune_epoch_min"])
    return row


@app.command()
def main(
    models: Annotated[str, typer.Option(help="comma-separated models; default all")] = "",
    grow: Annotated[int, typer.Option(min=2, help="the larger size, in train splits")] = 2,
    images: Annotated[int, typer.Option(help="dataset size to project to")] = FULL_SCALE,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write here")] = None,
    child: Annotated[str, typer.Option(hidden=True, help="MODEL:TIMES, fresh process")] = "",
) -> None:
    """Measure each model at 1x and `grow`x the train split; print the full-scale projection."""
    from rarespecies.config.params import load_params

    if child:
        name, times = child.rsplit(":", 1)
        print(json.dumps(one(name, int(times))))
        return
    params = load_params()
    names = models.split(",") if models else list(params.models)
    rows = []
    for name in names:
        print(f"measuring {name} ...", flush=True)
        t = params.model(name).training
        rows.append(_projection(_measure(name, 1), _measure(name, grow), images, t.epochs,
                                t.fine_tune.epochs if t.fine_tune.layers else 0))
    print(f"\nProjected to {images:,} images (times per image from {grow}x the sample's "
          "train split):")
    print("| model | trained on | features | one epoch | fine-tune epoch | at most, all epochs "
          "| peak anon MB 1x → 2x | growth /1000 img | peak RSS MB 1x → 2x | on disk |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        disk = f"arrays {r['arrays_gb']:.1f} GB" + (
            f", features {r['features_gb']:.2f} GB" if r["features_gb"] else "")
        print(f"| {r['model']} | {r['inputs']} | {r['features_min']:.1f} min "
              f"| {r['epoch_min']:.1f} min | {r['fine_tune_epoch_min']:.1f} min "
              f"| {r['max_total_min']:.0f} min "
              f"| {r['anon_mb'][0]:.0f} → {r['anon_mb'][1]:.0f} "
              f"| {r['anon_mb_per_1000_images']:+.0f} MB "
              f"| {r['rss_mb'][0]:.0f} → {r['rss_mb'][1]:.0f} | {disk} |")
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    app()
