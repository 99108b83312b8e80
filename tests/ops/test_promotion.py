"""Promotion rules and the registry: only a better model that passes its gates, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rarespecies.ops.promotion as promotion
from rarespecies.config.params import PromoteParams
from rarespecies.ops.latency import PASS, SLOWER, UNJUDGED, LatencyVerdict
from rarespecies.ops.promotion import (
    FIRST_REFUSED,
    PROMOTED,
    REFUSED,
    PromotionError,
    candidate,
    decide,
    decision_markdown,
    md5,
    promote,
    read_registry,
)
from rarespecies.ops.promotion import UNJUDGED as KIND_UNJUDGED

PARAMS = PromoteParams(min_gain=0.01)


def _candidate(**changes) -> dict:
    new = {"model": "convnext_full", "macro_f1": 0.50, "test_images": 40,
           "parity_max_abs_diff": 3e-7, "parity_tolerance": 1e-4, "top1_agreement": 1.0,
           "min_top1_agreement": 0.999, "onnx_p50_ms": 150.0, "onnx_speedup_vs_best_tf": 1.3,
           "benchmark_input_size": 224, "onnx_md5": "new", "int8_md5": None, "data_md5": "d2",
           "source_revision": "abc"}
    return new | changes


def _promoted(**changes) -> dict:
    return _candidate(version=3, onnx_md5="old", macro_f1=0.45, git_tag="model-v3") | changes


def _timed(outcome: str, ratio: float = 1.0, low: float = 0.95, high: float = 1.05):
    """A latency measurement that records whether it was taken."""
    calls = []

    def measure() -> LatencyVerdict:
        calls.append(1)
        return LatencyVerdict(outcome, "promoted v3", ratio, low, high, 1.1, 20, 2, 150.0, 149.0)
    measure.calls = calls
    return measure


def test_first_candidate_is_promoted_when_its_gates_pass():
    decision = decide(_candidate(), None, PARAMS)
    assert decision.promote and decision.kind == PROMOTED and not decision.needs_attention
    assert decision.reason == ("first promotion: test macro F1 0.5000; latency ratio 0.769 vs "
                               "the best TensorFlow runtime (limit 1.1; one benchmark-stage run)")
    assert decision.line().startswith("promoted the candidate: first promotion")


@pytest.mark.parametrize(("new", "fragment"), [
    (_candidate(parity_max_abs_diff=2e-4), "parity gate failed: max difference 2.00e-04"),
    (_candidate(top1_agreement=0.99), "top-1 agreement 99.0%"),
])
def test_parity_refuses_even_a_much_better_model(new, fragment):
    measure = _timed(PASS)
    decision = decide(new | {"macro_f1": 0.99}, _promoted(), PARAMS, latency=measure)
    assert decision.kind == REFUSED and fragment in decision.reason
    assert decision.line().startswith("kept the promoted model v3: ONNX parity gate failed")
    assert measure.calls == []  # seconds of timing saved on a refused candidate


def test_a_slower_candidate_is_refused_as_not_better():
    decision = decide(_candidate(macro_f1=0.99), _promoted(), PARAMS,
                      latency=_timed(SLOWER, 1.4, 1.3, 1.5))
    assert decision.kind == REFUSED and not decision.needs_attention
    assert decision.reason.startswith("latency gate failed: latency ratio 1.400 vs promoted v3, "
                                      "95% interval 1.300-1.500")
    assert decision.latency["outcome"] == SLOWER


def test_an_unjudged_latency_gate_is_not_a_refusal_for_slowness():
    decision = decide(_candidate(macro_f1=0.99), _promoted(), PARAMS,
                      latency=_timed(UNJUDGED, 1.1, 0.7, 1.6))
    assert decision.kind == KIND_UNJUDGED and decision.needs_attention and not decision.promote
    assert decision.line().startswith("not promoted: the latency gate could not be judged: "
                                      "latency ratio 1.100 vs promoted v3, 95% interval "
                                      "0.700-1.600 (width 128.6%)")
    assert "wider than promote.latency_ci_width 0.1 after promote.latency_rounds 6" in \
        decision.reason
    assert [g["verdict"] for g in decision.gates] == ["pass", "pass", "could not judge"]


@pytest.mark.parametrize("new", [_candidate(top1_agreement=0.5),
                                 _candidate(onnx_speedup_vs_best_tf=0.5)],
                         ids=["parity", "slower-than-tensorflow"])
def test_a_refused_first_candidate_needs_attention_and_never_says_kept(new):
    decision = decide(new, None, PARAMS)
    assert decision.kind == FIRST_REFUSED and decision.needs_attention
    assert decision.headline == ("not promoted: no model is promoted yet and the first "
                                 "candidate was refused")
    assert "kept" not in decision.line()


@pytest.mark.parametrize(("f1", "promoted"), [(0.455, False), (0.46, True), (0.40, False)])
def test_gain_must_reach_min_gain(f1, promoted):
    measure = _timed(PASS)
    decision = decide(_candidate(macro_f1=f1), _promoted(), PARAMS, latency=measure)
    assert decision.promote is promoted
    assert f"vs promoted v3 0.4500 (recorded): {(f1 - 0.45) * 100:+.2f} points" in \
        decision.reason
    assert ("below promote.min_gain 1.00" in decision.reason) is not promoted
    assert len(measure.calls) == promoted  # timed only when the rest passed


def test_gain_is_measured_on_the_same_test_images_when_possible():
    # Recorded 0.45 on the old split; on the candidate's split the promoted model scores 0.495.
    decision = decide(_candidate(), _promoted(), PARAMS, current_f1=0.495, latency=_timed(PASS))
    assert not decision.promote
    assert "0.4950 (on the same test images): +0.50 points" in decision.reason


def test_the_promoted_file_itself_is_never_promoted_again():
    """A rerun without changes says so, and does not time the model against itself."""
    measure = _timed(SLOWER)
    decision = decide(_candidate(onnx_md5="old"), _promoted(), PARAMS, latency=measure)
    assert decision.kind == REFUSED and measure.calls == []
    assert decision.line() == ("kept the promoted model v3: the candidate is the promoted "
                               "model v3 (same file)")


def test_the_artifact_shows_candidate_promoted_model_and_every_gate():
    decision = decide(_candidate(macro_f1=0.99), _promoted(), PARAMS, latency=_timed(PASS))
    markdown = decision_markdown(decision, _candidate(macro_f1=0.99), _promoted())
    assert markdown.startswith("# Retrain decision: promoted the candidate\n")
    assert "**Promoted model**: v3 (convnext_full, test macro F1 0.4500" in markdown
    assert "git tag `model-v3`" in markdown and "**Candidate**: convnext_full, test " in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| parity", "| macro F1", "| latency"]
    assert all(row.endswith("| pass |") for row in rows)
    first = decision_markdown(decide(_candidate(top1_agreement=0.5), None, PARAMS),
                              _candidate(), None)
    assert "**Promoted model**: none yet" in first
    assert "| latency | - | not measured |" in first


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project whose pipeline produced an fp32 and an INT8 model."""
    for name, content in (("export/model.onnx", b"fp32 v2"),
                          ("export/int8/model.onnx", b"int8 v2")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    return tmp_path


def test_promotion_places_files_and_appends_to_the_registry(root):
    first = promote(root, _candidate(onnx_md5=md5(root / "export/model.onnx")), "first")
    assert first["git_tag"] is None  # not committed: no tag names it
    (root / "export/int8/model.onnx").unlink()  # the next candidate's INT8 did not ship
    (root / "export/model.onnx").write_bytes(b"fp32 v3")
    second = promote(root, _candidate(onnx_md5=md5(root / "export/model.onnx")), "better",
                     tagged=True)
    assert (first["version"], second["version"]) == (1, 2)
    assert second["git_tag"] == "model-v2"  # the tag of the commit that records it
    assert (root / "deploy/model.onnx").read_bytes() == b"fp32 v3"
    assert not (root / "deploy/model.int8.onnx").exists()  # no stale INT8 beside the new model
    registry = read_registry(root)
    assert registry["current"] == second and registry["history"] == [first, second]
    assert sorted(p.name for p in (root / "deploy").iterdir()) == ["model.onnx", "registry.json"]


def test_failed_promotion_leaves_the_promoted_model_untouched(root, monkeypatch):
    promote(root, _candidate(), "first")
    before = {p.name: p.read_bytes() for p in (root / "deploy").iterdir()}
    (root / "export/model.onnx").write_bytes(b"fp32 v3")
    (root / "export/int8/model.onnx").unlink()

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(promotion, "write_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        promote(root, _candidate(onnx_md5="v3"), "better")
    assert {p.name: p.read_bytes() for p in (root / "deploy").iterdir()} == before
    assert json.loads(before["registry.json"])["current"]["version"] == 1


def test_candidate_names_the_missing_pipeline_output(root):
    with pytest.raises(PromotionError, match=r"reports/export\.json.*run the pipeline flow"):
        candidate(root)
