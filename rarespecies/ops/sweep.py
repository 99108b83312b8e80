"""A parameter sweep's grid and its ranking, for the `sweep` flow (which queues the points as
DVC experiments). The ranking uses the swept model's validation macro F1 (choosing on the test
split would overfit it); test macro F1 is shown beside it.
"""

from __future__ import annotations

import itertools
from typing import Any

from rarespecies.config import paths
from rarespecies.runtime.metrics import TEST_F1, VAL_F1


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
        # The model's metrics file (rarespecies.runtime.metrics.headline) holds both.
        figures = ((metrics.get(str(paths.test_metrics(model))) or {}).get("data") or {})
        figures = figures.get(model) or {}
        rows.append({"name": name, **{key: _lookup(params, key) for key in grid},
                     "val_macro_f1": figures.get(VAL_F1),
                     "test_macro_f1": figures.get(TEST_F1), "state": found["state"]})
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
