"""The latency gate: a ratio timed now, interleaved, judged only on a tight enough interval."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from tiny_onnx import save_tiny_model

from rarespecies.config.params import PromoteParams
from rarespecies.ops import latency
from rarespecies.ops.latency import (
    PASS,
    SLOWER,
    UNJUDGED,
    compare_models,
    judge,
    measure_ratio,
    versus_benchmark,
)

PARAMS = PromoteParams(max_latency_ratio=1.1, latency_ci_width=0.1, latency_pairs=10,
                       latency_rounds=3)


class FakeTimes:
    """A clock and two calls: each call advances the clock by its next scripted duration."""

    def __init__(self, candidate: list[float], baseline: list[float]) -> None:
        self.now = 0.0
        self.durations = {"candidate": itertools.cycle(candidate),
                          "baseline": itertools.cycle(baseline)}
        self.calls = []

    def clock(self) -> float:
        return self.now

    def call(self, which: str):
        def run() -> None:
            self.calls.append(which)
            self.now += next(self.durations[which])
        return run

    def measure(self, params: PromoteParams = PARAMS) -> latency.LatencyVerdict:
        return measure_ratio(self.call("candidate"), self.call("baseline"), "promoted v1",
                             params, self.clock)


@pytest.mark.parametrize(("low", "high", "ratio", "outcome"), [
    (0.90, 1.05, 1.0, PASS),       # wholly under the limit, however wide
    (1.20, 2.00, 1.5, SLOWER),     # wholly over it
    (1.05, 1.12, 1.08, PASS),      # straddles, but narrow (6.7%): the point estimate decides
    (1.08, 1.15, 1.12, SLOWER),
    (0.80, 1.40, 1.05, None),      # straddles and wide: measure more
])
def test_judge(low, high, ratio, outcome):
    assert judge(low, high, ratio, PARAMS) == outcome


def test_a_steadily_slower_candidate_fails_after_one_round():
    times = FakeTimes(candidate=[0.150, 0.151], baseline=[0.100])
    verdict = times.measure()
    assert verdict.outcome == SLOWER and verdict.rounds == 1 and verdict.pairs == 10
    assert verdict.ratio == pytest.approx(1.505, abs=0.01)
    assert (verdict.candidate_ms, verdict.baseline_ms) == pytest.approx((150.5, 100.0))


def test_calls_are_interleaved_and_alternate_which_goes_first():
    times = FakeTimes(candidate=[0.1], baseline=[0.1])
    times.measure(PARAMS.model_copy(update={"latency_pairs": 6, "latency_rounds": 1}))
    timed = times.calls[2 * latency.WARMUP:]
    assert timed[:4] == ["candidate", "baseline", "baseline", "candidate"]


def test_a_noisy_machine_gives_an_unjudged_gate_not_a_slower_one():
    # Every other pair is disturbed by another process: the ratio swings 0.7 to 1.6.
    times = FakeTimes(candidate=[0.07, 0.16, 0.16, 0.07], baseline=[0.1])
    verdict = times.measure()
    assert verdict.outcome == UNJUDGED
    assert verdict.rounds == PARAMS.latency_rounds and verdict.pairs == 30
    assert verdict.low < PARAMS.max_latency_ratio < verdict.high
    assert "95% interval" in verdict.figures() and "30 interleaved pairs in 3 rounds" in \
        verdict.figures()


def test_noise_that_settles_is_measured_until_judged():
    """Wide at first, then enough quiet pairs: judged in a later round, not given up on."""
    warmup, noisy = [0.1] * latency.WARMUP, [0.07, 0.16] * 5
    times = FakeTimes(candidate=[*warmup, *noisy, *[0.1] * 100], baseline=[0.1])
    verdict = times.measure(PARAMS.model_copy(update={"latency_rounds": 6}))
    assert verdict.outcome == PASS and 1 < verdict.rounds < 6


def test_real_sessions_on_tiny_models(tmp_path: Path):
    """The gate opens both files with open_session and times them; whatever this machine's
    speed, the verdict is one of the three and its figures are consistent."""
    candidate = save_tiny_model(tmp_path / "candidate.onnx", seed=1)
    promoted = save_tiny_model(tmp_path / "promoted.onnx", seed=2, size=12)  # another size
    verdict = compare_models(candidate, promoted, "promoted v1",
                             PARAMS.model_copy(update={"latency_rounds": 2}), threads=1)
    assert verdict.outcome in {PASS, SLOWER, UNJUDGED}
    assert verdict.pairs == 10 * verdict.rounds and 1 <= verdict.rounds <= 2
    assert verdict.low <= verdict.ratio <= verdict.high
    assert verdict.candidate_ms > 0 and verdict.baseline_ms > 0


def test_without_a_promoted_model_the_benchmark_ratio_to_tensorflow_judges():
    fast, slow = versus_benchmark(2.0, PARAMS), versus_benchmark(0.8, PARAMS)
    assert (fast.outcome, fast.ratio, slow.outcome) == (PASS, 0.5, SLOWER)
    assert fast.figures() == ("latency ratio 0.500 vs the best TensorFlow runtime (limit 1.1; "
                              "one benchmark-stage run)")
