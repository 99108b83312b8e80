"""Every result is reproducible: a second workspace sharing the DVC cache restores every stage
from the run cache and runs none, and a fresh clone's `dvc repro` gives the committed dvc.lock
back, byte for byte, except the benchmark's own timings."""

import json

import pytest
import yaml

from conftest import FreshClone, ran_stages, run

pytestmark = pytest.mark.slow


def all_stages(project) -> set[str]:
    return set(yaml.safe_load((project / "dvc.lock").read_text())["stages"])


def restored(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if "is cached" in line}


def test_a_second_workspace_sharing_the_cache_restores_every_stage(reproduced, tmp_path):
    project, _ = reproduced
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    run("dvc", "cache", "dir", "--local", str(project / ".dvc/cache"), cwd=clone)
    run("dvc", "checkout", "-q", "data.dvc", cwd=clone)
    output = run("dvc", "repro", cwd=clone).stdout
    assert ran_stages(output) == set(), output
    assert restored(output) == all_stages(project)
    for name in ("export/model.onnx", "metrics/models/convnext_full.json"):
        assert (clone / name).read_bytes() == (project / name).read_bytes()


def test_a_fresh_clone_reproduces_the_committed_lock(fresh_clone: FreshClone):
    """The whole pipeline again, with no cache and no metrics: every output has the same bytes,
    so dvc.lock and the metrics come out as committed; only the timings are measured anew."""
    clone, output = fresh_clone.clone, fresh_clone.output
    # Stages whose locked outputs an earlier stage of this run already made (identical
    # arrays at the tiny profile's one input size) are checked out rather than run.
    assert ran_stages(output) | restored(output) == all_stages(clone)
    assert {"ingest", "train@convnext_full", "export", "quantize"} <= ran_stages(output)
    changed = run("git", "status", "--porcelain", cwd=clone).stdout.splitlines()
    assert {line[3:] for line in changed} <= {"dvc.lock", "metrics/benchmark.json"}
    before, after = (yaml.safe_load((root / "dvc.lock").read_text())["stages"]
                     for root in (fresh_clone.source, clone))
    assert {name for name in before if before[name] != after[name]} <= {"tf_baseline",
                                                                         "benchmark"}
    benchmark = json.loads((clone / "metrics/benchmark.json").read_text())
    assert benchmark["p50_ms"]["ort_fp32"] > 0
