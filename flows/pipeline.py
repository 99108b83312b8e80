"""Prefect flow `pipeline`: one task per DVC stage, in the order dvc.yaml defines.

DVC decides what runs: each task calls `dvc repro --single-item <stage>`, which skips a stage
whose dependencies did not change. Prefect records what ran, retries transient failures (the
repository lock held by another DVC process) and names the stage that failed.

    python -m flows.pipeline [ROOT] [--debug]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from prefect import flow, get_run_logger, task

from flows.common import flow_errors, transient_failure
from rarespecies.core.console import Debug, run_command
from rarespecies.core.dvc import dvc, project_root
from rarespecies.ops.pipeline import (
    collect_metrics,
    pipeline_stages,
    repro_outcome,
    stage_failure,
    stage_line_logger,
)
from rarespecies.runtime.metrics import TEST_F1


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=transient_failure,
      task_run_name="{stage}")
def run_stage(stage: str, root: str) -> dict:
    """Let DVC run one stage if its inputs changed; report whether it ran and how long.

    The stage's output reaches the task's log line by line while it runs (its progress
    lines, `rarespecies.core.progress`), not only when it ends.
    """
    logger = get_run_logger()
    start = time.perf_counter()
    proc = dvc("repro", "--single-item", stage, cwd=root, on_line=stage_line_logger(logger))
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        raise stage_failure(stage, proc)
    status = repro_outcome(proc.stdout + proc.stderr, stage)
    logger.info("%s: %s in %.1f s", stage, status, seconds)
    return {"stage": stage, "ran": status == "ran", "status": status, "seconds": seconds}


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
        figures = values.get(name)  # a model's file: {model: {"f1", ...}}
        if isinstance(figures, dict) and TEST_F1 in figures:
            logger.info("%s: test macro F1 %.4f", name, figures[TEST_F1])
    return {"stages": results, "metrics": metrics}


def main(root: Annotated[str, typer.Argument(help="DVC project folder.")] = ".",
         debug: Debug = False) -> None:
    """Run every DVC stage in order; DVC skips the unchanged ones."""
    with flow_errors("pipeline", debug):
        project_root(root)  # fail in one line before Prefect starts a server
        pipeline(root)


if __name__ == "__main__":
    run_command(main)
