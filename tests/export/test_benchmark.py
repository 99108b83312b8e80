"""Benchmark arithmetic (warm-up first, then percentiles and throughput) and its JSON schema."""

import numpy as np
import pytest
from pydantic import ValidationError

from rarespecies.config.params import BenchmarkParams
from rarespecies.export.benchmark import (
    INT8_GOALS,
    BenchmarkError,
    BenchmarkReport,
    benchmark,
    goals,
    headline,
    measure,
    table,
)


def test_measure_times_until_the_p50_is_tight_and_reports_its_interval():
    now = [0.0]
    single_ms = iter([10.0, 10.2, 9.8, 10.1, 9.9, 10.0, 30.0])
    calls = []

    def fake_model(batch: np.ndarray) -> None:
        calls.append(len(batch))
        if len(calls) > 2:  # warm-up calls are not timed
            now[0] += next(single_ms) / 1000 if len(batch) == 1 else 0.016

    params = BenchmarkParams(warmup=1, min_runs=6, max_runs=7, ci_width=0.05, batch_size=8,
                             batch_runs=2)
    figures = measure(fake_model, np.zeros((1, 4, 4, 3)), np.zeros((8, 4, 4, 3)), params,
                      clock=lambda: now[0])
    # six steady runs give an interval [9.8, 10.2] ms, 4% wide: the seventh is never run
    assert calls == [1, 8] + [1] * 6 + [8] * 2
    assert figures["runs"] == 6
    assert (figures["p50_low_ms"], figures["p50_ms"], figures["p50_high_ms"]) == pytest.approx(
        (9.8, 10.0, 10.2))
    assert figures["mean_ms"] == pytest.approx(10.0)
    assert figures["throughput_ips"] == pytest.approx(16 / 0.032)


def test_a_runtime_that_splits_batches_warms_up_on_one_call_of_the_split():
    calls = []
    params = BenchmarkParams(warmup=1, min_runs=6, max_runs=6, batch_size=8, batch_runs=1)
    measure(lambda batch: calls.append(len(batch)), np.zeros((1, 4, 4, 3)),
            np.zeros((8, 4, 4, 3)), params, batch_warmup=np.zeros((2, 4, 4, 3)))
    assert calls == [1, 2] + [1] * 6 + [8]


def test_measure_keeps_timing_a_noisy_runtime_up_to_max_runs():
    now, calls = [0.0], []
    spread = iter([5.0, 10.0, 15.0, 20.0] * 10)

    def fake_model(batch: np.ndarray) -> None:
        calls.append(len(batch))
        now[0] += next(spread) / 1000 if len(batch) == 1 and len(calls) > 2 else 0.01

    params = BenchmarkParams(warmup=1, min_runs=6, max_runs=20, ci_width=0.05, batch_size=8,
                             batch_runs=1)
    figures = measure(fake_model, np.zeros((1, 4, 4, 3)), np.zeros((8, 4, 4, 3)), params,
                      clock=lambda: now[0])
    assert figures["runs"] == 20
    assert figures["p50_high_ms"] / figures["p50_low_ms"] - 1 > 0.05


def test_benchmark_params_refuse_fewer_max_runs_than_min_runs():
    with pytest.raises(ValidationError, match="below min_runs"):
        BenchmarkParams(min_runs=10, max_runs=8)


def _row(p50: float, throughput: float = 5.0, peak_fraction: float = 0.4) -> dict:
    return {"p50_ms": p50, "p50_low_ms": p50 * 0.98, "p50_high_ms": p50 * 1.02, "runs": 10,
            "p95_ms": p50 * 1.2, "mean_ms": p50 * 1.1,
            "throughput_ips": throughput, "speedup_vs_predict": 1.0, "speedup_vs_best_tf": 1.0,
            "peak_fraction": peak_fraction}


def _report(**rows: float) -> dict:
    figures = {name: _row(p50) for name, p50 in rows.items()}
    best_tf = min(figures["keras_tf_function"]["p50_ms"], figures["keras_predict"]["p50_ms"])
    int8_peak = 1200.0 if "onnxruntime_int8" in figures else None
    return {"input_size": 224, "batch_size": 32, "threads": 2, "model_gflops": 30.7,
            "cpu_peak_gflops": 300.0, "cpu_int8_peak_gops": int8_peak, **figures,
            "goals": goals(figures, best_tf)}


TF_AND_FP32 = {"keras_predict": 300.0, "keras_tf_function": 200.0, "onnxruntime_fp32": 150.0}


@pytest.mark.parametrize("int8", [None, 80.0])
def test_goals_and_schema_agree_with_or_without_int8(int8):
    rows = TF_AND_FP32 | ({"onnxruntime_int8": int8} if int8 else {})
    report = BenchmarkReport.model_validate(_report(**rows)).model_dump(exclude_none=True)
    assert ("onnxruntime_int8" in report) == ("cpu_int8_peak_gops" in report) == bool(int8)
    # 150 ms, 40% of the fp32 peak, the same throughput as TF: no fp32 goal is met
    assert not any(report["goals"].values())
    assert set(report["goals"]) >= INT8_GOALS if int8 else not set(report["goals"]) & INT8_GOALS


