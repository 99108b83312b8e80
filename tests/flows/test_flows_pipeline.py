"""The Prefect pipeline flow: DVC's order, DVC's skip decisions, named failures, retries."""

import json
import subprocess

import pytest
import yaml

import flows.pipeline
from flows.pipeline import pipeline, run_stage
from rarespecies.ops.pipeline import StageFailed, pipeline_stages

from conftest import ROOT, project_copy, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def test_stage_order_is_read_from_dvc_yaml():
    order = pipeline_stages(ROOT)
    assert order[0] == "ingest"
    for before, after in [("validate", "split"), ("preprocess@convnext_base",
                          "features@convnext_base"), ("features@convnext_base",
                          "train@convnext_full"), ("evaluate@convnext_full", "select"),
                          ("train@densenet121", "select"), ("select", "export"),
                          ("features@convnext_base", "export_backbone@convnext_base"),
                          ("export_backbone@convnext_base", "export"),
                          ("export_backbone@convnext_base", "quantize_backbone@convnext_base"),
                          ("quantize_backbone@convnext_base", "quantize"),
                          ("export", "quantize"), ("quantize", "benchmark"),
                          ("select", "tf_baseline"), ("tf_baseline", "benchmark"),
                          ("quantize", "model_card"), ("train@custom_cnn", "evaluate@custom_cnn"),
                          ("evaluate@convnext_mini", "leaderboard")]:
        assert order.index(before) < order.index(after)
    assert len(order) == len(set(order)) == 27


def edit_params(project, change):
    path = project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    change(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return lambda: path.write_text(original)


def test_flow_skips_unchanged_stages_and_runs_changed_ones(reproduced, harness):
    project, _ = reproduced
    result = pipeline(str(project))
    assert [r["stage"] for r in result["stages"]] == pipeline_stages(project)
    assert not any(r["ran"] for r in result["stages"])
    assert 0 <= result["metrics"]["custom_cnn"]["custom_cnn"]["f1"] <= 1
    restore = edit_params(project, lambda p: p["models"]["custom_cnn"]["training"].update(
        epochs=2))
    try:
        result = pipeline(str(project))
        assert {r["stage"] for r in result["stages"] if r["ran"]} == {
            "train@custom_cnn", "evaluate@custom_cnn", "leaderboard", "select"}
    finally:
        restore()
        run("dvc", "repro", cwd=project)  # back to the reproduced state, from the run cache


def test_failing_stage_fails_the_flow_naming_it(reproduced, harness):
    project, _ = reproduced
    restore = edit_params(project, lambda p: p["ingest"].update(max_side=1))
    try:
        with pytest.raises(StageFailed, match=r"stage ingest failed: .*ingest\.max_side"):
            pipeline(str(project))
    finally:
        restore()
    # The failed stage counts as changed; the next run brings it back (from DVC's run cache:
    # same inputs as before) and leaves everything downstream alone.
    assert run("dvc", "status", "ingest", cwd=project).stdout.strip() != \
        "Data and pipelines are up to date."
    result = pipeline(str(project))
    assert {r["stage"] for r in result["stages"] if r["status"] != "skipped (unchanged)"} == \
        {"ingest"}
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}


def test_command_line_reports_a_failed_stage_in_one_line(tiny_project, tmp_path):
    """Prefect logs the failed runs; the traceback only with --debug."""
    import shutil
    import sys

    project = tmp_path / "project"
    shutil.copytree(tiny_project, project, symlinks=True)
    edit_params(project, lambda p: p["ingest"].update(max_side=1))
    command = (sys.executable, "-m", "flows.pipeline", str(project))
    proc = run(*command, cwd=ROOT, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "Task run 'ingest' - Finished in state Failed" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pipeline: error:")]
    assert len(errors) == 1 and "stage ingest failed" in errors[0] and "max_side" in errors[0]
    debug = run(*command, "--debug", cwd=ROOT, check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_lock_contention_is_retried_data_errors_are_not(monkeypatch, harness, tmp_path):
    calls = []
    replies = iter([(1, "ERROR: Unable to acquire lock"), (0, "Running stage 'x'")])

    def fake_dvc(*args, cwd, on_line=None):
        # DVC's output as the flow reads it: streamed line by line, then returned whole.
        calls.append(args)
        code, out = next(replies)
        for line in out.splitlines():
            on_line(line)
        return subprocess.CompletedProcess(args, code, stdout=out, stderr="")

    monkeypatch.setattr(flows.pipeline, "dvc", fake_dvc)
    quick = run_stage.with_options(retry_delay_seconds=0)
    assert quick("x", str(tmp_path))["ran"] is True and len(calls) == 2

    replies = iter([(1, "ERROR: params.yaml: bad value")] * 3)
    calls.clear()
    with pytest.raises(StageFailed, match="bad value"):
        quick("x", str(tmp_path))
    assert len(calls) == 1


def test_killed_stage_leaves_no_partial_output_and_the_next_run_completes_it(reproduced,
                                                                           harness, tmp_path):
    import os
    import signal
    import sys
    import time

    project = project_copy(reproduced[0], tmp_path / "project")
    edit_params(project, lambda p: p["models"]["custom_cnn"]["training"].update(
        epochs=60, patience=60))  # seconds of training: killed after its first epoch
    log = (tmp_path / "flow.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.pipeline", str(project)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state = project / "checkpoints/custom_cnn/state.json"
    deadline = time.monotonic() + 600
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state.is_file(), (tmp_path / "flow.log").read_text()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the whole flow, DVC and the stage, mid-epoch
    proc.wait()
    while time.monotonic() < deadline:  # until the grandchildren are gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)

    # Nothing half-written: DVC removed the old model before the stage ran, and the stage
    # writes its model atomically, so there is none; DVC reports the stage as changed.
    model_dir = project / "models/custom_cnn"
    assert not (model_dir / "model.keras").exists()
    assert "train@custom_cnn" in json.loads(run("dvc", "status", "--json", cwd=project).stdout)

    result = pipeline(str(project))  # resumes from the epoch checkpoint and finishes
    ran = {r["stage"] for r in result["stages"] if r["ran"]}
    assert {"train@custom_cnn", "evaluate@custom_cnn"} <= ran
    assert (model_dir / "model.keras").is_file() and not state.exists()
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}
