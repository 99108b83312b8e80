"""Every params.yaml key a stage's code reads is declared under its `params:` in dvc.yaml.

DVC reruns a stage only when a declared key changes: an undeclared read leaves its outputs
stale, silently. Each stage's own code is run (through `param_access`, which records the keys
read) in a copy of the reproduced tiny project and compared with what `dvc.lock` says the
stage declares. Only the code paths the tiny profile takes are seen.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from param_access import covered, record, undeclared, unread

from rarespecies.config.params import FullHead, Params, parse_params

from conftest import ROOT, run, tiny_params

TESTS = Path(__file__).parents[1]
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


def recorded_run(project: Path, out: Path, module: str, *args: str) -> set[str]:
    """Run `python -m module args` in `project`, returning the params keys it read."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", path)
        run(sys.executable, "-m", "param_access", str(out), module, *args, cwd=project)
    return set(json.loads(out.read_text()))


def test_runner_reports_a_fake_stage_reading_an_undeclared_key(tmp_path: Path):
    """The runner's proxy reaches `load_params` as a stage imports it, via `stage_main`."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    (tmp_path / "fake_stage.py").write_text(FAKE_STAGE)
    reads = recorded_run(tmp_path, tmp_path / "reads.json", "fake_stage", "convnext_full")
    assert reads == {"models.convnext_full.training.epochs"}
    assert undeclared(reads, ["models.convnext_full.head"]) == [
        "models.convnext_full.training.epochs"]


@pytest.fixture(scope="module")
def stage_runs(reproduced: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Stage name (as dvc.lock expands it) -> (keys its code read, keys it declares).

    Every stage reruns its command in a copy of the reproduced project (stages write
    outputs; other tests expect the reproduced one unchanged), in dvc.yaml's order.
    """
    source, _ = reproduced
    work = tmp_path_factory.mktemp("declared-params")
    project = work / "project"
    shutil.copytree(source, project, symlinks=True,
                    ignore=lambda folder, _: ["cache", "tmp"] if folder.endswith(".dvc") else [])
    runs: Runs = {}
    for name, entry in yaml.safe_load((project / "dvc.lock").read_text())["stages"].items():
        python, flag, module, *args = shlex.split(entry["cmd"])
        assert (python, flag) == ("python", "-m"), f"{name}: unexpected cmd {entry['cmd']}"
        reads = recorded_run(project, work / f"{name}.json", module, *args)
        runs[name] = reads, list(entry.get("params", {}).get("params.yaml", {}))
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
