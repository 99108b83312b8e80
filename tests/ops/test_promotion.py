"""Promotion rules and the registry: only a better model that passes its gates, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rarespecies.ops.promotion as promotion
from rarespecies.config.params import PromoteParams
from rarespecies.ops.promotion import PromotionError, candidate, decide, md5, promote, read_registry

PARAMS = PromoteParams(min_gain=0.01, max_p50_ms=250)


def _candidate(**changes) -> dict:
    new = {"model": "convnext_full", "macro_f1": 0.50, "test_images": 40,
           "parity_max_abs_diff": 3e-7, "parity_tolerance": 1e-4, "top1_agreement": 1.0,
           "min_top1_agreement": 0.999, "onnx_p50_ms": 150.0, "benchmark_input_size": 224,
           "onnx_md5": "new", "int8_md5": None, "data_md5": "d2", "git_revision": "abc"}
    return new | changes


def _promoted(**changes) -> dict:
    return _candidate(version=3, onnx_md5="old", macro_f1=0.45) | changes


def test_first_candidate_is_promoted_when_its_gates_pass():
    assert decide(_candidate(), None, PARAMS) == (True, "first promotion: test macro F1 0.5000")


@pytest.mark.parametrize(("new", "fragment"), [
    (_candidate(parity_max_abs_diff=2e-4), "parity gate failed: max difference 2.00e-04"),
    (_candidate(top1_agreement=0.99), "top-1 agreement 99.0%"),
    (_candidate(onnx_p50_ms=300.0), "latency gate failed: onnxruntime batch-1 p50 300.0 ms"),
])
def test_gates_refuse_even_a_much_better_model(new, fragment):
    promote_it, reason = decide(new | {"macro_f1": 0.99}, _promoted(), PARAMS)
    assert not promote_it and fragment in reason


@pytest.mark.parametrize(("f1", "promoted"), [(0.455, False), (0.46, True), (0.40, False)])
def test_gain_must_reach_min_gain(f1, promoted):
    promote_it, reason = decide(_candidate(macro_f1=f1), _promoted(), PARAMS)
    assert promote_it is promoted
    assert f"vs promoted v3 0.4500 (recorded): {(f1 - 0.45) * 100:+.2f} points" in reason
    assert ("below promote.min_gain 1.00" in reason) is not promoted


def test_gain_is_measured_on_the_same_test_images_when_possible():
    # Recorded 0.45 on the old split; on the candidate's split the promoted model scores 0.495.
    promote_it, reason = decide(_candidate(), _promoted(), PARAMS, current_f1=0.495)
    assert not promote_it and "0.4950 (on the same test images): +0.50 points" in reason


@pytest.mark.parametrize("latency", [150.0, 900.0], ids=["fast", "slow-this-time"])
def test_the_promoted_file_itself_is_never_promoted_again(latency):
    """A rerun without changes says so, even when this run's benchmark missed the gate."""
    promote_it, reason = decide(_candidate(onnx_md5="old", onnx_p50_ms=latency), _promoted(),
                                PARAMS)
    assert not promote_it and reason == "the candidate is the promoted model v3 (same file)"


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
    (root / "export/int8/model.onnx").unlink()  # the next candidate's INT8 did not ship
    (root / "export/model.onnx").write_bytes(b"fp32 v3")
    second = promote(root, _candidate(onnx_md5=md5(root / "export/model.onnx")), "better")
    assert (first["version"], second["version"]) == (1, 2)
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
    with pytest.raises(PromotionError, match=r"metrics/export\.json.*run the pipeline flow"):
        candidate(root)
