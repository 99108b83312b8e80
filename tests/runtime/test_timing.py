"""Medians with order-statistic intervals, and timing loops that stop once the median is tight."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom

from rarespecies.runtime.timing import interval_width, median_interval, time_until_tight


def test_median_interval_covers_the_median_with_order_statistics():
    values = np.arange(1.0, 21.0)  # n = 20: the 95% interval is [x(6), x(15)]
    assert median_interval(values) == (10.5, 6.0, 15.0)
    median, low, high = median_interval(np.ones(5))  # too few samples for 95%
    assert median == 1.0 and (low, high) == (-math.inf, math.inf)


@pytest.mark.parametrize("n", [6, 9, 20, 57, 120])
def test_interval_rank_matches_the_binomial_quantile(n):
    j = int(binom.ppf(0.025, n, 0.5))  # scipy: the tests' install has it, the runtime's not
    ordered = np.arange(1.0, n + 1)
    assert median_interval(ordered)[1:] == (float(j), float(n - j + 1))


class ScriptedClock:
    """A clock that each call advances by its next scripted duration (ms)."""

    def __init__(self, durations_ms: list[float]) -> None:
        self.now, self.durations, self.calls = 0.0, itertools.cycle(durations_ms), 0

    def call(self) -> None:
        self.calls += 1
        self.now += next(self.durations) / 1000

    def clock(self) -> float:
        return self.now


def test_timing_stops_as_soon_as_the_interval_is_tight():
    steady = ScriptedClock([100.0, 101.0, 99.0])
    durations = time_until_tight(steady.call, min_runs=6, max_runs=50, ci_width=0.05,
                                 clock=steady.clock)
    assert len(durations) == steady.calls == 6  # 6 samples: interval [99, 101], 2% wide
    assert durations[:3] == pytest.approx([100.0, 101.0, 99.0])


def test_timing_runs_to_the_limit_when_the_spread_stays_wide():
    noisy = ScriptedClock([50.0, 100.0, 150.0, 200.0])
    durations = time_until_tight(noisy.call, min_runs=6, max_runs=30, ci_width=0.05,
                                 clock=noisy.clock)
    assert len(durations) == 30
    _, low, high = median_interval(np.array(durations))
    assert interval_width(low, high) > 0.05


def test_timing_reports_each_run_and_the_interval_width_once_known():
    steady = ScriptedClock([100.0, 101.0, 99.0])
    seen: list[tuple[int, float]] = []
    time_until_tight(steady.call, min_runs=6, max_runs=50, ci_width=0.05, clock=steady.clock,
                     on_run=lambda runs, width: seen.append((runs, width)))
    assert [runs for runs, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert all(math.isinf(width) for _, width in seen[:5])  # before min_runs: not known
    assert seen[-1][1] == pytest.approx(101 / 99 - 1)  # the width that stopped the loop
