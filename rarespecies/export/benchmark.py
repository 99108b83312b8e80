"""Every way to run the exported model, on the same inputs (the benchmark stage).

onnxruntime fp32 and, when it was shipped, INT8 are timed here; Keras `model.predict` and
Keras in a `tf.function` come from the tf_baseline stage, measured once per architecture with
the same settings (`rarespecies.export.baseline`). Each runtime's batch-1 calls are timed until
the p50's 95% interval is `benchmark.ci_width` narrow (or `max_runs` calls), and the interval
is reported with it; batches go through `runtime.session.probabilities`, the way
`rarespecies predict` runs them. Each runtime's achieved arithmetic rate is set against its
own ceiling measured in this run: the fp32 rows against the CPU's fp32 matrix-product peak,
the INT8 row against onnxruntime's integer matrix-product peak (the VNNI units).

Outputs: `metrics/benchmark.json` holds what experiments are compared on (batch-1 p50 per
runtime, the goals met or not); `reports/benchmark.json` every figure with its interval;
`reports/benchmark.md` the table, the goals and the session settings.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from tqdm import tqdm

from rarespecies.config.params import BenchmarkParams
from rarespecies.core.files import atomic_path, read_json, write_json, write_metrics
from rarespecies.core.progress import bar, phase, say
from rarespecies.export.flops import cpu_int8_peak_gops, cpu_peak_gflops, model_gflops
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.session import (
    IMAGES_PER_RUN,
    describe_session,
    open_session,
    probabilities,
)
from rarespecies.runtime.timing import interval_width, median_interval, time_until_tight

LABELS = {"keras_predict": "Keras `model.predict`", "keras_tf_function": "Keras `tf.function`",
          "onnxruntime_fp32": "onnxruntime fp32", "onnxruntime_int8": "onnxruntime INT8"}
# Column names in metrics/benchmark.json: short, so `dvc exp show` keeps them readable.
SHORT = {"keras_predict": "predict", "keras_tf_function": "tf_function",
         "onnxruntime_fp32": "ort_fp32", "onnxruntime_int8": "ort_int8"}
TF_ROWS = ("keras_predict", "keras_tf_function")
# Each peak sample keeps the fastest of the 2048^3 products in this window (about 55 ms each in
# fp32, 15 ms in INT8 on the sample's machine): 4 or more, sampled before and after the
# runtimes, is enough for the fastest to be an undisturbed one (0.25 s and 0.5 s windows gave
# the same spread of peaks, 312-331 GFLOP/s and 1146-1237 GOP/s, over 8 samples each).
PEAK_SECONDS = 0.25


class BenchmarkError(ValueError):
    """The cached TensorFlow baseline does not match this benchmark's settings or model."""


# Issue 16's goals (batch-1 p50 on the sample, the benchmark's thread count).
FP32_GOALS = {"fp32_p50_at_most_115ms", "fp32_at_least_80pct_of_fp32_peak",
              "fp32_batch_throughput_1_25x_best_tf"}
INT8_GOALS = {"int8_p50_at_most_45ms", "int8_4x_faster_than_best_tf"}


class RuntimeFigures(BaseModel):
    """One runtime's row of `reports/benchmark.json`."""

    model_config = ConfigDict(extra="forbid")
    p50_ms: PositiveFloat
    p50_low_ms: PositiveFloat = Field(description="95% interval of the p50 (order statistics)")
    p50_high_ms: PositiveFloat
    runs: PositiveInt = Field(description="timed batch-1 calls")
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
        if not self.p50_low_ms <= self.p50_ms <= self.p50_high_ms:
            raise ValueError(f"p50 {self.p50_ms} ms lies outside its interval "
                             f"{self.p50_low_ms}-{self.p50_high_ms} ms")
        return self


