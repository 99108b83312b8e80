"""Benchmark arithmetic (warm-up first, then percentiles and throughput) and its JSON schema."""

import numpy as np
import pytest
from pydantic import ValidationError

from rarespecies.config.params import BenchmarkParams
from rarespecies.export.benchmark import INT8_GOALS, BenchmarkReport, goals, measure


def test_measure_reports_latency_percentiles_and_throughput():
    now = [0.0]
    single_ms = iter([1.0, 2.0, 3.0, 4.0, 10.0])
    calls = []

    def fake_model(batch: np.ndarray) -> None:
        calls.append(len(batch))
        if len(calls) > 2:  # warm-up calls are not timed
            now[0] += next(single_ms) / 1000 if len(batch) == 1 else 0.016

    params = BenchmarkParams(warmup=1, runs=5, batch_size=8, batch_runs=2)
    figures = measure(fake_model, np.zeros((1, 4, 4, 3)), np.zeros((8, 4, 4, 3)), params,
                      clock=lambda: now[0])
    assert calls == [1, 8] + [1] * 5 + [8] * 2
    assert figures["p50_ms"] == pytest.approx(3.0)
    assert figures["p95_ms"] == pytest.approx(8.8)
    assert figures["mean_ms"] == pytest.approx(4.0)
    assert figures["throughput_ips"] == pytest.approx(16 / 0.032)


def _row(p50: float) -> dict:
    return {"p50_ms": p50, "p95_ms": p50 * 1.2, "mean_ms": p50 * 1.1, "throughput_ips": 5.0,
            "speedup_vs_predict": 1.0, "speedup_vs_best_tf": 1.0, "peak_fraction": 0.4}


def _report(**rows: float) -> dict:
    figures = {name: _row(p50) for name, p50 in rows.items()}
    best_tf = min(figures["keras_tf_function"]["p50_ms"], figures["keras_predict"]["p50_ms"])
    return {"input_size": 224, "batch_size": 32, "threads": 2, "model_gflops": 30.7,
            "cpu_peak_gflops": 300.0, **figures, "goals": goals(figures, best_tf)}


TF_AND_FP32 = {"keras_predict": 300.0, "keras_tf_function": 200.0, "onnxruntime_fp32": 150.0}


@pytest.mark.parametrize("int8", [None, 80.0])
def test_goals_and_schema_agree_with_or_without_int8(int8):
    rows = TF_AND_FP32 | ({"onnxruntime_int8": int8} if int8 else {})
    report = BenchmarkReport.model_validate(_report(**rows)).model_dump(exclude_none=True)
    assert ("onnxruntime_int8" in report) == bool(int8)
    assert report["goals"]["fp32_no_slower_than_best_tf"] is True
    if int8:  # 80 ms: 2.5x the best TF path, 3.75x predict, above 60 ms
        assert not any(report["goals"][name] for name in INT8_GOALS)


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.update(extra=1), "extra"),
    (lambda r: r.pop("cpu_peak_gflops"), "cpu_peak_gflops"),
    (lambda r: r["onnxruntime_fp32"].update(p95_ms=1.0), "below p50"),
    (lambda r: r["keras_predict"].update(throughput_ips=0), "greater than 0"),
    (lambda r: r.update(onnxruntime_int8=_row(80.0)), "do not match the rows"),
    (lambda r: r["goals"].pop("fp32_no_slower_than_best_tf"), "do not match the rows"),
])
def test_schema_rejects_malformed_reports(change, message):
    report = _report(**TF_AND_FP32)
    change(report)
    with pytest.raises(ValidationError, match=message):
        BenchmarkReport.model_validate(report)
