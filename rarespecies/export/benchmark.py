"""Every way to run the exported model, on the same inputs, in one run (the benchmark stage).

Keras `model.predict`, Keras in a `tf.function`, onnxruntime fp32 and, when it was shipped,
onnxruntime INT8: batch-1 latency (p50, p95) and batch throughput after warm-up, each runtime
with the same thread count. Ratios compare runtimes measured in the same process, which stays
meaningful on a noisy host; the achieved GFLOP/s are set against this CPU's fp32 peak measured
in the same run. Figures go to `metrics/benchmark.json` (so `dvc metrics diff` shows speed
changes) and a table to `reports/benchmark.md`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from rarespecies.config.params import BenchmarkParams
from rarespecies.core.files import atomic_path, write_json
from rarespecies.export.export import load_inference_model
from rarespecies.export.flops import cpu_peak_gflops, model_gflops
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.session import open_session

LABELS = {"keras_predict": "Keras `model.predict`", "keras_tf_function": "Keras `tf.function`",
          "onnxruntime_fp32": "onnxruntime fp32", "onnxruntime_int8": "onnxruntime INT8"}


FP32_GOALS = {"fp32_no_slower_than_best_tf"}
INT8_GOALS = {"int8_p50_at_most_60ms", "int8_3x_faster_than_best_tf",
              "int8_20x_faster_than_predict"}


class RuntimeFigures(BaseModel):
    """One runtime's row of `metrics/benchmark.json`."""

    model_config = ConfigDict(extra="forbid")
    p50_ms: PositiveFloat
    p95_ms: PositiveFloat
    mean_ms: PositiveFloat
    throughput_ips: PositiveFloat
    speedup_vs_predict: PositiveFloat
    speedup_vs_best_tf: PositiveFloat
    peak_fraction: float = Field(ge=0, description="achieved GFLOP/s at batch over fp32 peak")

    @model_validator(mode="after")
    def _ordered(self) -> RuntimeFigures:
        if self.p95_ms < self.p50_ms:
            raise ValueError(f"p95 {self.p95_ms} ms is below p50 {self.p50_ms} ms")
        return self


class BenchmarkReport(BaseModel):
    """The schema of `metrics/benchmark.json`, checked before the stage writes it."""

    model_config = ConfigDict(extra="forbid")
    input_size: PositiveInt
    batch_size: PositiveInt
    threads: PositiveInt
    model_gflops: PositiveFloat
    cpu_peak_gflops: PositiveFloat
    keras_predict: RuntimeFigures
    keras_tf_function: RuntimeFigures
    onnxruntime_fp32: RuntimeFigures
    onnxruntime_int8: RuntimeFigures | None = None
    goals: dict[str, bool]

    @model_validator(mode="after")
    def _goals_match_rows(self) -> BenchmarkReport:
        expected = FP32_GOALS | (INT8_GOALS if self.onnxruntime_int8 else set())
        if set(self.goals) != expected:
            raise ValueError(f"goals {sorted(self.goals)} do not match the rows; "
                             f"expected {sorted(expected)}")
        return self


