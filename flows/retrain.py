"""Prefect flow `retrain`: new data in, pipeline run, and a promotion only for a better model.

    python -m flows.retrain [--root .] [--acquire "eol --catalog new.csv"] [--no-commit]
    python -m flows.retrain serve --cron "0 3 * * 1"

Steps: optionally acquire data (any `rarespecies acquire` command, which also runs
`dvc add data`), run the `pipeline` flow (DVC skips what did not change), compare the
candidate with the promoted model (`rarespecies.ops.promotion`) and promote it only when test
macro F1 improves by `promote.min_gain` and the ONNX parity and latency gates pass. A promotion
copies the model to `deploy/`, records it in `deploy/registry.json`, pushes the export to the
DVC remote when one is configured, and commits and tags (`model-vN`) the run in git. With no
new data, a second run changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from prefect import flow, get_run_logger, task

from flows.common import flow_errors, transient_failure
from flows.pipeline import pipeline
from rarespecies.config.params import read_params
from rarespecies.core.console import Debug
from rarespecies.core.dvc import project_root
from rarespecies.ops.promotion import candidate, decide, promote, read_registry, rescore_promoted
from rarespecies.ops.retraining import acquire_data, commit_promotion, push_release

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00 UTC; prefect.yaml's deployment uses the same


@task(retries=2, retry_delay_seconds=60, retry_condition_fn=transient_failure)
def acquire(command: str, root: str) -> None:
    """Run `rarespecies acquire <command>`; retried only on network failures (exit 75), not
    on a bad catalogue or a missing image, which fail the same way again."""
    get_run_logger().info("acquire %s: %s", command, acquire_data(command, Path(root)))


@task(retries=2, retry_delay_seconds=30)
def push_to_remote(root: str) -> str | None:
    """`dvc push` the data, the exported models and their model card, with a DVC remote."""
    return push_release(Path(root))


@task
def record_in_git(root: str, entry: dict) -> str | None:
    """Commit what the run changed plus the registry, and tag it `model-v<version>`."""
    return commit_promotion(Path(root), entry)


@flow(name="retrain", log_prints=True)
def retrain(root: str = ".", acquire_command: str | None = None, commit: bool = True) -> dict:
    """Acquire (optional), run the pipeline, promote only a better model.

    Args:
        root: the DVC project.
        acquire_command: arguments of `rarespecies acquire`, e.g. "eol --catalog new.csv".
        commit: commit and tag a promotion in git.

    Returns:
        {"promoted": bool, "reason": str, "candidate": {...}, "entry": registry entry or None,
         "stages": the pipeline flow's stage results}.
    """
    logger = get_run_logger()
    project = Path(root)
    if acquire_command:
        acquire(acquire_command, root)
    run = pipeline(root)
    new = candidate(project)
    current = read_registry(project)["current"]
    current_f1 = None
    if current and current["onnx_md5"] != new["onnx_md5"]:
        current_f1 = rescore_promoted(project)
    promote_it, reason = decide(new, current, read_params(project / "params.yaml").promote,
                                current_f1)
    result = {"promoted": promote_it, "reason": reason, "candidate": new, "entry": None,
              "stages": run["stages"]}
    if not promote_it:
        logger.info("kept the promoted model: %s", reason)
        return result
    # Push before touching deploy/: an unreachable remote must leave the promoted model as is.
    remote = push_to_remote(root)
    entry = promote(project, new | {"dvc_remote": remote}, reason)
    tag = record_in_git(root, entry) if commit else None
    logger.info("promoted %s as v%d: %s%s%s", entry["model"], entry["version"], reason,
                f"; pushed to DVC remote {remote}" if remote else "",
                f"; git tag {tag}" if tag else "")
    return result | {"entry": entry}


cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help=__doc__.split("\n")[0])


@cli.callback(invoke_without_command=True)
def run_once(
    ctx: typer.Context,
    root: Annotated[str, typer.Option(help="DVC project folder.")] = ".",
    acquire_command: Annotated[str | None, typer.Option(
        "--acquire", help='Arguments of `rarespecies acquire`, e.g. "eol --catalog new.csv".')
    ] = None,
    commit: Annotated[bool, typer.Option(help="Commit and tag a promotion in git.")] = True,
    debug: Debug = False,
) -> None:
    """Retrain once now (without a subcommand)."""
    ctx.obj = {"root": root, "acquire_command": acquire_command, "commit": commit}
    if ctx.invoked_subcommand:
        return
    with flow_errors("retrain", debug):
        project_root(root)  # fail in one line before Prefect starts a server
        result = retrain(root, acquire_command, commit)
    typer.echo(("promoted: " if result["promoted"] else "not promoted: ") + result["reason"])


@cli.command()
def serve(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option(help="Schedule, cron syntax (UTC).")] = DEFAULT_CRON,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "weekly",
) -> None:
    """Serve the flow on a schedule (Prefect `serve`); runs until interrupted."""
    retrain.serve(name=name, cron=cron, parameters=ctx.obj)


if __name__ == "__main__":
    cli()
