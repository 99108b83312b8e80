"""Two workers, two checkouts, one DVC remote: the second restores what the first pushed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from flows.promotion import md5

from conftest import run

pytestmark = pytest.mark.slow
STAGES = ["ingest", "validate", "split", "preprocess@pixels", "train@custom_cnn"]


def _worker(checkout: Path, *stages: str) -> str:
    """One worker process: the flow's command line in its own checkout."""
    return run(sys.executable, "-m", "flows.distributed", "--checkout", str(checkout), *stages,
               cwd=Path(__file__).parents[1]).stdout


@pytest.fixture(scope="module")
def checkouts(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory):
    """Checkouts a and b of the tiny project, sharing a local-folder DVC remote holding data/."""
    base = tmp_path_factory.mktemp("workers")
    for name in "ab":
        run("git", "clone", "-q", str(tiny_project), str(base / name), cwd=base)
        run("dvc", "remote", "add", "--local", "-d", "shared", str(base / "remote"),
            cwd=base / name)
    shutil.copytree(tiny_project / "data", base / "a/data")
    run("dvc", "commit", "-f", "-q", "data.dvc", cwd=base / "a")
    run("dvc", "push", "-q", "data.dvc", cwd=base / "a")
    return base / "a", base / "b"


def test_second_worker_restores_what_the_first_pushed(checkouts):
    a, b = checkouts
    first = _worker(a, *STAGES)
    assert all(f"{stage}: ran" in first for stage in STAGES), first
    second = _worker(b, *STAGES)  # b starts with neither data nor outputs
    # data/ came from the remote (b never had it), and the stage whose outputs are all in
    # the DVC cache was restored from the remote, not recomputed: same array files.
    assert "preprocess@pixels: restored from the remote" in second, second
    arrays = "artifacts/arrays/pixels"
    assert sorted(p.name for p in (b / arrays).iterdir()) == sorted(
        p.name for p in (a / arrays).iterdir())
    assert all(md5(f) == md5(b / arrays / f.name) for f in (a / arrays).iterdir() if f.is_file())
    # Stages with git-tracked outputs (metrics, reports: `cache: false`) cannot travel through
    # the DVC remote and run again; the checkout ends complete either way.
    assert "Running stage" not in run("dvc", "repro", "--single-item", *STAGES, cwd=b).stdout


def test_a_checkout_without_remote_is_refused(tmp_path, tiny_project):
    run("git", "clone", "-q", str(tiny_project), str(tmp_path / "c"), cwd=tmp_path)
    proc = run(sys.executable, "-m", "flows.distributed", "--checkout", str(tmp_path / "c"),
               "ingest", cwd=Path(__file__).parents[1], check=False)
    assert proc.returncode == 1
    assert "has no DVC remote: add one shared by all workers" in proc.stderr
    assert "Traceback" not in proc.stderr
