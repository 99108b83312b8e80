"""Prefect flow `remote-stages`: run stages in this worker's checkout, share them through a DVC
remote (`rarespecies.ops.remote` says how a stage is pulled, restored or run).

    RARESPECIES_CHECKOUT=/work/checkout-a prefect worker start --pool rarespecies
    python -m flows.distributed --checkout /work/checkout-b ingest validate split

A local folder is enough as remote for a test (`dvc remote add -d shared /srv/dvc-remote`);
for several machines use S3 or SSH (see README).
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from prefect import flow, get_run_logger, task

from flows.common import flow_errors, transient_failure
from rarespecies.core.console import Debug, run_command
from rarespecies.core.dvc import dvc
from rarespecies.ops.pipeline import pipeline_stages, stage_failure, stage_line_logger
from rarespecies.ops.remote import push_run_cache_objects, remote_outcome, worker_checkout


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=transient_failure,
      task_run_name="{stage}")
def remote_stage(stage: str, checkout: str) -> dict:
    """Fetch the run cache, let DVC run or restore the stage, push what it produced."""
    start = time.perf_counter()
    steps = (("fetch", ["fetch", "--run-cache", "--quiet"]),
             ("repro", ["repro", "--pull", "--single-item", stage]),
             ("push", ["push", "--run-cache", stage]))
    had_work = bool(json.loads(dvc("status", "--json", stage, cwd=checkout).stdout or "{}"))
    outputs = {}
    lines = stage_line_logger(get_run_logger())  # the stage's progress, as it comes
    for name, args in steps:
        proc = dvc(*args, cwd=checkout, on_line=lines if name == "repro" else None)
        if proc.returncode != 0:
            raise stage_failure(stage, proc, f"dvc {name}")
        outputs[name] = proc.stdout + proc.stderr
    push_run_cache_objects(checkout)
    outcome = remote_outcome(outputs["repro"], stage, had_work)
    seconds = round(time.perf_counter() - start, 1)
    get_run_logger().info("%s in %s: %s (%.1f s, pushed to the remote)", stage, checkout,
                          outcome, seconds)
    return {"stage": stage, "outcome": outcome, "seconds": seconds}


@flow(name="remote-stages", log_prints=True)
def remote_stages(stages: list[str] | None = None, checkout: str | None = None) -> list[dict]:
    """Run `stages` (default: the whole pipeline, in order) in this worker's checkout.

    Args:
        stages: stage names such as `train@custom_cnn`; their upstream stages must have run
            somewhere (here, or on a worker that pushed them).
        checkout: the project checkout; default $RARESPECIES_CHECKOUT or the current folder.

    Returns:
        One {"stage", "outcome", "seconds"} per stage; outcome is `ran`, `restored from
        the remote` (run cache), `pulled from the remote` (dvc.lock) or `up to date`.
    """
    root = worker_checkout(checkout)
    return [remote_stage(stage, str(root)) for stage in stages or pipeline_stages(root)]


def main(
    stages: Annotated[list[str] | None, typer.Argument(help="Stages (default: all).")] = None,
    checkout: Annotated[str | None, typer.Option(help="Project checkout.")] = None,
    debug: Debug = False,
) -> None:
    """Run stages in one checkout, sharing results with other workers via the DVC remote."""
    with flow_errors("remote-stages", debug):
        worker_checkout(checkout)  # fail in one line before Prefect starts
        for result in remote_stages(stages, checkout):
            typer.echo(f"{result['stage']}: {result['outcome']} ({result['seconds']} s)")


if __name__ == "__main__":
    run_command(main)
