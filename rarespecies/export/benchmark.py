"""Every way to run the exported model, on the same inputs, in one run (the benchmark stage).

Keras `model.predict`, Keras in a `tf.function`, onnxruntime fp32 and, when it was shipped,
onnxruntime INT8: batch-1 latency (p50, p95) and batch throughput after warm-up, each runtime
with the same thread count. Ratios compare runtimes measured in the same process, which stays
meaningful on a noisy host. Each runtime's achieved arithmetic rate is set against its own
ceiling measured in the same run: the fp32 rows against the CPU's fp32 matrix-product peak, the
INT8 row against onnxruntime's integer matrix-product peak (the VNNI units). Figures go to
`metrics/benchmark.json` (so `dvc metrics diff` shows speed changes) and a table, the goals
and the session settings to `reports/benchmark.md`.
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
from rarespecies.export.flops import cpu_int8_peak_gops, cpu_peak_gflops, model_gflops
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.session import describe_session, open_session

LABELS = {"keras_predict": "Keras `model.predict`", "keras_tf_function": "Keras `tf.function`",
          "onnxruntime_fp32": "onnxruntime fp32", "onnxruntime_int8": "onnxruntime INT8"}


# Issue 16's goals (batch-1 p50 on the sample, the benchmark's thread count).
FP32_GOALS = {"fp32_p50_at_most_115ms", "fp32_at_least_80pct_of_fp32_peak",
              "fp32_batch_throughput_1_25x_best_tf"}
INT8_GOALS = {"int8_p50_at_most_45ms", "int8_4x_faster_than_best_tf"}


class RuntimeFigures(BaseModel):
    """One runtime's row of `metrics/benchmark.json`."""

    model_config = ConfigDict(extra="forbid")
    p50_ms: PositiveFloat
    p95_ms: PositiveFloat
    mean_ms: PositiveFloat
    throughput_ips: PositiveFloat
    speedup_vs_predict: PositiveFloat
    speedup_vs_best_tf: PositiveFloat
    peak_fraction: float = Field(ge=0, description="achieved rate at batch over the peak of "
                                 "its own arithmetic (fp32 rows: fp32 peak; INT8: INT8 peak)")

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
    cpu_int8_peak_gops: PositiveFloat | None = None
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
        if (self.cpu_int8_peak_gops is None) != (self.onnxruntime_int8 is None):
            raise ValueError("cpu_int8_peak_gops goes with the onnxruntime_int8 row, and only "
                             "with it")
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
    """Issue 16's speed goals, each true or false, from one run's figures.

    Args:
        results: the rows, with `peak_fraction` filled in.
        best_tf: the lower batch-1 p50 of the two Keras paths.

    Returns:
        Goal name to met or not.
    """
    fp32 = results["onnxruntime_fp32"]
    best_tf_ips = max(results["keras_tf_function"]["throughput_ips"],
                      results["keras_predict"]["throughput_ips"])
    checks = {"fp32_p50_at_most_115ms": fp32["p50_ms"] <= 115,
              "fp32_at_least_80pct_of_fp32_peak": fp32["peak_fraction"] >= 0.8,
              "fp32_batch_throughput_1_25x_best_tf": fp32["throughput_ips"] >= 1.25 * best_tf_ips}
    int8 = results.get("onnxruntime_int8")
    if int8:
        checks |= {"int8_p50_at_most_45ms": int8["p50_ms"] <= 45,
                   "int8_4x_faster_than_best_tf": best_tf / int8["p50_ms"] >= 4}
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
        fraction of its own peak (fp32 or INT8) each achieves at batch size, and the goals.
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
    # Peaks are sampled before and after the runtimes and the higher kept, so a burst of
    # load from another process during one sample does not inflate every share of them.
    def peaks() -> dict[str, float]:
        found = {"fp32": cpu_peak_gflops()}
        if int8_path is not None:  # the same thread count as the INT8 session
            found["int8"] = cpu_int8_peak_gops(threads=threads)
        return found

    before = peaks()
    results = {name: measure(call, images[:1], batch, params) for name, call in calls.items()}
    peak = {kind: max(value, before[kind]) for kind, value in peaks().items()}
    gflops = model_gflops(onnx_path)  # the INT8 model does the same multiply-adds, in INT8
    best_tf = min(results["keras_tf_function"]["p50_ms"], results["keras_predict"]["p50_ms"])
    for name, figures in results.items():
        figures["speedup_vs_predict"] = round(
            results["keras_predict"]["p50_ms"] / figures["p50_ms"], 2)
        figures["speedup_vs_best_tf"] = round(best_tf / figures["p50_ms"], 2)
        own = peak["int8" if name == "onnxruntime_int8" else "fp32"]
        figures["peak_fraction"] = round(gflops * figures["throughput_ips"] / own, 4)
    report = {"input_size": int(images.shape[1]), "batch_size": params.batch_size,
              "threads": threads, "model_gflops": round(gflops, 2),
              "cpu_peak_gflops": round(peak["fp32"], 1),
              "cpu_int8_peak_gops": round(peak["int8"], 1) if "int8" in peak else None,
              **results, "goals": goals(results, best_tf)}
    return BenchmarkReport.model_validate(report).model_dump(exclude_none=True)


def table(figures: dict, settings: dict[str, str | int | bool] | None = None) -> str:
    """The benchmark as a Markdown table, with the goals and the session settings under it."""
    int8_peak = ""
    if figures.get("cpu_int8_peak_gops"):
        int8_peak = (f" INT8 peak (onnxruntime MatMulInteger, uint8 x int8, same threads): "
                     f"{figures['cpu_int8_peak_gops']} GOP/s.")
    lines = [f"# Inference benchmark ({figures['input_size']} px, {figures['threads']} threads)",
             "",
             f"Model: {figures['model_gflops']} GFLOPs per image. Peaks measured in the same "
             f"run: fp32 (NumPy matrix product) {figures['cpu_peak_gflops']} GFLOP/s."
             f"{int8_peak} Each row's share is of its own peak (fp32 rows: fp32; INT8: INT8).",
             "",
             f"| runtime | batch-1 p50 | p95 | batch-{figures['batch_size']} throughput "
             "| vs `model.predict` | vs best TF | share of own peak |",
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
    if settings:
        lines += ["", "onnxruntime session settings: "
                  + ", ".join(f"{key} {value}" for key, value in settings.items()) + "."]
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
        tmp.write_text(table(figures, describe_session(figures["threads"])))
    return figures
