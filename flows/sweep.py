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

import itertools
import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from prefect import flow, get_run_logger, task

from flows.cli import one_line_errors
from flows.dvc_cli import DvcError, dvc, project_root

SWEEP_REPORT = Path("reports/sweep.md")


def parse_grid(settings: list[str]) -> dict[str, list[str]]:
    """`key=v1,v2` settings to {key: [v1, v2]}.

    Raises:
        ValueError: a setting without `=` or without values, or a key given twice.
    """
    grid: dict[str, list[str]] = {}
    for setting in settings:
        key, sep, values = setting.partition("=")
        if not sep or not key or not values.strip(","):
            raise ValueError(f"bad setting {setting!r}: write KEY=VALUE[,VALUE...], e.g. "
                             "models.convnext_full.head.dropout=0.2,0.5")
        if key in grid:
            raise ValueError(f"{key} is set twice: list its values once, comma-separated")
        grid[key] = [v for v in values.split(",") if v]
    return grid


def combinations(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every point of the grid, in a stable order."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def swept_model(grid: dict[str, list[str]], params: dict | None = None) -> str:
    """The model the grid tunes (`models.<name>....`); its validation F1 ranks the runs.

    Args:
        grid: the swept keys and values.
        params: the project's params.yaml, to check that every key exists.

    Raises:
        ValueError: keys of several models, keys outside `models`, or an unknown key.
    """
    models = {key.split(".")[1] if key.startswith("models.") else None for key in grid}
    if len(models) != 1 or None in models:
        raise ValueError("sweep one model at a time: every key must start with "
                         f"models.<the same model>. (got {sorted(grid)})")
    for key in grid if params is not None else ():
        if _lookup(params, key, _MISSING) is _MISSING:
            raise ValueError(f"{key} is not in params.yaml: sweep existing keys only")
    return models.pop()


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


def _experiments(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` entries by experiment name: its data and the executor's state."""
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            rev = experiment["revs"][0]
            state = (experiment.get("executor") or {}).get("state") or "success"
            found[experiment.get("name") or rev.get("name")] = {
                "data": rev.get("data") or {}, "state": "failed" if rev.get("error") else state}
    return found


def leaderboard(shown: list[dict], names: list[str], grid: dict[str, list[str]],
                model: str) -> list[dict]:
    """One row per experiment of the sweep, best validation macro F1 first.

    Args:
        shown: `dvc exp show --json`.
        names: the sweep's experiment names.
        grid: the swept keys.
        model: the swept model.

    Returns:
        Rows with name, the swept values, val/test macro F1 and the run's state. Failed or
        missing runs stay in the table (at the end), so nothing silently disappears.
    """
    experiments, rows = _experiments(shown), []
    for name in names:
        found = experiments.get(name, {"data": {}, "state": "missing"})
        params = ((found["data"].get("params") or {}).get("params.yaml") or {}).get("data", {})
        metrics = found["data"].get("metrics") or {}
        if found["state"] == "failed":  # what it shows are the baseline's figures
            metrics = {}
        val = (metrics.get(f"reports/train/{model}.json") or {}).get("data", {})
        test = (metrics.get(f"metrics/models/{model}.json") or {}).get("data", {})
        rows.append({"name": name, **{key: _lookup(params, key) for key in grid},
                     "val_macro_f1": val.get("val_macro_f1"),
                     "test_macro_f1": test.get("macro_f1"), "state": found["state"]})
    return sorted(rows, key=lambda r: (r["val_macro_f1"] is None, -(r["val_macro_f1"] or 0)))


_MISSING = object()


def _lookup(params: dict, dotted: str, default: Any = None) -> Any:
    """The value at a dotted key such as `models.custom_cnn.training.epochs`, else `default`."""
    for part in dotted.split("."):
        if not isinstance(params, dict) or part not in params:
            return default
        params = params[part]
    return params


def table(rows: list[dict], grid: dict[str, list[str]], model: str) -> str:
    """The leaderboard as Markdown."""
    keys = list(grid)
    lines = [f"# Sweep of {model} ({len(rows)} experiments)", "",
             "Ranked by validation macro F1; test macro F1 for reference.", "",
             "| experiment | " + " | ".join(f"`{k}`" for k in keys)
             + " | val macro F1 | test macro F1 | state |",
             "| --- | " + "--- | " * len(keys) + "--- | --- | --- |"]
    for row in rows:
        figures = [f"{row[m]:.4f}" if row[m] is not None else "n/a"
                   for m in ("val_macro_f1", "test_macro_f1")]
        lines.append(f"| {row['name']} | " + " | ".join(str(row[k]) for k in keys)
                     + f" | {' | '.join(figures)} | {row['state']} |")
    return "\n".join(lines) + "\n"


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
    model = swept_model(grid, yaml.safe_load((Path(root) / "params.yaml").read_text()))
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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Run a parameter sweep as DVC experiments and print the leaderboard."""
    with one_line_errors("sweep", debug, ValueError, DvcError):
        # Bad input fails here, in one line, before Prefect starts (NotAProject: ValueError).
        params = yaml.safe_load((project_root(root) / "params.yaml").read_text())
        swept_model(parse_grid(settings), params)
        sweep(settings, root, jobs, apply_best, prefix)


if __name__ == "__main__":
    typer.run(main)
