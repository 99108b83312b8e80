"""Prefect flow `retrain`: new data in, pipeline run, and a promotion only for a better model.

    python -m flows.retrain [--root .] [--acquire "eol --catalog new.csv"] [--no-commit]
    python -m flows.retrain serve --cron "0 3 * * 1"

Steps: optionally acquire data (any `rarespecies acquire` command, which also runs
`dvc add data`), run the `pipeline` flow (DVC skips what did not change), compare the
candidate with the promoted model (`flows.promotion`) and promote it only when test macro F1
improves by `promote.min_gain` and the ONNX parity and latency gates pass. A promotion copies
the model to `deploy/`, records it in `deploy/registry.json`, pushes the export to the DVC
remote when one is configured, and commits and tags (`model-vN`) the run in git. With no new
data, a second run changes nothing.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from prefect import flow, get_run_logger, task

from flows.cli import one_line_errors
from flows.dvc_cli import DvcError, NotAProject, dvc, project_root
from flows.pipeline import StageFailed, pipeline, transient_failure
from flows.promotion import (
    REGISTRY,
    PromotionError,
    candidate,
    decide,
    promote,
    read_registry,
    rescore_promoted,
)
from stages.cli import EX_TEMPFAIL
from stages.params import ParamsError, read_params

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00 UTC; prefect.yaml's deployment uses the same
# Files a retraining run changes and a promotion commits (when they exist).
RECORDED = ("data.dvc", "dvc.lock", "metrics", "reports", "plots", "dvclive", str(REGISTRY))


def _run(args: list[str], root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=root, capture_output=True, text=True)


class AcquireFailed(RuntimeError):
    """`rarespecies acquire` failed; `transient` when it says a later try may succeed."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@task(retries=2, retry_delay_seconds=60, retry_condition_fn=transient_failure)
def acquire(command: str, root: str) -> None:
    """Run `rarespecies acquire <command>`; retried only on network failures (exit 75), not
    on a bad catalogue or a missing image, which fail the same way again."""
    cli = str(Path(sys.executable).with_name("rarespecies"))
    proc = _run([cli, "acquire", *shlex.split(command)], Path(root))
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise AcquireFailed(f"acquire {command} failed: {lines[-1]}",
                            transient=proc.returncode == EX_TEMPFAIL)
    summary = proc.stdout.strip().splitlines() or ["no output"]
    get_run_logger().info("acquire %s: %s", command, summary[-1])


@task(retries=2, retry_delay_seconds=30)
def push_to_remote(root: str) -> str | None:
    """`dvc push` the data, the exported models and their model card, with a DVC remote.

    Returns:
        The remote's name, or None without a remote.
    """
    remotes = dvc("remote", "list", cwd=root).stdout.split()
    if not remotes:
        return None
    dvc("push", "data.dvc", "export", "quantize", "model_card", cwd=root, check=True)
    return remotes[0]


@task
def record_in_git(root: str, entry: dict) -> str | None:
    """Commit what the run changed plus the registry, and tag it `model-v<version>`."""
    path = Path(root)
    if _run(["git", "rev-parse", "--git-dir"], path).returncode != 0:
        return None
    present = [name for name in RECORDED if (path / name).exists()]
    _run(["git", "add", "--", *present], path)
    identity = [] if _run(["git", "config", "user.email"], path).stdout.strip() else [
        "-c", "user.name=rarespecies retrain", "-c", "user.email=retrain@localhost"]
    tag = f"model-v{entry['version']}"
    message = (f"retrain: promote {entry['model']} as {tag} (test macro F1 "
               f"{entry['macro_f1']:.4f})\n\n{entry['reason']}")
    for args in (["commit", "-q", "-m", message], ["tag", "-a", tag, "-m", message]):
        proc = _run(["git", *identity, *args], path)
        if proc.returncode != 0:
            raise RuntimeError(f"git {args[0]} failed: {proc.stderr.strip()}")
    return tag


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


cli = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@cli.callback(invoke_without_command=True)
def run_once(
    ctx: typer.Context,
    root: Annotated[str, typer.Option(help="DVC project folder.")] = ".",
    acquire_command: Annotated[str | None, typer.Option(
        "--acquire", help='Arguments of `rarespecies acquire`, e.g. "eol --catalog new.csv".')
    ] = None,
    commit: Annotated[bool, typer.Option(help="Commit and tag a promotion in git.")] = True,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Retrain once now (without a subcommand)."""
    ctx.obj = {"root": root, "acquire_command": acquire_command, "commit": commit}
    if ctx.invoked_subcommand:
        return
    with one_line_errors("retrain", debug, StageFailed, PromotionError, ParamsError, DvcError,
                         NotAProject, RuntimeError):
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
