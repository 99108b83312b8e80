"""Stages that read every model's files list those files, one by one, for every model of
dvc.yaml's `vars.trained`: never a whole folder of another stage, whose stale files would
change the stage's hash and whose new files would go unnoticed."""

import yaml
from imports import ROOT

from rarespecies.config import paths
from rarespecies.config.plan import declared

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
TRAINED = declared(ROOT / "dvc.yaml")["trained"]


def data_deps(stage: str) -> set[str]:
    return {dep for dep in STAGES[stage]["deps"]
            if dep.split("/")[0] not in ("rarespecies", "stages", "flows")}


def per_model(*kinds) -> set[str]:
    return {str(kind(model)) for model in TRAINED for kind in kinds}


def test_leaderboard_reads_each_models_figures_and_the_split():
    expected = per_model(paths.test_report, paths.train_report) | {str(paths.SPLIT_TABLE)}
    assert data_deps("leaderboard") == expected


def test_select_lists_what_it_may_copy_for_any_model():
    expected = per_model(paths.model_file, paths.train_report, paths.test_report,
                         paths.families_table) | {str(paths.LABELS)}
    for entry in TRAINED.values():
        arrays = paths.arrays_dir(entry["backbone"])
        expected |= {str(paths.split_file(arrays, split, part))
                     for split in ("train", "test") for part in "xy"}
    assert data_deps("select") == expected


def test_no_stage_depends_on_a_whole_folder_of_per_model_outputs():
    folders = {"models", "metrics/models", "reports/train", "reports/test", "reports/families",
               "artifacts/arrays", "artifacts/features"}
    for name, entry in STAGES.items():
        deps = set(entry.get("do", entry).get("deps", []))
        assert not deps & folders, f"{name} depends on {sorted(deps & folders)}"


def test_export_reads_the_graph_weights_and_test_features_of_every_cached_backbone():
    """A head on any cached backbone's features is grafted onto that backbone's graph, which
    is made from the weights its features came from (export checks their digest) and nothing
    of any head; its parity gate runs the head on the backbone's cached test features."""
    cached = declared(ROOT / "dvc.yaml")["cached"]
    assert data_deps("export") == {str(paths.EXPORT_DIR)} | {
        str(path) for name in cached for path in (
            paths.backbone_graph(name), paths.features_dir(name) / paths.BACKBONE_WEIGHTS,
            *(paths.split_file(paths.features_dir(name), "test", part) for part in "xy"))}
    stage = STAGES["export_backbone"]
    assert stage["foreach"] == "${cached}"
    deps = {dep for dep in stage["do"]["deps"] if not dep.startswith(("rarespecies", "stages"))}
    assert deps == {str(paths.features_dir("${item}") / paths.BACKBONE_WEIGHTS)}
    assert stage["do"]["outs"] == [str(paths.backbone_graph("${item}"))]
    assert not [key for key in stage["do"]["params"] if key.startswith("models")]


def test_quantize_joins_heads_to_the_int8_graph_of_every_cached_backbone():
    """Each cached backbone's graph is quantized once, calibrated on its own training arrays
    and nothing of any head; quantize reads those graphs, and the export's fp32
    probabilities instead of running the fp32 model again."""
    cached = declared(ROOT / "dvc.yaml")["cached"]
    assert {str(paths.backbone_int8(name)) for name in cached} | {
        str(paths.TEST_PROBABILITIES), str(paths.ONNX_FILE)} <= data_deps("quantize")
    stage = STAGES["quantize_backbone"]
    assert stage["foreach"] == "${cached}"
    deps = {dep for dep in stage["do"]["deps"] if not dep.startswith(("rarespecies", "stages"))}
    assert deps == {str(paths.backbone_graph("${item}")),
                    str(paths.split_file(paths.arrays_dir("${item}"), "train", "x"))}
    assert stage["do"]["outs"] == [str(paths.backbone_int8("${item}"))]
    assert all(key.startswith("quantize.") for key in stage["do"]["params"])
    assert "quantize.max_f1_drop" not in stage["do"]["params"]
    assert str(paths.TEST_PROBABILITIES) in STAGES["export"]["outs"]
