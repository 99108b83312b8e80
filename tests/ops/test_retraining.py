"""A committing retrain run: refused on a dirty tracked tree; the tag holds what the registry
describes. And the deployment name `serve` may not take."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rarespecies.core.console import Failure
from rarespecies.core.files import read_json
from rarespecies.ops.promotion import promote
from rarespecies.ops.retraining import (
    check_serve_name,
    commit_promotion,
    declared_deployments,
    require_clean_tree,
)

IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@localhost"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *IDENTITY, *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed project: params, code, a DVC lock and metrics, a trained model file."""
    files = {"params.yaml": "promote:\n  min_gain: 0.01\n", "dvc.lock": "schema: '2.0'\n",
             "metrics/export.json": "{}\n", "rarespecies/ops/x.py": "X = 1\n",
             ".gitignore": "/export/\n/deploy/*.onnx\n", "export/model.onnx": "fp32 v1"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "project")
    return tmp_path


def test_a_clean_tree_and_the_files_a_run_writes_are_accepted(repo):
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # the pipeline writes these
    (repo / "metrics/export.json").write_text('{"model": "m"}\n')
    (repo / "notes.txt").write_text("untracked: never committed by the run\n")
    require_clean_tree(repo)


@pytest.mark.parametrize("edit", ["params.yaml", "rarespecies/ops/x.py"])
def test_an_edited_tracked_file_stops_a_committing_run_naming_it(repo, edit):
    (repo / edit).write_text("changed\n")
    (repo / "dvc.lock").write_text("changed\n")
    with pytest.raises(Failure) as caught:
        require_clean_tree(repo)
    message = str(caught.value)
    assert message.startswith(f"uncommitted changes to {edit}: a promotion commit would leave")
    assert "dvc.lock" not in message and "\n" not in message
    assert message.endswith("commit or revert them, or run with commit off (--no-commit)")


def test_a_staged_deletion_and_a_project_in_a_subfolder_are_seen(tmp_path, repo):
    git(repo, "rm", "-q", "rarespecies/ops/x.py")
    with pytest.raises(Failure, match=r"uncommitted changes to rarespecies/ops/x\.py:"):
        require_clean_tree(repo)
    outer = tmp_path / "outer"
    (outer / "project").mkdir(parents=True)
    (outer / "project/params.yaml").write_text("a: 1\n")
    git(outer, "init", "-q")
    git(outer, "add", "-A")
    git(outer, "commit", "-qm", "outer")
    (outer / "project/params.yaml").write_text("a: 2\n")
    with pytest.raises(Failure, match=r"uncommitted changes to params\.yaml:"):
        require_clean_tree(outer / "project")


def test_outside_git_there_is_nothing_to_check(tmp_path):
    require_clean_tree(tmp_path)


def test_the_tag_holds_the_params_lock_and_registry_of_the_promotion(repo):
    source = git(repo, "rev-parse", "HEAD").strip()
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {train: {}}\n")
    entry = promote(repo, {"model": "m", "macro_f1": 0.5, "onnx_md5": "a",
                           "source_revision": source}, "first promotion", tagged=True)
    assert commit_promotion(repo, entry) == "model-v1"
    tagged = git(repo, "rev-parse", "model-v1^{commit}").strip()
    assert tagged == git(repo, "rev-parse", "HEAD").strip() != source
    recorded = read_json(repo / "deploy/registry.json")["current"]
    assert recorded["git_tag"] == "model-v1" and recorded["source_revision"] == source
    # Checking out the tag gives the registry, lock and params the promotion describes.
    assert git(repo, "show", "model-v1:deploy/registry.json") == \
        (repo / "deploy/registry.json").read_text()
    assert git(repo, "show", "model-v1:dvc.lock") == (repo / "dvc.lock").read_text()
    assert git(repo, "show", "model-v1:params.yaml") == git(repo, "show", f"{source}:params.yaml")
    assert git(repo, "status", "--porcelain") == ""


def test_an_untagged_entry_is_not_committed(repo):
    entry = promote(repo, {"model": "m", "macro_f1": 0.5}, "first", tagged=False)
    assert commit_promotion(repo, entry) is None


def test_serve_may_not_take_a_name_prefect_yaml_declares(tmp_path):
    prefect_yaml = tmp_path / "prefect.yaml"
    prefect_yaml.write_text("deployments:\n  - name: weekly\n  - name: pipeline\n")
    assert declared_deployments(prefect_yaml) == {"weekly", "pipeline"}
    check_serve_name("served", prefect_yaml, "served")
    with pytest.raises(Failure, match=r"^deployment name 'weekly' is declared in prefect\.yaml "
                       r".*choose another --name \(default 'served'\)$"):
        check_serve_name("weekly", prefect_yaml, "served")
    assert declared_deployments(tmp_path / "missing.yaml") == set()


def test_no_stage_declares_the_promote_params():
    """`promote:` is read by the retrain flow at decision time, never by a stage: declared in
    dvc.yaml, a change of a gate's setting would rerun stages for nothing."""
    import yaml

    from conftest import ROOT

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    # an entry is a params.yaml key, or {file: [keys]} for another params file
    declared = [str(key) for stage in stages.values() for entry in stage.get("params", [])
                for key in ([k for keys in entry.values() for k in keys or []]
                            if isinstance(entry, dict) else [entry])]
    assert declared and not [key for key in declared if key.split(".")[0] == "promote"]
