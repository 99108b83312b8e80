"""Every params.yaml key a stage's code reads is declared under its `params:` in dvc.yaml.

DVC reruns a stage only when a declared key changes: an undeclared read leaves its outputs
stale, silently. Every stage of the fresh clone's pipeline run (conftest's `fresh_clone`)
records the keys it reads (`param_access`), which are compared with what `dvc.lock` says the
stage declares. Only the code paths the tiny profile takes are seen.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from param_access import covered, record, undeclared, unread

from rarespecies.config.params import FullHead, Params, parse_params

from conftest import ROOT, TESTS, run, tiny_params

DVC_STAGES: dict = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
Runs = dict[str, tuple[set[str], list[str]]]


def reads_of(read: Callable[[Params], object]) -> tuple[object, set[str]]:
    """What `read(params)` returns on the tiny params, and the keys it read."""
    reads: set[str] = set()
    return read(record(parse_params(tiny_params()), reads)), reads


def test_reads_through_params_methods_and_properties():
    """`backbone_of` and `end_to_end` run on the proxy: their own reads count, and only those
    actually evaluated (`active` stops at densenet121's `flip: true`)."""
    value, reads = reads_of(lambda p: p.backbone_of("convnext_full").input_size)
    assert value == 32
    assert reads == {"models.convnext_full.backbone", "backbones.convnext_base.input_size"}
    value, reads = reads_of(lambda p: p.model("densenet121").end_to_end)
    assert value is True
    assert reads == {"models.densenet121.head.type",
                     "models.densenet121.training.augmentation.flip"}
    value, reads = reads_of(lambda p: isinstance(p, Params)
                            and isinstance(p.model("convnext_full").head, FullHead))
    assert value is True and reads == set()  # stage code may type-check what it is given


def test_dumps_listings_and_aliases_are_recorded():
    """A dump reads every field it returns; listing a section's names reads the section."""
    dump, reads = reads_of(lambda p: p.backbone("pixels").model_dump(exclude={"batch_size"}))
    assert "batch_size" not in dump
    assert reads == {f"backbones.pixels.{k}" for k in dump}
    names, reads = reads_of(lambda p: [name for name, _ in p.models.items()])
    assert len(names) == 5 and reads == {"models"}
    _, reads = reads_of(lambda p: p.validate_.strict)
    assert reads == {"validate.strict"}  # the params.yaml name, not the Python one


def test_coverage_is_on_dot_boundaries():
    reads = {"split.seed", "ingest.max_side"}
    assert undeclared(reads, ["split"]) == ["ingest.max_side"]
    assert undeclared(reads, ["split.see", "ingest.max_side"]) == ["split.seed"]
    assert covered("models.a.head", ["models.a"]) and not covered("models.ab", ["models.a"])
    assert unread(reads, ["split", "ingest.max_side.x", "data.dir"]) == ["data.dir"]
    assert undeclared({""}, ["split"]) == [""] and unread({""}, ["split"]) == []  # a full dump


FAKE_STAGE = '''
from rarespecies.config.params import load_params
from rarespecies.core.console import run_command, run_stage


def main(model: str):
    run_stage("fake", lambda: str(load_params().model(model).training.epochs))


if __name__ == "__main__":
    run_command(main)
'''


def test_the_recorder_sees_what_a_stage_reads(tmp_path: Path):
    """The recording reaches `load_params` however the stage imports it, as in the fresh
    clone's run: through tests/recording/sitecustomize.py in a stage's own process."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/__init__.py").write_text("")
    (tmp_path / "stages/fake.py").write_text(FAKE_STAGE)
    (tmp_path / "reads").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS / "recording"), str(TESTS)]))
        patch.setenv("RARESPECIES_PARAM_READS", str(tmp_path / "reads"))
        run(sys.executable, "-m", "stages.fake", "convnext_full", cwd=tmp_path)
    reads = set(json.loads((tmp_path / "reads/fake@convnext_full.json").read_text()))
    assert reads == {"models.convnext_full.training.epochs"}
    assert undeclared(reads, ["models.convnext_full.head"]) == [
        "models.convnext_full.training.epochs"]


@pytest.fixture(scope="module")
def stage_runs(fresh_clone) -> Runs:
    """Stage name (as dvc.lock expands it) -> (keys its code read, keys it declares), from the
    fresh clone's pipeline run, where every stage process recorded its reads."""
    lock = yaml.safe_load((fresh_clone.clone / "dvc.lock").read_text())["stages"]
    runs: Runs = {}
    for name, entry in lock.items():
        recorded = fresh_clone.reads / f"{name}.json"
        if recorded.is_file():  # stages restored from the cache did not run: nothing to record
            runs[name] = (set(json.loads(recorded.read_text())),
                          list(entry.get("params", {}).get("params.yaml", {})))
    return runs


def outline(keys: list[str]) -> str:
    """The outermost of `keys`, each with a few of the deeper ones read too."""
    parts = []
    for top in (k for k in keys if not any(covered(k, [o]) for o in keys if o != k)):
        under = [k for k in keys if k != top and covered(k, [top])]
        more = (f" (and {len(under)} under it: {', '.join(under[:3])}"
                f"{', ...' if len(under) > 3 else ''})") if under else ""
        parts.append(f"`{top or '<all of params.yaml>'}`{more}")
    return "; ".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(DVC_STAGES))
def test_stage_declares_every_param_it_reads(stage: str, stage_runs: Runs):
    """Undeclared reads leave stale outputs; declared keys never read rerun it for nothing."""
    runs = {name: found for name, found in stage_runs.items() if name.partition("@")[0] == stage}
    assert runs, f"stage {stage} of dvc.yaml is not in the reproduced dvc.lock"
    where = f"stages.{stage}.{'do.' if 'foreach' in DVC_STAGES[stage] else ''}params"
    problems = []
    for name, (reads, declared) in runs.items():
        if missing := undeclared(reads, declared):
            problems.append(f"{name} reads params.yaml keys dvc.yaml does not declare: "
                            f"{outline(missing)}. Declare each (or a parent key) under {where} "
                            "in dvc.yaml, or stop reading it.")
        if extra := unread(reads, declared):
            problems.append(f"{name} declares keys its code never reads: {', '.join(extra)}. "
                            f"Remove them from {where} in dvc.yaml (they rerun it for nothing).")
    assert not problems, "\n".join(problems)
