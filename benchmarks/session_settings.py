"""Which onnxruntime session settings run the exported model fastest on this machine.

Each variant changes one setting of `rarespecies.runtime.session.SESSION_SETTINGS` (the
settings `open_session`, hence the benchmark and `rarespecies predict`, use). Each variant's
runs alternate with a session of the current settings, so a busy neighbour slows both alike;
read the ratios against "current", not the milliseconds. ("current" against itself shows the
noise.)

    python benchmarks/session_settings.py export/model.onnx [--runs 15] [--batch-runs 2]
        [--other before.onnx] [--no-settings] [--chunks 1,2,4,8,32]

Columns: load time, batch-1 p50, batch-32 throughput, and each as a ratio to "current".
"Saved ORT model (basic)" is the graph onnxruntime optimized at the "basic" level and saved
(standard ONNX ops, portable), loaded with the current settings; "(all)" is the fully
optimized graph loaded with no optimisation at all: it holds com.microsoft ops and NCHWc
layouts for this CPU, which onnxruntime warns against shipping to other machines.

`--chunks` times 32 images run as calls of k images each (k from the list), the sizes taking
turns within each round, and prints images per second and the ratio to one call of 32: the
choice of `rarespecies.runtime.session.IMAGES_PER_RUN`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import typer

from rarespecies.config.paths import EXPORT_DIR
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.session import (
    SESSION_SETTINGS,
    describe_session,
    open_session,
    probabilities,
)

THREADS = 2  # the cores of the machines the README's figures come from

# name -> (intra-op threads, settings to change)
VARIANTS: dict[str, tuple[int, dict]] = {
    "current": (THREADS, {}),
    "1 intra-op thread": (1, {}),
    "parallel, 2 inter-op threads": (THREADS, {"execution_mode": "parallel",
                                               "inter_op_threads": 2}),
    "no spinning": (THREADS, {"allow_spinning": False}),
    "no memory arena": (THREADS, {"cpu_mem_arena": False}),
    "level basic": (THREADS, {"graph_optimization_level": "basic"}),
    "level extended": (THREADS, {"graph_optimization_level": "extended"}),
    "GELU approximated (tanh)": (THREADS, {"gelu_approximation": True}),
}


def _load(path: Path, threads: int, settings: dict) -> tuple[ort.InferenceSession, float]:
    start = time.perf_counter()
    session = open_session(path, threads, **settings)
    return session, time.perf_counter() - start


def _saved_model(path: Path, folder: Path, level: str) -> Path:
    """The model as onnxruntime optimized it at `level`, saved once."""
    saved = folder / f"{level}.onnx"
    open_session(path, THREADS, graph_optimization_level=level, optimized_model_path=saved)
    return saved


def _time(session: ort.InferenceSession, images: np.ndarray) -> float:
    start = time.perf_counter()
    session.run(None, {"pixels": images})
    return time.perf_counter() - start


def measure(path: Path, images: np.ndarray, runs: int, batch_runs: int,
            other: Path | None = None, settings_too: bool = True) -> dict[str, dict]:
    """Time every variant in turns with a session of the current settings.

    One variant is open at a time (a ConvNeXtBase session at batch 32 holds ~1 GB), next to
    the "current" session; their runs alternate, so each ratio compares two sessions timed
    in the same seconds.

    Args:
        path: the ONNX model.
        images: uint8 test images (repeated to fill a batch of 32).
        runs: timed batch-1 runs per variant.
        batch_runs: timed batch-32 runs per variant.
        other: another model file to time with the current settings (e.g. before a change).
        settings_too: time the setting variants (False: `other` only).

    Returns:
        Variant name -> {"load_s", "p50_ms", "img_s", "p50_ratio", "img_s_ratio"}, the ratios
        being current time / variant time (above 1: the variant is faster).
    """
    one = np.ascontiguousarray(images[:1])
    batch = np.ascontiguousarray(np.resize(images, (32, *images.shape[1:])))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {name: (path, *spec) for name, spec in VARIANTS.items()}
        variants["saved ORT model (basic)"] = (_saved_model(path, Path(tmp), "basic"),
                                               THREADS, {})
        variants["saved ORT model (all), no load-time optimisation"] = (
            _saved_model(path, Path(tmp), "all"), THREADS, {"graph_optimization_level": "disable"})
        if not settings_too:
            variants = {}
        if other is not None:
            variants = {f"other file: {other.name}": (other, THREADS, {}), **variants}
        current, _ = _load(path, THREADS, {})
        for inputs in (one, batch):  # warm-up: first runs allocate and tune
            current.run(None, {"pixels": inputs})
        for name, (model, threads, settings) in variants.items():
            session, load_s = _load(model, threads, settings)
            for inputs in (one, batch):
                session.run(None, {"pixels": inputs})
            pairs = [(_time(current, one), _time(session, one)) for _ in range(runs)]
            batch_pairs = [(_time(current, batch), _time(session, batch))
                           for _ in range(batch_runs)]
            del session
            base_ms, ms = (1000 * float(np.median(side)) for side in zip(*pairs, strict=True))
            base_s, batch_s = (float(np.median(side)) for side in zip(*batch_pairs, strict=True))
            results[name] = {"load_s": load_s, "p50_ms": ms, "img_s": len(batch) / batch_s,
                             "p50_ratio": base_ms / ms, "img_s_ratio": base_s / batch_s}
            row = results[name]
            print(f"| {name} | {row['load_s']:.2f} | {row['p50_ms']:.1f} | "
                  f"{row['p50_ratio']:.2f}x | {row['img_s']:.2f} | {row['img_s_ratio']:.2f}x |",
                  flush=True)
    return results


def measure_chunks(path: Path, images: np.ndarray, sizes: list[int], rounds: int
                   ) -> dict[int, float]:
    """Images per second on 32 images run `k` at a time, for each k in `sizes`, interleaved.

    Args:
        path: the ONNX model.
        images: uint8 test images (repeated to fill 32).
        sizes: images per call to compare.
        rounds: timed passes over all sizes (the median is kept).

    Returns:
        k -> median images per second.
    """
    batch = np.ascontiguousarray(np.resize(images, (32, *images.shape[1:])))
    session = open_session(path, THREADS)
    for k in sizes:  # warm-up: every call shape allocates once
        probabilities(session, batch, k)
    seconds: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range(rounds):
        for k in sizes:
            start = time.perf_counter()
            probabilities(session, batch, k)
            seconds[k].append(time.perf_counter() - start)
    return {k: len(batch) / float(np.median(s)) for k, s in seconds.items()}


def main(
    model: Annotated[Path, typer.Argument(help="ONNX file")] = Path("export/model.onnx"),
    runs: Annotated[int, typer.Option(help="timed batch-1 runs per variant")] = 15,
    batch_runs: Annotated[int, typer.Option(help="timed batch-32 runs per variant")] = 2,
    other: Annotated[Path | None, typer.Option(help="another ONNX file to compare, e.g. the "
                                                    "unoptimized export")] = None,
    settings: Annotated[bool, typer.Option(help="time the setting variants too")] = True,
    chunks: Annotated[str, typer.Option(help="compare images per call instead, e.g. "
                                             "1,2,4,8,32")] = "",
) -> None:
    """Print a table of the session variants with ratios to the current settings."""
    images, _ = load_split(EXPORT_DIR, "test")
    if chunks:
        rates = measure_chunks(model, np.asarray(images), [int(k) for k in chunks.split(",")],
                               rounds=max(batch_runs, 3))
        print(f"{model}: 32 images, k per call\n\n| k | img/s | vs one call of 32 |")
        print("| --- | --- | --- |")
        for k, rate in rates.items():
            print(f"| {k} | {rate:.2f} | {rate / rates.get(32, rate):.2f}x |")
        return
    print(f"{model}, current settings: {describe_session(THREADS)}\n")
    print("| variant | load s | batch-1 p50 ms | vs current | batch-32 img/s | vs current |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    measure(model, np.asarray(images), runs, batch_runs, other, settings)
    print(f"\n(vs current > 1 is faster; current = {SESSION_SETTINGS})")


if __name__ == "__main__":
    typer.run(main)
