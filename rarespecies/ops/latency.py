"""The latency gate: is the candidate slower than the promoted model, measured now?

Absolute milliseconds depend on whatever else shares the CPU, and the benchmark stage's figure
is cached by DVC from whenever the pipeline ran. The gate instead times the candidate and the
promoted model in one process at decision time, interleaved (candidate, promoted, promoted,
candidate, ...), so a busy machine slows both alike. Each pair gives one ratio; the gate keeps
measuring, round after round, until the 95% interval of the median ratio is narrow enough to
judge or lies wholly on one side of the limit, or the rounds are spent: then it says the gate
could not be judged, which is not the same as "slower".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rarespecies.config.params import PromoteParams
from rarespecies.runtime.session import open_session
from rarespecies.runtime.timing import interval_width, median_interval

WARMUP = 2  # calls per model before timing: first calls allocate and tune

PASS, SLOWER, UNJUDGED = "pass", "slower", "unjudged"
CLOCK: Callable[[], float] = time.perf_counter  # seconds; tests script it to force an outcome


@dataclass(frozen=True)
class LatencyVerdict:
    """What the gate measured and concluded.

    `ratio` is the candidate's batch-1 latency over the baseline's (below 1: faster), `low` and
    `high` its 95% interval (None when it came from a single benchmark run).
    """

    outcome: str
    baseline: str
    ratio: float
    low: float | None
    high: float | None
    limit: float
    pairs: int
    rounds: int
    candidate_ms: float | None = None
    baseline_ms: float | None = None

    def figures(self) -> str:
        """The measurement in one phrase, as the log, the artifact and the registry show it."""
        interval = ("" if self.low is None else
                    f", 95% interval {self.low:.3f}-{self.high:.3f} "
                    f"(width {interval_width(self.low, self.high):.1%})")
        timing = ("" if self.candidate_ms is None else
                  f"; median {self.candidate_ms:.1f} ms vs {self.baseline_ms:.1f} ms")
        where = (f"{self.pairs} interleaved pairs in {self.rounds} rounds" if self.pairs
                 else "one benchmark-stage run")
        return (f"latency ratio {self.ratio:.3f} vs {self.baseline}{interval} "
                f"(limit {self.limit:g}; {where}{timing})")

    def as_dict(self) -> dict:
        """JSON-ready figures, for the registry and the flow's result."""
        return asdict(self)


def judge(low: float, high: float, ratio: float, params: PromoteParams) -> str | None:
    """The outcome for an interval, or None while it is too wide to say.

    Args:
        low, high, ratio: the interval and the point estimate.
        params: `max_latency_ratio` and `latency_ci_width`.

    Returns:
        PASS, SLOWER, or None.
    """
    limit = params.max_latency_ratio
    if high <= limit:
        return PASS
    if low > limit:
        return SLOWER
    if interval_width(low, high) <= params.latency_ci_width:
        return PASS if ratio <= limit else SLOWER
    return None


def measure_ratio(candidate: Callable[[], object], baseline: Callable[[], object],
                  baseline_name: str, params: PromoteParams,
                  clock: Callable[[], float] | None = None) -> LatencyVerdict:
    """Time `candidate` against `baseline`, interleaved, until the ratio can be judged.

    Args:
        candidate: one batch-1 inference of the candidate.
        baseline: one batch-1 inference of the model it is compared with.
        baseline_name: how the verdict names the baseline ("promoted v3").
        params: the limit, the interval width, pairs per round and the rounds budget.
        clock: seconds counter (default CLOCK).

    Returns:
        The verdict: PASS, SLOWER or UNJUDGED with the figures.
    """
    clock = clock or CLOCK
    for _ in range(WARMUP):
        candidate()
        baseline()

    def timed(call: Callable[[], object]) -> float:
        start = clock()
        call()
        return clock() - start

    logs, times = [], {"candidate": [], "baseline": []}
    outcome, rounds = None, 0
    while outcome is None and rounds < params.latency_rounds:
        rounds += 1
        for pair in range(params.latency_pairs):
            # Alternate which runs first: a cache or frequency effect favouring the second
            # call of a pair then cancels out.
            if pair % 2 == 0:
                new, old = timed(candidate), timed(baseline)
            else:
                old, new = timed(baseline), timed(candidate)
            times["candidate"].append(new)
            times["baseline"].append(old)
            logs.append(math.log(max(new, 1e-9) / max(old, 1e-9)))
        median, low, high = (math.exp(v) for v in median_interval(np.array(logs)))
        outcome = judge(low, high, median, params)
    return LatencyVerdict(outcome=outcome or UNJUDGED, baseline=baseline_name, ratio=median,
                          low=low, high=high, limit=params.max_latency_ratio, pairs=len(logs),
                          rounds=rounds,
                          candidate_ms=float(np.median(times["candidate"])) * 1000,
                          baseline_ms=float(np.median(times["baseline"])) * 1000)


def batch_one_call(path: Path, threads: int) -> Callable[[], object]:
    """One batch-1 inference of an ONNX model, on a fixed random image of its input size.

    Latency of a convolutional network does not depend on the pixels, and the promoted model
    may take another input size than the candidate: each gets an image of its own.
    """
    session = open_session(path, threads)
    spec = session.get_inputs()[0]
    size = spec.shape[1] if isinstance(spec.shape[1], int) else 224
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    return lambda: session.run(None, {spec.name: image})


def compare_models(candidate: Path, baseline: Path, baseline_name: str,
                   params: PromoteParams, threads: int = 0) -> LatencyVerdict:
    """The latency gate between two ONNX files, measured now in this process.

    Args:
        candidate: the candidate's ONNX file.
        baseline: the promoted model's ONNX file.
        baseline_name: how the verdict names the baseline.
        params: the gate's settings.
        threads: intra-op threads of both sessions (0 = one per core).

    Returns:
        The verdict.
    """
    return measure_ratio(batch_one_call(candidate, threads), batch_one_call(baseline, threads),
                         baseline_name, params)


def versus_benchmark(speedup_vs_best_tf: float, params: PromoteParams) -> LatencyVerdict:
    """The gate with no promoted model: onnxruntime over the best TensorFlow runtime, as the
    benchmark stage reports it (a ratio, though without an interval)."""
    ratio = 1 / speedup_vs_best_tf
    return LatencyVerdict(outcome=PASS if ratio <= params.max_latency_ratio else SLOWER,
                          baseline="the best TensorFlow runtime", ratio=ratio, low=None,
                          high=None, limit=params.max_latency_ratio, pairs=0, rounds=0)
