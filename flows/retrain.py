"""Prefect flow `retrain`: new data in, pipeline run, and a promotion only for a better model.

    python -m flows.retrain [--root .] [--acquire "eol --catalog new.csv"] [--no-commit]
    python -m flows.retrain serve [--name served] [--cron "0 3 * * 1"]

Steps: with commit on, refuse uncommitted tracked changes; optionally acquire data; run the
`pipeline` flow; judge the candidate (`rarespecies.ops.promotion`: parity, macro F1 gain, a
latency ratio to the promoted model timed now); publish the decision as the artifact
`retrain-decision`. A promotion fills `deploy/` and its registry, pushes to the DVC remote if
any, and commits and tags `model-vN`. The run ends Failed when nothing could be promoted for a
reason other than "not better". With no new data, a second run changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from prefect import flow, get_run_logger, serve, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from flows.common import flow_errors, transient_failure
from flows.pipeline import pipeline
from rarespecies.core.console import Debug
from rarespecies.core.dvc import project_root
from rarespecies.ops import retraining
from rarespecies.ops.promotion import NotPromoted, decision_markdown, promote

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00 UTC; prefect.yaml's deployment uses the same
SERVE_NAME = "served"  # prefect.yaml's `weekly` belongs to `prefect deploy` and a worker
PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
ARTIFACT_KEY = "retrain-decision"  # one key: the UI lists every run's decision as a version


@task(retries=2, retry_delay_seconds=60, retry_condition_fn=transient_failure)
def acquire(command: str, root: str) -> None:
    """Run `rarespecies acquire <command>`; retried only on network failures (exit 75), not
    on a bad catalogue or a missing image, which fail the same way again."""
    get_run_logger().info("acquire %s: %s", command, retraining.acquire_data(command, Path(root)))


@task(retries=2, retry_delay_seconds=30)
def push_to_remote(root: str) -> str | None:
    """`dvc push` the data, the exported models and their model card, with a DVC remote."""
    return retraining.push_release(Path(root))


@task
def record_in_git(root: str, entry: dict) -> str | None:
    """Commit what the run changed plus the registry, and tag it `model-v<version>`."""
    return retraining.commit_promotion(Path(root), entry)


@flow(name="retrain", log_prints=True)
def retrain(root: str = ".", acquire_command: str | None = None, commit: bool = True
            ) -> dict | State:
    """Acquire (optional), run the pipeline, promote only a better model.

    Args:
        root: the DVC project.
        acquire_command: arguments of `rarespecies acquire`, e.g. "eol --catalog new.csv".
        commit: commit and tag a promotion in git (refused on uncommitted tracked changes).

    Returns:
        {"promoted", "decision" (kind), "line", "reason", "gates", "latency", "candidate",
         "entry" (registry entry or None), "stages"}. A run that cannot promote for a reason
        other than "not better" ends Failed (calling the flow raises NotPromoted, whose
        `result` is that dict).
    """
    logger, project = get_run_logger(), Path(root)
    tagged = commit and retraining.is_git_repository(project)
    if tagged:
        retraining.require_clean_tree(project)  # before anything runs: nothing to undo
    if acquire_command:
        acquire(acquire_command, root)
    run = pipeline(root)
    decision, new, current = retraining.judge_candidate(project)
    result = decision.result(new, run["stages"])
    create_markdown_artifact(decision_markdown(decision, new, current), key=ARTIFACT_KEY,
                             description=decision.line())
    logger.info("%s", decision.line())
    if decision.needs_attention:  # Failed, the state type UI filters and automations match
        return Failed(message=decision.line(), data=NotPromoted(decision.line(), result))
    if not decision.promote:
        return result
    # Push before touching deploy/: an unreachable remote must leave the promoted model as is.
    remote = push_to_remote(root)
    entry = promote(project, new | {"dvc_remote": remote, "latency_gate": decision.latency},
                    decision.reason, tagged=tagged)
    tag = record_in_git(root, entry) if tagged else None
    logger.info("recorded as v%d%s%s", entry["version"], f"; pushed to {remote}" * bool(remote),
                f"; git tag {tag}" * bool(tag))
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
    """Retrain once now (without a subcommand); exit 1 when NotPromoted."""
    ctx.obj = {"root": root, "acquire_command": acquire_command, "commit": commit}
    if ctx.invoked_subcommand:
        return
    with flow_errors("retrain", debug):
        project_root(root)  # fail in one line before Prefect starts a server
        result = retrain(root, acquire_command, commit)
    typer.echo(result["line"])


@cli.command("serve")
def serve_command(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option(help="Schedule, cron syntax (UTC).")] = DEFAULT_CRON,
    name: Annotated[str, typer.Option(help="Deployment name, never one of prefect.yaml's.")
                    ] = SERVE_NAME,
) -> None:
    """Serve the flow on a schedule from this process (Prefect `serve`) until interrupted."""
    with flow_errors("retrain serve", False):
        retraining.check_serve_name(name, PREFECT_YAML, SERVE_NAME)
    others = ", ".join(sorted(retraining.declared_deployments(PREFECT_YAML)))
    typer.echo(f"serving deployment retrain/{name} (cron {cron!r}, UTC) from this process; "
               f"{PREFECT_YAML.name}'s deployments ({others}) are untouched; stopping pauses "
               f"retrain/{name}'s schedule only")
    serve(retrain.to_deployment(name=name, cron=cron, parameters=ctx.obj))


if __name__ == "__main__":
    cli()
