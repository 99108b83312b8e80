"""Which onnxruntime session settings run the exported model fastest on this machine.

Each variant changes one setting of `rarespecies.runtime.session.SESSION_SETTINGS` (the
settings `open_session`, hence the benchmark and `rarespecies predict`, use). All sessions are
open at once and timed in turns (round-robin), so a busy neighbour slows every variant alike;
read the ratios against "current", not the milliseconds.

    python benchmarks/session_settings.py export/model.onnx [--runs 15] [--batch-runs 2]

Columns: load time, batch-1 p50, batch-32 throughput, and each as a ratio to "current".
"Saved ORT model (basic)" is the graph onnxruntime optimized at the "basic" level and saved
(standard ONNX ops, portable), loaded with the current settings; "(all)" is the fully
optimized graph loaded with no optimisation at all: it holds com.microsoft ops and NCHWc
layouts for this CPU, which onnxruntime warns against shipping to other machines.
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
from rarespecies.runtime.session import SESSION_SETTINGS, describe_session, open_session

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
    "level all": (THREADS, {"graph_optimization_level": "all"}),
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


def measure(path: Path, images: np.ndarray, runs: int, batch_runs: int) -> dict[str, dict]:
    """Time every variant in turns.

    Args:
        path: the ONNX model.
        images: uint8 test images (repeated to fill a batch of 32).
        runs: timed batch-1 runs per variant.
        batch_runs: timed batch-32 runs per variant.

    Returns:
        Variant name -> {"load_s", "p50_ms", "img_s"}.
    """
    one = np.ascontiguousarray(images[:1])
    batch = np.ascontiguousarray(np.resize(images, (32, *images.shape[1:])))
    with tempfile.TemporaryDirectory() as tmp:
        variants = {name: (path, *spec) for name, spec in VARIANTS.items()}
        variants["saved ORT model (basic)"] = (_saved_model(path, Path(tmp), "basic"),
                                               THREADS, {})
        variants["saved ORT model (all), no load-time optimisation"] = (
            _saved_model(path, Path(tmp), "all"), THREADS, {"graph_optimization_level": "disable"})
        sessions, loads = {}, {}
        for name, (model, threads, settings) in variants.items():
            sessions[name], loads[name] = _load(model, threads, settings)
        times = {name: [] for name in sessions}
        rates = {name: [] for name in sessions}
        for session in sessions.values():  # warm-up: first runs allocate and tune
            session.run(None, {"pixels": one})
            session.run(None, {"pixels": batch})
        for _ in range(runs):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"pixels": one})
                times[name].append(time.perf_counter() - start)
        for _ in range(batch_runs):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"pixels": batch})
                rates[name].append(len(batch) / (time.perf_counter() - start))
    return {name: {"load_s": loads[name], "p50_ms": 1000 * float(np.median(times[name])),
                   "img_s": float(np.median(rates[name]))} for name in sessions}


def main(
    model: Annotated[Path, typer.Argument(help="ONNX file")] = Path("export/model.onnx"),
    runs: Annotated[int, typer.Option(help="timed batch-1 runs per variant")] = 15,
    batch_runs: Annotated[int, typer.Option(help="timed batch-32 runs per variant")] = 2,
) -> None:
    """Print a table of the session variants with ratios to the current settings."""
    images, _ = load_split(EXPORT_DIR, "test")
    results = measure(model, np.asarray(images), runs, batch_runs)
    base = results["current"]
    print(f"{model}, current settings: {describe_session(THREADS)}\n")
    print("| variant | load s | batch-1 p50 ms | vs current | batch-32 img/s | vs current |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in results.items():
        print(f"| {name} | {row['load_s']:.2f} | {row['p50_ms']:.1f} | "
              f"{base['p50_ms'] / row['p50_ms']:.2f}x | {row['img_s']:.2f} | "
              f"{row['img_s'] / base['img_s']:.2f}x |")
    print(f"\n(vs current > 1 is faster; current = {SESSION_SETTINGS})")


if __name__ == "__main__":
    typer.run(main)
