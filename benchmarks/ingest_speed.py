"""Ingest decode speed: draft-mode decoding (and a process per core) against a naive decode.

The naive way opens every photo at full size, converts it to RGB and then shrinks it; ingest
asks libjpeg to decode large JPEGs at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) and spreads
files over the cores. Both paths run in this one process on the same files, and the ratios are
printed, on all images and on the large ones only.

    python benchmarks/ingest_speed.py [--data ../shared/data/eol-real-sample] [--repeat 3]
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import typer
from PIL import Image, ImageOps

from rarespecies.runtime.images import IMAGE_SUFFIXES, open_rgb

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/eol-real-sample"
app = typer.Typer(add_completion=False)


def naive(path: Path, max_side: int) -> tuple[int, int]:
    """Full-size decode, then orientation, RGB and the same LANCZOS thumbnail as ingest."""
    with Image.open(path) as img:
        img.load()
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb.size


def fast(path: Path, max_side: int) -> tuple[int, int]:
    """Ingest's decode."""
    return open_rgb(path, max_side, max_pixels=10**9)[0].size


def rate(files: list[Path], decode, max_side: int, repeat: int, workers: int = 1) -> float:
    """Best images per second over `repeat` passes (a pool is started once, as ingest does)."""
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    run = pool.map if pool else map
    list(run(decode, files[:workers], [max_side] * workers))  # start the workers
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        list(run(decode, files, [max_side] * len(files)))
        best = min(best, time.perf_counter() - start)
    if pool:
        pool.shutdown()
    return len(files) / best


@app.command()
def main(data: Path = DEFAULT_DATA, max_side: int = 512, repeat: int = 3,
         large_megapixels: float = 4.0) -> None:
    """Print images/s of the naive decode, ingest's decode and ingest's decode on every core."""
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise typer.BadParameter(f"no images under {data}", param_hint="--data")
    sizes = {p: Image.open(p).size for p in files}
    large = [p for p in files if sizes[p][0] * sizes[p][1] >= large_megapixels * 1e6]
    cores = os.cpu_count() or 1
    print(f"{len(files)} images under {data} ({len(large)} of at least {large_megapixels:g} MP), "
          f"max_side {max_side}, best of {repeat}, {cores} cores")
    print(f"{'images':<8} {'naive img/s':>12} {'draft img/s':>12} {'draft x cores':>14} "
          f"{'draft/naive':>12} {'all cores/naive':>16}")
    for name, subset in (("all", files), ("large", large)):
        if not subset:
            continue
        slow = rate(subset, naive, max_side, repeat)
        one = rate(subset, fast, max_side, repeat)
        every = rate(subset, fast, max_side, repeat, workers=cores)
        print(f"{name:<8} {slow:>12.1f} {one:>12.1f} {every:>14.1f} {one / slow:>11.1f}x "
              f"{every / slow:>15.1f}x")


if __name__ == "__main__":
    app()
