"""Timing on a shared machine: medians with a distribution-free interval, and timing loops that
stop once the median is known well enough.

Latencies have long right tails (another process takes the core for a while), so the median
is reported, never assumed normal, and its interval comes from order statistics. The
benchmark stage and the retrain flow's latency gate share these definitions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

CONFIDENCE = 0.95


def interval_width(low: float, high: float) -> float:
    """Relative width of an interval of positive values: high / low - 1 (0.1 = 10% apart)."""
    return high / low - 1 if low > 0 else math.inf


def _order_statistic_rank(n: int, confidence: float) -> int:
    """The largest j with P(Bin(n, 1/2) <= j - 1) <= (1 - confidence) / 2, or 0 if none."""
    tail, cumulative, j = (1 - confidence) / 2, 0.0, 0
    for k in range(n + 1):
        cumulative += math.comb(n, k) / 2.0 ** n
        if cumulative > tail:
            break
        j = k + 1
    return j


def median_interval(values: np.ndarray, confidence: float = CONFIDENCE
                    ) -> tuple[float, float, float]:
    """Median of `values` and a distribution-free interval for it (binomial order statistics).

    Args:
        values: the samples (latencies, or log latency ratios).
        confidence: coverage of the interval.

    Returns:
        (median, low, high); low and high are infinite when there are too few samples.
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    n = len(ordered)
    median = float(np.median(ordered))
    # The interval [x_(j), x_(n-j+1)] (1-based) covers the median with probability
    # 1 - 2 * P(Bin(n, 1/2) <= j - 1).
    j = _order_statistic_rank(n, confidence)
    if j < 1:
        return median, -math.inf, math.inf
    return median, float(ordered[j - 1]), float(ordered[n - j])


def time_until_tight(call: Callable[[], object], min_runs: int, max_runs: int,
                     ci_width: float, clock: Callable[[], float] = time.perf_counter,
                     on_run: Callable[[int, float], object] | None = None) -> list[float]:
    """Time `call` until the median's 95% interval is `ci_width` narrow, or `max_runs` runs.

    Args:
        call: one timed operation (warmed up by the caller).
        min_runs: runs before the interval is first looked at.
        max_runs: runs at most, tight or not.
        ci_width: stop once `interval_width(low, high)` is at most this (0.04 = 4%).
        clock: seconds counter.
        on_run: called after each run with the runs so far and the interval's relative
            width (infinite while too few runs give an interval): progress for a caller.

    Returns:
        Every run's duration in milliseconds, in order.
    """
    durations: list[float] = []
    while len(durations) < max_runs:
        start = clock()
        call()
        durations.append((clock() - start) * 1000)
        width = math.inf
        if len(durations) >= min_runs:
            _, low, high = median_interval(np.array(durations))
            width = interval_width(low, high)
        if on_run is not None:
            on_run(len(durations), width)
        if width <= ci_width:
            break
    return durations
