"""Prefect flow `sweep`: a parameter grid as queued DVC experiments, ranked in one table.

    python -m flows.sweep -S models.convnext_full.head.dropout=0.2,0.5 \\
        -S models.convnext_full.training.learning_rate=1e-4,1e-3 --jobs 2 [--apply-best]

Every combination becomes `dvc exp run --queue -S ...`; `dvc queue start -j N` runs them,
each in its own temporary checkout, so parallel runs never share a workspace (DVC's lock
forbids parallel `dvc repro` in one). Unchanged stages come from the DVC cache. The ranking
uses the swept model's validation macro F1 (choosing on the test split would overfit it);
test macro F1 is shown beside it. The table goes to `reports/sweep.md`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated

import typer
from prefect import flow, get_run_logger, task

from flows.common import flow_errors
from rarespecies.config.params import raw_params
from rarespecies.core.console import Debug, run_command
from rarespecies.core.dvc import dvc, project_root
from rarespecies.ops.sweep import combinations, leaderboard, parse_grid, swept_model, table

SWEEP_REPORT = Path("reports/sweep.md")


@task
def queue(point: dict[str, str], name: str, root: str) -> str:
    """`dvc exp run --queue` one grid point under `name`."""
    args = [arg for key, value in point.items() for arg in ("-S", f"{key}={value}")]
    dvc("exp", "run", "--queue", "-n", name, *args, cwd=root, check=True)
    return name


@task
def run_queue(root: str, jobs: int, poll_seconds: float = 5.0) -> None:
    """Start `jobs` queue workers and wait until no experiment is queued or running."""
    logger = get_run_logger()
    dvc("queue", "start", "-j", str(jobs), cwd=root, check=True)
    last = ""
    while True:
        status = dvc("queue", "status", cwd=root, check=True).stdout
        active = re.findall(r"^\S+\s+(\S+).*\b(Queued|Running)\b", status, re.MULTILINE)
        summary = ", ".join(f"{name} {state.lower()}" for name, state in active)
        if summary != last:
            logger.info("queue: %s", summary or "done")
            last = summary
        if not active:
            return
        time.sleep(poll_seconds)


@flow(name="sweep", log_prints=True)
def sweep(settings: list[str], root: str = ".", jobs: int = 1, apply_best: bool = False,
          prefix: str | None = None) -> list[dict]:
    """Queue a grid of experiments, run them, rank them, optionally apply the best.

    Args:
        settings: `KEY=V1,V2` for each swept parameter.
        root: the DVC project (its HEAD commit, plus workspace changes, is the baseline).
        jobs: experiments run in parallel (`dvc queue start -j`).
        apply_best: `dvc exp apply` the best one to the workspace.
        prefix: experiment name prefix (default: sweep-<time>).

    Returns:
        The leaderboard rows, best first.
    """
    logger = get_run_logger()
    grid = parse_grid(settings)
    model = swept_model(grid, raw_params(Path(root) / "params.yaml"))
    prefix = prefix or time.strftime("sweep-%Y%m%d-%H%M%S")
    points = combinations(grid)
    names = [queue(point, f"{prefix}-{i}", root) for i, point in enumerate(points, 1)]
    logger.info("queued %d experiment(s) over %s", len(names), ", ".join(grid))
    run_queue(root, jobs)
    shown = json.loads(dvc("exp", "show", "--json", cwd=root, check=True).stdout)
    rows = leaderboard(shown, names, grid, model)
    report = Path(root) / SWEEP_REPORT
    report.parent.mkdir(parents=True, exist_ok=True)
    text = table(rows, grid, model)
    report.write_text(text)
    logger.info("leaderboard in %s:\n%s", SWEEP_REPORT, text)
    for row in rows:
        if row["state"] != "success":
            logger.warning("%s %s: see `dvc queue logs %s`", row["name"], row["state"],
                           row["name"])
    best = rows[0]
    if apply_best and best["val_macro_f1"] is not None:
        dvc("exp", "apply", best["name"], cwd=root, check=True)
        logger.info("applied %s to the workspace: commit params.yaml and dvc.lock to keep it",
                    best["name"])
    return rows


def main(
    settings: Annotated[list[str], typer.Option("--set", "-S", help="KEY=V1,V2,... to sweep")],
    root: Annotated[str, typer.Option(help="DVC project folder.")] = ".",
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="parallel experiments")] = 1,
    apply_best: Annotated[bool, typer.Option(help="dvc exp apply the best")] = False,
    prefix: Annotated[str | None, typer.Option(help="experiment name prefix")] = None,
    debug: Debug = False,
) -> None:
    """Run a parameter sweep as DVC experiments and print the leaderboard."""
    with flow_errors("sweep", debug):
        # Bad input fails here, in one line, before Prefect starts (NotAProject: ValueError).
        params = raw_params(project_root(root) / "params.yaml")
        swept_model(parse_grid(settings), params)
        sweep(settings, root, jobs, apply_best, prefix)


if __name__ == "__main__":
    run_command(main)
