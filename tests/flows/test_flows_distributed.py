"""Two workers, two checkouts, one DVC remote: the second restores what the first pushed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from rarespecies.ops.promotion import md5

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
    # data/ came from the remote (b never had it) and no stage ran again: each was restored
    # from the run cache a pushed, the trained model byte for byte.
    assert all(f"{stage}: restored from the remote" in second for stage in STAGES), second
    for name in ("artifacts/arrays/pixels", "models/custom_cnn/model.keras", "reports"):
        assert _md5s(b / name) == _md5s(a / name), name
    assert "Running stage" not in run("dvc", "repro", "--single-item", *STAGES, cwd=b).stdout


def _md5s(path: Path) -> dict[str, str]:
    """md5 of each file under `path` (or of `path` itself), by relative name."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f.relative_to(path)) if path.is_dir() else f.name: md5(f) for f in files}


def test_a_checkout_without_remote_is_refused(tmp_path, tiny_project):
    run("git", "clone", "-q", str(tiny_project), str(tmp_path / "c"), cwd=tmp_path)
    proc = run(sys.executable, "-m", "flows.distributed", "--checkout", str(tmp_path / "c"),
               "ingest", cwd=Path(__file__).parents[1], check=False)
    assert proc.returncode == 1
    assert "has no DVC remote: add one shared by all workers" in proc.stderr
    assert "Traceback" not in proc.stderr
