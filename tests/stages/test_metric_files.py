"""Every metrics file dvc.yaml declares holds only numbers (and booleans), after a real run:
`dvc exp show` makes a column of each key, and a string or a list there is a column nobody
compares (rarespecies.core.files.write_metrics refuses them; this checks no stage bypasses
it). Strings, reasons, thresholds and sizes belong in the stage's report."""

import json
import math
from pathlib import Path

import pytest

from conftest import run

pytestmark = pytest.mark.slow


def declared_metrics(project: Path) -> set[str]:
    """The metrics files of every stage, foreach entries expanded, relative to `project`."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {out.def_path for stage in repo.index.stages for out in stage.metrics}


def leaves(value: object, key: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of nested mappings."""
    if isinstance(value, dict):
        return [pair for name, inner in value.items()
                for pair in leaves(inner, f"{key}.{name}" if key else name)]
    return [(key, value)]


def test_every_declared_metrics_file_holds_only_numbers(reproduced):
    project, _ = reproduced
    declared = declared_metrics(project)
    assert {"metrics/export.json", "metrics/quantize.json", "metrics/benchmark.json",
            "metrics/models/convnext_full.json"} <= declared
    for path in sorted(declared):
        for key, value in leaves(json.loads((project / path).read_text())):
            assert isinstance(value, int | float) and math.isfinite(value), (
                f"{path}: {key} is {value!r}: move it to the stage's report (reports/*.json)")
    # What DVC reads is exactly those files (no declared file missing, none unreadable).
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=project).stdout)
    files = next(iter(shown.values()))["data"]
    assert set(files) == declared and not any("error" in f for f in files.values())
