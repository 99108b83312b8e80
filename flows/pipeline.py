"""Prefect flow `pipeline`: one task per DVC stage, in the order dvc.yaml defines.

DVC decides what runs: each task calls `dvc repro --single-item <stage>`, which skips a stage
whose dependencies did not change. Prefect records what ran, retries transient failures (the
repository lock held by another DVC process) and names the stage that failed.

    python -m flows.pipeline [ROOT] [--debug]
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer
from prefect import flow, get_run_logger, task

from flows.cli import one_line_errors
from flows.dvc_cli import NotAProject, dvc, last_lines, project_root

# DVC prints these when another process holds the repository or an output lock: worth a
# retry. Anything else (bad data, bad params, a bug) fails the same way again: no retry.
TRANSIENT_MARKERS = ("Unable to acquire lock", "is busy, it is being blocked by")


class StageFailed(RuntimeError):
    """A DVC stage exited with an error."""

    def __init__(self, stage: str, detail: str, transient: bool = False) -> None:
        super().__init__(f"stage {stage} failed: {detail}")
        self.stage, self.transient = stage, transient


def stage_failure(stage: str, proc: subprocess.CompletedProcess, step: str = "") -> StageFailed:
    """The error for a failed DVC command on `stage`; transient when DVC's output says so."""
    output = proc.stdout + proc.stderr
    return StageFailed(stage, f"{step}: {last_lines(proc)}" if step else last_lines(proc),
                       any(marker in output for marker in TRANSIENT_MARKERS))


def pipeline_stages(root: Path) -> list[str]:
    """Stage names of dvc.yaml (matrix/foreach expanded) with dependencies first.

    Args:
        root: the DVC project.

    Returns:
        Stage addresses such as `train@convnext_full`, in an order DVC could run them.
    """
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = reversed(list(nx.lexicographical_topological_sort(graph, key=str)))
        return [_address(s, root) for s in order if isinstance(s, PipelineStage)]


def _address(stage, root: Path) -> str:
    """`name`, or `path/dvc.yaml:name` outside the root dvc.yaml (relative to the project)."""
    dvcfile = os.path.relpath(stage.dvcfile.path, root)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def transient_failure(task, task_run, state) -> bool:
    """Retry condition: only errors marked transient (a held DVC lock, a network failure)."""
    return getattr(state.result(raise_on_failure=False), "transient", False) is True


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=transient_failure,
      task_run_name="{stage}")
def run_stage(stage: str, root: str) -> dict:
    """Let DVC run one stage if its inputs changed; report whether it ran and how long."""
    logger = get_run_logger()
    start = time.perf_counter()
    proc = dvc("repro", "--single-item", stage, cwd=root)
    seconds = round(time.perf_counter() - start, 1)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise stage_failure(stage, proc)
    if f"Running stage '{stage}'" in output:
        status = "ran"
    elif "is cached - skipping run" in output:
        status = "restored from the run cache"
    else:
        status = "skipped (unchanged)"
    logger.info("%s: %s in %.1f s", stage, status, seconds)
    return {"stage": stage, "ran": status == "ran", "status": status, "seconds": seconds}


def collect_metrics(root: Path) -> dict:
    """Metrics files of the run (metrics/*.json and metrics/models/*.json), by file stem."""
    return {p.stem: json.loads(p.read_text())
            for p in sorted((root / "metrics").rglob("*.json"))}


@flow(name="pipeline", log_prints=True)
def pipeline(root: str = ".") -> dict:
    """Run every DVC stage in dependency order; return what ran, what was skipped, the metrics.

    Args:
        root: the DVC project folder.

    Returns:
        {"stages": [{"stage", "ran", "status", "seconds"}...], "metrics": {...}}.
    """
    logger = get_run_logger()
    results = [run_stage(stage, root) for stage in pipeline_stages(Path(root))]
    ran = [r["stage"] for r in results if r["ran"]]
    restored = [r["stage"] for r in results if r["status"].startswith("restored")]
    skipped = [r["stage"] for r in results if r["status"].startswith("skipped")]
    logger.info("ran %d stage(s): %s", len(ran), ", ".join(ran) or "none")
    if restored:
        logger.info("restored %d stage(s) from DVC's run cache: %s", len(restored),
                    ", ".join(restored))
    logger.info("skipped %d unchanged stage(s): %s", len(skipped), ", ".join(skipped) or "none")
    metrics = collect_metrics(Path(root))
    for name, values in metrics.items():
        if "macro_f1" in values:
            logger.info("%s: test macro F1 %.4f", name, values["macro_f1"])
    return {"stages": results, "metrics": metrics}


def main(
    root: Annotated[str, typer.Argument(help="DVC project folder.")] = ".",
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Run every DVC stage in order; DVC skips the unchanged ones."""
    with one_line_errors("pipeline", debug, StageFailed, NotAProject):
        project_root(root)  # fail in one line before Prefect starts a server
        pipeline(root)


if __name__ == "__main__":
    typer.run(main)
