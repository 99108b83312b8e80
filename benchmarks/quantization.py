"""Which INT8 quantization to ship: every candidate against fp32, in one run, on the same inputs.

Quantizes an fp32 ONNX model (default `export/model.onnx`, from `dvc repro`) several ways with
onnxruntime's tools, then measures each on the test split of `artifacts/export`: batch-1
latency (p50 and min, the candidates and fp32 timed in turn, round after round, so a burst of
load from another process hits all of them alike), batch throughput, macro F1 and top-1
agreement with fp32. Static calibration uses the calibration split (train images), as the
quantize stage does. The `quantize` params default to the winner.

    python benchmarks/quantization.py [--model export/model.onnx] [--rounds 15] [--only 0,3]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from rarespecies.config.params import BenchmarkParams, QuantizeParams
from rarespecies.config.paths import EXPORT_DIR, ONNX_FILE
from rarespecies.export.quantize import compare, describe, quantize_model
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.session import open_session

CANDIDATES = (
    QuantizeParams(method="dynamic", op_types=["MatMul"]),
    QuantizeParams(method="dynamic", op_types=["MatMul"], per_channel=True),
    QuantizeParams(method="static", op_types=["Conv", "MatMul"], per_channel=True),
    QuantizeParams(method="static", op_types=["MatMul"], per_channel=True),
    QuantizeParams(method="static", op_types=["Conv", "MatMul"], per_channel=True,
                   activation_type="int8"),
    QuantizeParams(method="mixed", static_op_types=["Conv"], op_types=["MatMul"]),
    QuantizeParams(method="mixed", static_op_types=["Conv"], op_types=["MatMul"],
                   per_channel=True),
    QuantizeParams(method="mixed", static_op_types=["Conv"], op_types=["MatMul"],
                   per_channel=True, calibration="percentile"),
)


def interleaved_p50(paths: list[Path], image: np.ndarray, rounds: int,
                    threads: int) -> list[tuple[float, float]]:
    """Batch-1 latency of each model, timed in turn within every round.

    Args:
        paths: ONNX files, each opened with the project's session settings.
        image: a batch of one uint8 image.
        rounds: timed calls per model (after two warm-up calls each).
        threads: intra-op threads (0 = one per core).

    Returns:
        (p50 ms, min ms) per path, in order.
    """
    sessions = [open_session(path, threads) for path in paths]
    calls = [lambda s=s: s.run(None, {s.get_inputs()[0].name: image}) for s in sessions]
    for call in calls * 2:
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for call, spent in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            spent.append((time.perf_counter() - start) * 1000)
    return [(float(np.median(t)), float(np.min(t))) for t in times]


def throughput(path: Path, batch: np.ndarray, threads: int) -> float:
    """Images per second of `path` on `batch`, after one warm-up call."""
    session = open_session(path, threads)
    name = session.get_inputs()[0].name
    session.run(None, {name: batch})
    start = time.perf_counter()
    session.run(None, {name: batch})
    return len(batch) / (time.perf_counter() - start)


def main(
    model: Annotated[Path, typer.Option(help="fp32 ONNX model to quantize")] = ONNX_FILE,
    rounds: Annotated[int, typer.Option(help="timed batch-1 calls per model")] = 15,
    threads: Annotated[int, typer.Option(help="intra-op threads, 0 = one per core")] = 2,
    only: Annotated[str, typer.Option(help="comma-separated candidate numbers; all if empty")]
    = "",
) -> None:
    """Print one row per candidate: size, speed, macro F1 and agreement against fp32."""
    images, labels = load_split(EXPORT_DIR, "test")
    images = np.asarray(images)
    calibration = np.asarray(load_split(EXPORT_DIR, "calibration")[0])
    batch = np.concatenate([images] * -(-BenchmarkParams().batch_size // len(images)))
    batch = batch[:BenchmarkParams().batch_size]
    chosen = [int(i) for i in only.split(",") if i] or range(len(CANDIDATES))
    with tempfile.TemporaryDirectory() as tmp:
        made, figures = {}, {}
        for i in chosen:
            params = CANDIDATES[i]
            start = time.perf_counter()
            made[i] = quantize_model(model, Path(tmp) / f"{i}.onnx", params,
                                     calibration[:params.calibration_images])
            figures[i] = {"seconds": time.perf_counter() - start}
            figures[i] |= compare(model, made[i], images, labels, params.max_f1_drop)
        latency = interleaved_p50([model, *made.values()], images[:1], rounds, threads)
        fp32_ips = throughput(model, batch, threads)
        print(f"{model}: fp32 batch-1 p50 {latency[0][0]:.1f} ms (min {latency[0][1]:.1f}), "
              f"batch-{len(batch)} {fp32_ips:.2f} img/s, macro F1 "
              f"{next(iter(figures.values()))['fp32_macro_f1']:.4f} on {len(images)} test "
              f"images; {rounds} interleaved rounds, {threads or 'all'} threads\n")
        print("| # | quantization | quantize s | MB | p50 ms | min ms | vs fp32 (p50) | img/s "
              "| macro F1 drop | top-1 agreement | gate |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for (i, path), (p50, fastest) in zip(made.items(), latency[1:], strict=True):
            f = figures[i]
            print(f"| {i} | {describe(CANDIDATES[i])} | {f['seconds']:.0f} | {f['int8_mb']:.0f} "
                  f"| {p50:.1f} | {fastest:.1f} | {latency[0][0] / p50:.2f}x "
                  f"| {throughput(path, batch, threads):.2f} | {f['macro_f1_drop'] * 100:+.2f} pt "
                  f"| {f['top1_agreement']:.1%} | {'passes' if f['shipped'] else 'fails'} |",
                  flush=True)


if __name__ == "__main__":
    typer.run(main)
