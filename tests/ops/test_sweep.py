"""The sweep's ranking reads each experiment's figures from the swept model's metrics file."""

from __future__ import annotations

from rarespecies.ops.sweep import leaderboard

GRID = {"models.custom_cnn.head.dropout": ["0.2", "0.5"]}


def experiment(name: str, dropout: float, figures: dict | None, error: bool = False) -> dict:
    """One experiment of `dvc exp show --json`, as DVC 3 writes it."""
    metrics = {} if figures is None else {
        "metrics/models/custom_cnn.json": {"data": {"custom_cnn": figures}}}
    params = {"params.yaml": {"data": {"models": {"custom_cnn": {"head": {"dropout": dropout}}}}}}
    rev = {"name": name, "data": {"metrics": metrics, "params": params}}
    if error:
        rev["error"] = {"type": "ReproductionError", "msg": "failed"}
    return {"name": name, "revs": [rev], "executor": {"state": "success"}}


def test_rows_are_ranked_by_the_validation_f1_of_the_models_metrics_file():
    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "abc", "experiments": [
                 experiment("a", 0.2, {"f1": 0.30, "val_f1": 0.40, "wf1": 0.5}),
                 experiment("b", 0.5, {"f1": 0.20, "val_f1": 0.60, "wf1": 0.5})]}]
    rows = leaderboard(shown, ["a", "b"], GRID, "custom_cnn")
    assert [(r["name"], r["val_macro_f1"], r["test_macro_f1"]) for r in rows] == [
        ("b", 0.60, 0.20), ("a", 0.40, 0.30)]
    assert rows[0]["models.custom_cnn.head.dropout"] == 0.5


def test_a_failed_or_missing_run_stays_in_the_table_without_figures():
    shown = [{"rev": "abc", "experiments": [
        experiment("a", 0.2, {"f1": 0.30, "val_f1": 0.40}, error=True),
        experiment("b", 0.5, None)]}]
    rows = leaderboard(shown, ["a", "b", "c"], GRID, "custom_cnn")
    by_name = {r["name"]: r for r in rows}
    assert by_name["a"]["state"] == "failed" and by_name["a"]["val_macro_f1"] is None
    assert by_name["b"]["state"] == "success" and by_name["b"]["test_macro_f1"] is None
    assert by_name["c"]["state"] == "missing"