class BenchmarkReport(BaseModel):
    """The schema of `reports/benchmark.json`, checked before the stage writes it."""

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
            params: BenchmarkParams, clock: Callable[[], float] = time.perf_counter,
            label: str | None = None, batch_warmup: np.ndarray | None = None) -> dict:
    """Latency of single images and throughput of batches for one runtime.

    Batch-1 calls are timed until the p50's 95% interval is `params.ci_width` narrow or
    `params.max_runs` calls are spent; a steady runtime is done in `min_runs` calls.

    Args:
        call: runs the model on a uint8 batch and returns when the result is ready.
        one: a batch of one image.
        batch: a batch of `params.batch_size` images.
        params: warm-up, repetition and interval settings.
        clock: seconds counter.
        label: the runtime's name: shows its progress (warm-up, the batch-1 runs so far out
            of `max_runs` with the interval's width, the batches) and a closing line;
            None shows nothing.
        batch_warmup: what `call` runs once before the batches are timed; default `batch`.
            A runtime that splits a batch into calls of a few images needs only one such call
            (a whole batch of ConvNeXtBase in fp32 is about 4 s).

    Returns:
        p50 (with its interval), p95 and mean latency in ms, the timed calls, and throughput
        in images per second.
    """
    shown = label is not None
    warm = batch if batch_warmup is None else batch_warmup
    with phase(f"{label}: warm up ({params.warmup} single-image calls, one batch of "
               f"{len(warm)})", enabled=shown):
        for _ in range(params.warmup):
            call(one)
        call(warm)  # allocates the batch path once
    with bar(tqdm, desc=f"{label}: batch-1 p50", total=params.max_runs, unit="runs",
             enabled=shown) as runs:
        def on_run(done: int, width: float) -> None:
            # Why the loop goes on: the interval is not yet as narrow as ci_width.
            known = f"{width:.1%} wide" if math.isfinite(width) else "not known yet"
            runs.set_postfix_str(f"95% interval {known} (stops at {params.ci_width:.0%})",
                                 refresh=False)
            runs.update()

        latencies = time_until_tight(lambda: call(one), params.min_runs, params.max_runs,
                                     params.ci_width, clock, on_run)
    p50, low, high = median_interval(np.array(latencies))
    batches = f"{params.batch_runs} batch{'es' if params.batch_runs > 1 else ''}"
    with phase(f"{label}: throughput, {batches} of {len(batch)}", enabled=shown):
        start = clock()
        for _ in range(params.batch_runs):
            call(batch)
        elapsed = clock() - start
    figures = {"p50_ms": round(p50, 2), "p50_low_ms": round(low, 2),
               "p50_high_ms": round(high, 2), "runs": len(latencies),
               "p95_ms": round(float(np.percentile(latencies, 95)), 2),
               "mean_ms": round(float(np.mean(latencies)), 2),
               "throughput_ips": round(len(batch) * params.batch_runs / elapsed, 2)}
    if shown:
        say(f"{label}: p50 {p50:.1f} ms, 95% interval {low:.1f}-{high:.1f} ms "
            f"({interval_width(low, high):.1%} wide) after {len(latencies)}/"
            f"{params.max_runs} runs; {figures['throughput_ips']} img/s at batch {len(batch)}")
    return figures


