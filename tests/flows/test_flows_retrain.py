"""The retrain flow end to end on the tiny profile, and its schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.retrain import DEFAULT_CRON, retrain
from rarespecies.ops.promotion import md5, read_registry

from conftest import ROOT, project_copy, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture(scope="module")
def project(reproduced, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the reproduced tiny project with a local-folder DVC remote, for this module."""
    base = tmp_path_factory.mktemp("retrain")
    project = project_copy(reproduced[0], base / "project")
    run("dvc", "remote", "add", "--local", "-d", "shared", str(base / "remote"), cwd=project)
    return project


def _in_remote(project: Path, md5_hex: str) -> bool:
    remote = Path(run("dvc", "remote", "list", cwd=project).stdout.split()[1])
    return (remote / "files/md5" / md5_hex[:2] / md5_hex[2:]).is_file()


def _head(project: Path) -> str:
    return run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()


def test_first_run_promotes_and_a_second_changes_nothing(project, harness):
    first = retrain(str(project))
    assert first["promoted"] and first["reason"].startswith("first promotion")
    entry = read_registry(project)["current"]
    assert entry == first["entry"] and entry["version"] == 1
    assert md5(project / "deploy/model.onnx") == md5(project / "export/model.onnx") == \
        entry["onnx_md5"]
    assert (project / "deploy/model.int8.onnx").is_file() == (entry["int8_md5"] is not None)
    data_md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert entry["data_md5"] == data_md5 and entry["git_revision"]
    # Pushed before the promotion: downstream can fetch the model with `dvc get --rev model-v1`.
    assert entry["dvc_remote"] == "shared" and _in_remote(project, entry["onnx_md5"])
    assert _in_remote(project, md5(project / "reports/model_card.md"))
    # The promotion is a commit (dvc.lock, metrics, registry) tagged model-v1.
    assert run("git", "describe", "--exact-match", "--tags", cwd=project).stdout.strip() == \
        "model-v1"
    assert run("git", "status", "--porcelain", cwd=project).stdout == ""
    head, registry = _head(project), (project / "deploy/registry.json").read_bytes()

    second = retrain(str(project))
    assert not second["promoted"]
    assert second["reason"] == "the candidate is the promoted model v1 (same file)"
    assert not any(stage["ran"] for stage in second["stages"])
    assert _head(project) == head and (project / "deploy/registry.json").read_bytes() == registry
    assert run("git", "status", "--porcelain", cwd=project).stdout == ""


def test_deployment_file_and_serve_share_the_schedule(harness):
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    weekly = deployments["weekly"]
    assert [s["cron"] for s in weekly["schedules"]] == [DEFAULT_CRON]
    for deployment in deployments.values():  # every entrypoint names a real flow
        path, name = deployment["entrypoint"].split(":")
        assert load_flow_from_entrypoint(f"{ROOT / path}:{name}").name in {
            "retrain", "pipeline", "remote-stages"}

    # What `python -m flows.retrain serve` registers, read back from the Prefect API.
    deployment_id = retrain.to_deployment(name="weekly", cron=DEFAULT_CRON).apply()
    with get_client(sync_client=True) as client:
        schedules = client.read_deployment(deployment_id).schedules
    assert [s.schedule.cron for s in schedules] == [DEFAULT_CRON]


def test_a_candidate_on_new_data_is_judged_on_its_test_split_and_can_be_refused(project,
                                                                               harness):
    """New data acquired by the run itself, and a changed head: everything reruns, the promoted
    model is scored again on the new test split, and min_gain refuses the candidate."""
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["models"]["convnext_full"]["head"]["dropout"] = 0.1
    params["promote"] = {"min_gain": 1.0, "max_p50_ms": 10_000}  # no model gains 100 points
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    data_before = (project / "data.dvc").read_text()
    promoted = md5(project / "deploy/model.onnx")

    result = retrain(str(project), acquire_command="sample --tiny --seed 7")
    assert (project / "data.dvc").read_text() != data_before  # acquired and versioned
    assert {"ingest", "split", "train@convnext_full", "export"} <= {
        s["stage"] for s in result["stages"] if s["ran"]}
    assert not result["promoted"]
    assert "(on the same test images)" in result["reason"]
    assert result["reason"].endswith("below promote.min_gain 100.00")
    assert result["candidate"]["data_md5"] != read_registry(project)["current"]["data_md5"]
    assert md5(project / "export/model.onnx") != promoted  # a new candidate was built...
    assert md5(project / "deploy/model.onnx") == promoted  # ...and downstream kept the old one
    assert read_registry(project)["current"]["version"] == 1


@pytest.mark.parametrize(("exit_code", "attempts"), [(75, 3), (1, 1)],
                         ids=["network-retried", "bad-catalogue-not-retried"])
def test_acquire_retries_only_what_may_succeed_later(harness, monkeypatch, tmp_path,
                                                     exit_code, attempts):
    """`rarespecies acquire` exits 75 when a later try may succeed (tests/test_cli.py)."""
    import subprocess

    from prefect import flow

    from flows import retrain as module
    from rarespecies.core.console import Failure
    from rarespecies.ops import retraining

    calls = []

    def failing(args, root):
        calls.append(args)
        return subprocess.CompletedProcess(args, exit_code, "", "error: the reason")

    monkeypatch.setattr(retraining, "_run", failing)

    @flow
    def acquire_only():
        module.acquire.with_options(retry_delay_seconds=0)("eol --catalog new.csv", str(tmp_path))

    with pytest.raises(Failure) as caught:
        acquire_only()
    assert str(caught.value) == "acquire eol --catalog new.csv failed: error: the reason"
    assert len(calls) == attempts and caught.value.transient == (exit_code == 75)


def test_an_acquisition_without_a_usable_row_stops_the_run(harness, monkeypatch, tmp_path):
    """A header-only catalogue makes `rarespecies acquire eol` exit 1: the flow stops there,
    not retried, and never runs the pipeline on whatever data/ held."""
    from flows import retrain as module
    from rarespecies.core.console import Failure

    (tmp_path / "new.csv").write_text(
        "eol_content_id,eol_page_id,md5,eol_full_size_copy_url,phylum,family\n")
    ran = []
    monkeypatch.setattr(module, "pipeline", ran.append)
    with pytest.raises(Failure) as caught:
        retrain(str(tmp_path), acquire_command="eol --catalog new.csv --no-version")
    assert "has no rows" in str(caught.value) and caught.value.transient is False
    assert ran == []