@pytest.mark.parametrize(("int8_p50", "met"), [
    (45.0, {"int8_p50_at_most_45ms", "int8_4x_faster_than_best_tf"}),  # 200 / 45 = 4.4x
    (46.0, {"int8_4x_faster_than_best_tf"}),
    (50.0, {"int8_4x_faster_than_best_tf"}),  # exactly 4x
    (51.0, set()),
])
def test_int8_goals_are_issue_16s_thresholds(int8_p50, met):
    rows = {name: _row(p50) for name, p50 in (TF_AND_FP32 | {"onnxruntime_int8": int8_p50}).items()}
    checks = goals(rows, best_tf=200.0)
    assert {name for name in INT8_GOALS if checks[name]} == met


def test_fp32_goals_use_the_best_tf_throughput_and_the_fp32_peak_share():
    rows = {"keras_predict": _row(300.0, throughput=4.0),
            "keras_tf_function": _row(200.0, throughput=8.0),
            "onnxruntime_fp32": _row(115.0, throughput=10.0, peak_fraction=0.8)}
    assert all(goals(rows, best_tf=200.0).values())  # 10 img/s = 1.25 x TF's best 8
    rows["onnxruntime_fp32"] = _row(115.1, throughput=9.9, peak_fraction=0.79)
    assert not any(goals(rows, best_tf=200.0).values())


def test_report_states_both_peaks_and_the_session_settings():
    report = BenchmarkReport.model_validate(
        _report(**TF_AND_FP32, onnxruntime_int8=80.0)).model_dump(exclude_none=True)
    text = table(report, {"intra_op_threads": 2, "allow_spinning": True})
    assert "1200.0 GOP/s" in text and "300.0 GFLOP/s" in text and "share of own peak" in text
    assert "intra_op_threads 2, allow_spinning True" in text


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.update(extra=1), "extra"),
    (lambda r: r.pop("cpu_peak_gflops"), "cpu_peak_gflops"),
    (lambda r: r["onnxruntime_fp32"].update(p95_ms=1.0), "below p50"),
    (lambda r: r["onnxruntime_fp32"].update(p50_high_ms=1.0), "outside its interval"),
    (lambda r: r["onnxruntime_fp32"].pop("runs"), "runs"),
    (lambda r: r["keras_predict"].update(throughput_ips=0), "greater than 0"),
    (lambda r: r.update(onnxruntime_int8=_row(80.0)), "do not match the rows"),
    (lambda r: r["goals"].pop("fp32_p50_at_most_115ms"), "do not match the rows"),
    (lambda r: r.update(cpu_int8_peak_gops=1200.0), "only with it"),
    (lambda r: r.update(cpu_int8_peak_gops=-1.0), "greater than 0"),
])
def test_schema_rejects_malformed_reports(change, message):
    report = _report(**TF_AND_FP32)
    change(report)
    with pytest.raises(ValidationError, match=message):
        BenchmarkReport.model_validate(report)


def test_headline_keeps_one_p50_per_runtime_and_the_goals():
    report = BenchmarkReport.model_validate(
        _report(**TF_AND_FP32, onnxruntime_int8=80.0)).model_dump(exclude_none=True)
    compact = headline(report)
    assert compact == {"p50_ms": {"predict": 300.0, "tf_function": 200.0, "ort_fp32": 150.0,
                                  "ort_int8": 80.0},
                       "goals": report["goals"]}


def test_a_baseline_measured_with_other_settings_is_refused(tmp_path):
    baseline = {"input_size": 32, "threads": 2, "batch_size": 4,
                "keras_predict": _row(30.0), "keras_tf_function": _row(20.0)}
    params = BenchmarkParams(threads=3, batch_size=4, min_runs=6, max_runs=6)
    with pytest.raises(BenchmarkError, match=r"'threads': 2.*'threads': 3.*dvc repro tf_baseline"):
        benchmark(baseline, tmp_path / "unused.onnx", None,
                  np.zeros((2, 32, 32, 3), np.uint8), params)


def test_measure_with_a_label_logs_its_runs_out_of_the_maximum_and_the_interval(capsys):
    now = [0.0]
    spread = iter([10.0, 10.2, 9.8, 10.1, 9.9, 10.0] * 20)

    def fake_model(batch: np.ndarray) -> None:
        now[0] += next(spread) / 1000 if len(batch) == 1 else 0.016

    params = BenchmarkParams(warmup=1, min_runs=6, max_runs=60, ci_width=0.05, batch_size=8,
                             batch_runs=2)
    measure(fake_model, np.zeros((1, 4, 4, 3)), np.zeros((8, 4, 4, 3)), params,
            clock=lambda: now[0], label="onnxruntime fp32")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("onnxruntime fp32: warm up")
    assert any(line.startswith("onnxruntime fp32: batch-1 p50: 6/60 runs done")
               and "95% interval 4.1% wide (stops at 5%)" in line for line in lines)
    assert lines[-1].startswith("onnxruntime fp32: p50 10.0 ms, 95% interval 9.8-10.2 ms "
                                "(4.1% wide) after 6/60 runs")
    assert len(lines) <= 8  # not one line per run


def test_measure_without_a_label_prints_nothing(capsys):
    params = BenchmarkParams(warmup=1, min_runs=6, max_runs=7, ci_width=0.05, batch_size=8,
                             batch_runs=1)
    measure(lambda batch: None, np.zeros((1, 4, 4, 3)), np.zeros((8, 4, 4, 3)), params)
    assert capsys.readouterr().err == ""
