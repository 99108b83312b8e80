"""Sweep grids: parsed strictly, expanded completely, one model at a time."""

from __future__ import annotations

import pytest
import typer

from flows.sweep import combinations, parse_grid, swept_model


def test_grid_expands_to_every_combination():
    grid = parse_grid(["models.custom_cnn.head.dropout=0.2,0.5",
                       "models.custom_cnn.training.learning_rate=1e-4,1e-3,3e-3"])
    points = combinations(grid)
    assert len(points) == 6 and len({tuple(p.items()) for p in points}) == 6
    assert points[0] == {"models.custom_cnn.head.dropout": "0.2",
                         "models.custom_cnn.training.learning_rate": "1e-4"}
    assert swept_model(grid) == "custom_cnn"


@pytest.mark.parametrize(("settings", "message"), [
    (["models.custom_cnn.head.dropout"], "write KEY=VALUE"),
    (["models.custom_cnn.head.dropout="], "write KEY=VALUE"),
    (["=0.2"], "write KEY=VALUE"),
    (["models.custom_cnn.head.dropout=0.2", "models.custom_cnn.head.dropout=0.5"], "set twice"),
])
def test_malformed_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(settings)


@pytest.mark.parametrize("keys", [
    ["models.custom_cnn.head.dropout", "models.convnext_mini.head.dropout"],
    ["split.seed"],
    ["models.custom_cnn.head.dropout", "split.seed"],
])
def test_a_sweep_tunes_exactly_one_model(keys):
    with pytest.raises(ValueError, match="sweep one model at a time"):
        swept_model({key: ["1"] for key in keys})


def test_unknown_keys_are_named():
    params = {"models": {"custom_cnn": {"head": {"dropout": 0.5}}}}
    assert swept_model({"models.custom_cnn.head.dropout": ["0.2"]}, params) == "custom_cnn"
    with pytest.raises(ValueError, match=r"models\.custom_cnn\.head\.dropuot is not in "
                                         "params.yaml"):
        swept_model({"models.custom_cnn.head.dropuot": ["0.2"]}, params)


def test_a_params_file_with_a_key_written_twice_stops_the_sweep_in_one_line(tmp_path, capsys):
    from flows.sweep import main

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(
        "models:\n  custom_cnn: {head: {dropout: 0.5}}\nmodels:\n  other: {}\n")
    with pytest.raises(typer.Exit) as exited:
        main(["models.custom_cnn.head.dropout=0.2,0.3"], root=str(tmp_path))
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err == (
        f"sweep: error: {tmp_path / 'params.yaml'}:3:1: duplicate key 'models' (first at line "
        "1)  (--debug shows the traceback)\n")


@pytest.mark.slow
def test_sweep_runs_the_grid_as_queued_experiments_and_applies_the_best(reproduced, tmp_path):
    import yaml
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import sweep

    from conftest import project_copy, run

    project = project_copy(reproduced[0], tmp_path / "project", commit=True)
    with prefect_test_harness():
        rows = sweep(["models.custom_cnn.training.epochs=0,1"], str(project), jobs=2,
                     apply_best=True, prefix="grid")
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"grid-1", "grid-2"}
    # epochs=0 is refused by the params check: reported as failed, without borrowed figures.
    assert by_name["grid-1"]["state"] == "failed" and by_name["grid-1"]["val_macro_f1"] is None
    assert by_name["grid-2"]["state"] == "success" and rows[0]["name"] == "grid-2"
    assert 0 <= by_name["grid-2"]["val_macro_f1"] <= 1
    assert by_name["grid-2"]["models.custom_cnn.training.epochs"] == 1
    table = (project / "reports/sweep.md").read_text()
    assert "| grid-2 | 1 |" in table and "| grid-1 | 0 | n/a | n/a | failed |" in table
    applied = yaml.safe_load((project / "params.yaml").read_text())
    assert applied["models"]["custom_cnn"]["training"]["epochs"] == 1
    shown = run("dvc", "exp", "show", "--json", cwd=project).stdout
    assert "grid-2" in shown