def _onnx_call(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    session = open_session(path, threads)
    return lambda x: probabilities(session, x)  # batches in calls of IMAGES_PER_RUN, as predict


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


def benchmark(baseline: dict, onnx_path: Path, int8_path: Path | None, images: np.ndarray,
              params: BenchmarkParams) -> dict:
    """Time onnxruntime on real test images and set it against the TensorFlow baseline.

    Args:
        baseline: the tf_baseline stage's figures (Keras rows, input size, threads).
        onnx_path: the ONNX export.
        int8_path: the shipped INT8 variant, or None when it was not shipped.
        images: uint8 test images; repeated to fill a batch when there are fewer.
        params: benchmark settings.

    Returns:
        The figures per runtime, speed-ups over `model.predict` and the best TF path, the
        fraction of its own peak (fp32 or INT8) each achieves at batch size, and the goals.

    Raises:
        BenchmarkError: the baseline was measured at another input size, thread count or
            batch size.
    """
    threads = params.threads or os.cpu_count() or 1
    expected = {"input_size": int(images.shape[1]), "threads": threads,
                "batch_size": params.batch_size}
    found = {key: baseline.get(key) for key in expected}
    if found != expected:
        raise BenchmarkError(f"the TensorFlow baseline was measured with {found}, this "
                             f"benchmark runs with {expected}: run `dvc repro tf_baseline`")
    batch = np.concatenate([images] * -(-params.batch_size // len(images)))[:params.batch_size]
    calls = {"onnxruntime_fp32": _onnx_call(onnx_path, threads)}
    if int8_path is not None:
        calls["onnxruntime_int8"] = _onnx_call(int8_path, threads)
    # Peaks are sampled before and after the runtimes and the higher kept, so a burst of
    # load from another process during one sample does not inflate every share of them.
    def peaks() -> dict[str, float]:
        found = {"fp32": cpu_peak_gflops(seconds=PEAK_SECONDS)}
        if int8_path is not None:  # the same thread count as the INT8 session
            found["int8"] = cpu_int8_peak_gops(seconds=PEAK_SECONDS, threads=threads)
        return found

    before = peaks()
    results = {name: dict(baseline[name]) for name in TF_ROWS}
    results |= {name: measure(call, images[:1], batch, params, label=LABELS[name],
                              batch_warmup=batch[:IMAGES_PER_RUN])
                for name, call in calls.items()}
    peak = {kind: max(value, before[kind]) for kind, value in peaks().items()}
    gflops = model_gflops(onnx_path)  # the INT8 model does the same multiply-adds, in INT8
    best_tf = min(results[name]["p50_ms"] for name in TF_ROWS)
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


def headline(figures: dict) -> dict:
    """What `metrics/benchmark.json` keeps: batch-1 p50 per runtime and the goals.

    Args:
        figures: a `benchmark` result.

    Returns:
        {"p50_ms": {short runtime name: ms}, "goals": {goal: met}}.
    """
    return {"p50_ms": {short: figures[name]["p50_ms"] for name, short in SHORT.items()
                       if name in figures},
            "goals": figures["goals"]}


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
             f"| runtime | batch-1 p50 | 95% interval (runs) | p95 "
             f"| batch-{figures['batch_size']} throughput "
             "| vs `model.predict` | vs best TF | share of own peak |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, label in LABELS.items():
        if name in figures:
            f = figures[name]
            lines.append(f"| {label} | {f['p50_ms']:.1f} ms "
                         f"| {f['p50_low_ms']:.1f}-{f['p50_high_ms']:.1f} ms ({f['runs']}) "
                         f"| {f['p95_ms']:.1f} ms "
                         f"| {f['throughput_ips']:.1f} img/s | {f['speedup_vs_predict']:.1f}x "
                         f"| {f['speedup_vs_best_tf']:.2f}x | {f['peak_fraction']:.1%} |")
    if "onnxruntime_int8" not in figures:
        lines += ["", "No INT8 row: the quantized model did not pass its gate (see "
                  "`reports/quantize.json`)."]
    lines += ["", "The Keras rows come from the tf_baseline stage (`reports/tf_baseline.json`), "
              "measured once per architecture with the same settings; onnxruntime runs "
              "batches as `rarespecies predict` does.",
              "", "Goals:", *(f"- {name.replace('_', ' ')}: {'met' if ok else 'NOT met'}"
                              for name, ok in figures["goals"].items())]
    if settings:
        lines += ["", "onnxruntime session settings: "
                  + ", ".join(f"{key} {value}" for key, value in settings.items()) + "."]
    return "\n".join(lines) + "\n"


def run_benchmark(export_dir: Path, onnx_path: Path, int8_path: Path, baseline_path: Path,
                  params: BenchmarkParams, metrics_path: Path, figures_path: Path,
                  report_path: Path) -> dict:
    """Benchmark the exported model on the select stage's test images; write the outputs.

    Args:
        export_dir: the select stage's folder (the test images).
        onnx_path: the fp32 ONNX file.
        int8_path: the INT8 file, benchmarked when the quantize stage shipped it.
        baseline_path: the tf_baseline stage's figures.
        params: the `benchmark` settings.
        metrics_path: the headline figures (JSON, a DVC metric).
        figures_path: every figure (JSON).
        report_path: the Markdown table.

    Returns:
        The figures.
    """
    images, _ = load_split(export_dir, "test")
    figures = benchmark(read_json(baseline_path), onnx_path,
                        int8_path if int8_path.is_file() else None, np.asarray(images), params)
    write_json(figures_path, figures)
    write_metrics(metrics_path, headline(figures))
    with atomic_path(report_path) as tmp:
        tmp.write_text(table(figures, describe_session(figures["threads"])))
    return figures
