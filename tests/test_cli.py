"""`rarespecies sample` / `ensure-data`: the committed data.dvc pins the regenerated sample."""

import shutil

import pytest
import yaml

from conftest import ROOT, run

pytestmark = pytest.mark.slow


@pytest.fixture
def dvc_project(tmp_path):
    """An empty DVC project holding a copy of the committed data.dvc."""
    run("git", "init", "-q", cwd=tmp_path)
    run("dvc", "init", "-q", cwd=tmp_path)
    shutil.copy(ROOT / "data.dvc", tmp_path / "data.dvc")
    return tmp_path


def test_regenerated_sample_matches_committed_data_dvc(dvc_project):
    run("rarespecies", "ensure-data", cwd=dvc_project)
    status = run("dvc", "status", "--json", "data.dvc", cwd=dvc_project)
    assert status.stdout.strip() == "{}", status.stdout
    # The check can fail: one changed byte makes DVC report the data as modified.
    image = next((dvc_project / "data").rglob("*.jpg"))
    image.write_bytes(image.read_bytes()[:-1] + b"\0")
    assert run("dvc", "status", "--json", "data.dvc", cwd=dvc_project).stdout.strip() != "{}"
    # ensure-data notices and regenerates the pinned sample.
    run("rarespecies", "ensure-data", cwd=dvc_project)
    assert run("dvc", "status", "--json", "data.dvc", cwd=dvc_project).stdout.strip() == "{}"


def test_data_dvc_pinning_other_data_is_a_clear_error(dvc_project):
    pinned = yaml.safe_load((dvc_project / "data.dvc").read_text())
    pinned["outs"][0]["md5"] = "0" * 32 + ".dir"
    (dvc_project / "data.dvc").write_text(yaml.safe_dump(pinned))
    proc = run("rarespecies", "ensure-data", cwd=dvc_project, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]  # after the generator's progress bar
    assert "Traceback" not in proc.stderr
    assert last.startswith("error: ") and "does not match data.dvc" in last and "dvc pull" in last


def test_sample_command_reports_what_it_wrote(tmp_path):
    proc = run("rarespecies", "sample", "--tiny", "--out", str(tmp_path / "d"), cwd=tmp_path)
    assert "synthetic images of 4 families" in proc.stdout
    assert (tmp_path / "d/metadata.csv").is_file()
    bad = run("rarespecies", "sample", "--tiny", "--seed", "-1", "--out", str(tmp_path / "e"),
              cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_data_comes_from_the_remote_when_it_can(dvc_project, tmp_path_factory):
    run("rarespecies", "ensure-data", cwd=dvc_project)
    remote = tmp_path_factory.mktemp("remote")
    run("dvc", "remote", "add", "-d", "store", str(remote), cwd=dvc_project)
    run("dvc", "push", "-q", "data.dvc", cwd=dvc_project)

    def forget_data():
        shutil.rmtree(dvc_project / "data")
        shutil.rmtree(dvc_project / ".dvc/cache")

    forget_data()
    proc = run("rarespecies", "ensure-data", cwd=dvc_project)
    assert "pulled from the DVC remote" in proc.stdout and "wrote" not in proc.stdout
    forget_data()
    run("dvc", "remote", "modify", "store", "url", str(remote / "gone"), cwd=dvc_project)
    proc = run("rarespecies", "ensure-data", cwd=dvc_project)
    assert "could not provide" in proc.stdout and "synthetic images" in proc.stdout
    assert run("dvc", "status", "--json", "data.dvc", cwd=dvc_project).stdout.strip() == "{}"
