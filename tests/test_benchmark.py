"""Benchmark arithmetic: percentiles and throughput from timed calls."""

import time

import numpy as np

from stages.benchmark import measure
from stages.params import BenchmarkParams


def test_measure_reports_latency_percentiles_and_throughput():
    calls = []

    def fake_model(batch: np.ndarray) -> None:
        calls.append(len(batch))
        time.sleep(0.002 * len(batch))

    params = BenchmarkParams(warmup=1, runs=5, batch_size=8, batch_runs=2)
    figures = measure(fake_model, np.zeros((1, 4, 4, 3)), np.zeros((8, 4, 4, 3)), params)
    assert calls == [1, 8] + [1] * 5 + [8] * 2  # warm-up first, then timed calls
    assert 2 <= figures["p50_ms"] <= figures["p95_ms"] < 50
    assert 100 < figures["throughput_ips"] <= 8 / 0.016 + 1
