"""Benchmark arithmetic: warm-up first, then percentiles and throughput from timed calls."""

import numpy as np
import pytest

from stages.benchmark import measure
from stages.params import BenchmarkParams


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