def measure(call: Callable[[np.ndarray], object], one: np.ndarray, batch: np.ndarray,
            params: BenchmarkParams, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Latency of single images and throughput of batches for one runtime.

    Args:
        call: runs the model on a uint8 batch and returns when the result is ready.
        one: a batch of one image.
        batch: a batch of `params.batch_size` images.
        params: warm-up and repetition counts.
        clock: seconds counter.

    Returns:
        p50/p95/mean latency in ms and throughput in images per second.
    """
    for _ in range(params.warmup):
        call(one)
        call(batch)
    latencies = []
    for _ in range(params.runs):
        start = clock()
        call(one)
        latencies.append((clock() - start) * 1000)
    start = clock()
    for _ in range(params.batch_runs):
        call(batch)
    elapsed = clock() - start
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p95_ms": round(float(np.percentile(latencies, 95)), 2),
            "mean_ms": round(float(np.mean(latencies)), 2),
            "throughput_ips": round(len(batch) * params.batch_runs / elapsed, 2)}


def _onnx_call(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    session = open_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def goals(results: dict, best_tf: float) -> dict:
    """The issue's speed goals, each true or false, from one run's figures and best TF p50."""
    checks = {"fp32_no_slower_than_best_tf": results["onnxruntime_fp32"]["p50_ms"] <= best_tf}
    int8 = results.get("onnxruntime_int8")
    if int8:
        checks |= {"int8_p50_at_most_60ms": int8["p50_ms"] <= 60,
                   "int8_3x_faster_than_best_tf": best_tf / int8["p50_ms"] >= 3,
                   "int8_20x_faster_than_predict":
                       results["keras_predict"]["p50_ms"] / int8["p50_ms"] >= 20}
    return checks


def benchmark(keras_model, onnx_path: Path, int8_path: Path | None, images: np.ndarray,
              params: BenchmarkParams) -> dict:
    """Time every runtime on the same real test images.

    Args:
        keras_model: the Keras inference model (uint8 input).
        onnx_path: its ONNX export.
        int8_path: the shipped INT8 variant, or None when it was not shipped.
        images: uint8 test images; repeated to fill a batch when there are fewer.
        params: benchmark settings.

    Returns:
        The figures per runtime, speed-ups over `model.predict` and the best TF path, the
        fraction of the CPU's fp32 peak achieved at batch size, and the goals.
    """
    import tensorflow as tf

    threads = params.threads or os.cpu_count() or 1
    batch = np.concatenate([images] * -(-params.batch_size // len(images)))[:params.batch_size]
    forward = tf.function(lambda x: keras_model(x, training=False), reduce_retracing=True)
    calls = {"keras_predict": lambda x: keras_model.predict(x, batch_size=len(x), verbose=0),
             "keras_tf_function": lambda x: forward(x).numpy(),
             "onnxruntime_fp32": _onnx_call(onnx_path, threads)}
    if int8_path is not None:
        calls["onnxruntime_int8"] = _onnx_call(int8_path, threads)
    # The peak is sampled before and after the runtimes and the higher kept, so a burst of
    # load from another process during one sample does not inflate every share of it.
    peak = cpu_peak_gflops()
    results = {name: measure(call, images[:1], batch, params) for name, call in calls.items()}
    gflops, peak = model_gflops(onnx_path), max(peak, cpu_peak_gflops())
    best_tf = min(results["keras_tf_function"]["p50_ms"], results["keras_predict"]["p50_ms"])
    for figures in results.values():
        figures["speedup_vs_predict"] = round(
            results["keras_predict"]["p50_ms"] / figures["p50_ms"], 2)
        figures["speedup_vs_best_tf"] = round(best_tf / figures["p50_ms"], 2)
        figures["peak_fraction"] = round(gflops * figures["throughput_ips"] / peak, 4)
    report = {"input_size": int(images.shape[1]), "batch_size": params.batch_size,
              "threads": threads, "model_gflops": round(gflops, 2),
              "cpu_peak_gflops": round(peak, 1), **results, "goals": goals(results, best_tf)}
    return BenchmarkReport.model_validate(report).model_dump(exclude_none=True)


def table(figures: dict) -> str:
    """The benchmark as a Markdown table, with the goals under it."""
    lines = [f"# Inference benchmark ({figures['input_size']} px, {figures['threads']} threads)",
             "",
             f"Model: {figures['model_gflops']} GFLOPs per image. CPU fp32 peak measured in the "
             f"same run (NumPy matrix product): {figures['cpu_peak_gflops']} GFLOP/s.", "",
             f"| runtime | batch-1 p50 | p95 | batch-{figures['batch_size']} throughput "
             "| vs `model.predict` | vs best TF | share of fp32 peak |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, label in LABELS.items():
        if name in figures:
            f = figures[name]
            lines.append(f"| {label} | {f['p50_ms']:.1f} ms | {f['p95_ms']:.1f} ms "
                         f"| {f['throughput_ips']:.1f} img/s | {f['speedup_vs_predict']:.1f}x "
                         f"| {f['speedup_vs_best_tf']:.2f}x | {f['peak_fraction']:.1%} |")
    if "onnxruntime_int8" not in figures:
        lines += ["", "No INT8 row: the quantized model did not pass its gate (see "
                  "`metrics/quantize.json`)."]
    lines += ["", "Goals:", *(f"- {name.replace('_', ' ')}: {'met' if ok else 'NOT met'}"
                              for name, ok in figures["goals"].items())]
    return "\n".join(lines) + "\n"


def run_benchmark(export_dir: Path, onnx_path: Path, int8_path: Path, params: BenchmarkParams,
                  metrics_path: Path, report_path: Path) -> dict:
    """Benchmark the exported model on the select stage's test images; write both outputs.

    Args:
        export_dir: the select stage's folder (the Keras model and the test images).
        onnx_path: the fp32 ONNX file.
        int8_path: the INT8 file, benchmarked when the quantize stage shipped it.
        params: the `benchmark` settings.
        metrics_path: the figures (JSON, a DVC metric).
        report_path: the Markdown table.

    Returns:
        The figures.
    """
    import tensorflow as tf

    # Every runtime gets the same thread count; TF takes it only before its first op.
    tf.config.threading.set_intra_op_parallelism_threads(params.threads or os.cpu_count() or 1)
    images, _ = load_split(export_dir, "test")
    figures = benchmark(load_inference_model(export_dir), onnx_path,
                        int8_path if int8_path.is_file() else None, np.asarray(images), params)
    write_json(metrics_path, figures)
    with atomic_path(report_path) as tmp:
        tmp.write_text(table(figures))
    return figures
