"""The whole pipeline on the tiny profile: outputs, parity, reruns exactly what changed."""

import json
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import project_copy, ran_stages, run

pytestmark = pytest.mark.slow
MODELS = ("custom_cnn", "inception_resnet_v2", "densenet121", "convnext_mini", "convnext_full")
BACKBONES = ("pixels", "convnext_base", "densenet121", "inception_resnet_v2")
# README's `dvc exp show`: each model's test macro F1 (kept), the models' and backbones' changed
# settings, nothing else (dropped: every column not named models.* or backbones.*).
EXP_SHOW = ("dvc", "exp", "show", "--no-pager", "--only-changed",
            "--keep", r"Experiment|.*\.f1$", "--drop", r"^(?!models\.|backbones\.)")


def test_the_readme_writes_the_exp_show_command_this_file_runs():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert readme.count(shlex.join(EXP_SHOW)) >= 2  # the experiments and the sweeps sections


def test_first_repro_runs_every_stage(reproduced):
    _, output = reproduced
    assert ran_stages(output) == {
        "ingest", "validate", "split", *(f"preprocess@{b}" for b in BACKBONES),
        "features@convnext_base", "export_backbone@convnext_base",
        "quantize_backbone@convnext_base", *(f"train@{m}" for m in MODELS),
        *(f"evaluate@{m}" for m in MODELS), "leaderboard", "select", "export", "quantize",
        "tf_baseline", "benchmark", "model_card"}


def test_metrics_plots_and_reports_are_written(reproduced):
    project, _ = reproduced
    labels = json.loads((project / "artifacts/split/labels.json").read_text())
    for model in MODELS:
        metrics = json.loads((project / f"reports/test/{model}.json").read_text())
        assert 0 <= metrics["macro_f1"] <= 1 and metrics["classes"] == len(labels)
        assert metrics["test_images"] >= len(labels)
        # The metrics file: the numbers people compare, under the model's name.
        trained = json.loads((project / f"reports/train/{model}.json").read_text())
        assert json.loads((project / f"metrics/models/{model}.json").read_text()) == {model: {
            "f1": metrics["macro_f1"], "wf1": metrics["weighted_f1"],
            "acc": metrics["accuracy"], "top5": metrics["top5_accuracy"],
            "val_f1": trained["val_macro_f1"]}}
        assert (project / f"dvclive/{model}/plots/metrics/train/loss.tsv").is_file()
        confusion = (project / f"plots/{model}/confusion.csv").read_text().splitlines()
        assert confusion[0] == "actual,predicted" and len(confusion) == metrics["test_images"] + 1
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=project).stdout)
    files = next(iter(shown.values()))["data"]
    assert {*(f"metrics/models/{m}.json" for m in MODELS), "metrics/benchmark.json"} <= set(files)
    board = (project / "reports/leaderboard.md").read_text()
    assert all(f"| {m} |" in board for m in MODELS) and "majority class (baseline)" in board
    ingest = json.loads((project / "reports/ingest.json").read_text())
    assert ingest["quarantined"] == 0 and ingest["ingested"] == ingest["metadata_rows"]
    assert json.loads((project / "reports/validation.json").read_text())["success"]


def test_onnx_export_passes_parity_and_carries_provenance(reproduced):
    from rarespecies.runtime.session import read_metadata

    project, _ = reproduced
    report = json.loads((project / "reports/export.json").read_text())
    assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    assert json.loads((project / "metrics/export.json").read_text()) == {
        "parity": {"max_diff": report["max_abs_diff"], "top1": report["top1_agreement"]}}
    assert report["model"] == "convnext_full"
    assert report["reason"] == "export.model names convnext_full"
    metadata = read_metadata(project / "export/model.onnx")
    assert metadata["model_name"] == "convnext_full" and metadata["backbone"] == "ConvNeXtTiny"
    labels = json.loads((project / "artifacts/split/labels.json").read_text())
    assert json.loads(metadata["labels"]) == labels
    assert metadata["input_size"] == "32" and metadata["input_dtype"] == "uint8"
    assert metadata["normalize_max_side"] == "96"  # the tiny profile's ingest.max_side
    data_md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert metadata["data_dvc_md5"] == data_md5
    # Nothing that changes from run to run is in the file: its bytes depend on the model only.
    assert "git_revision" not in metadata and "convert_seconds" not in report
    macro_f1 = json.loads((project / "reports/test/convnext_full.json").read_text())["macro_f1"]
    assert metadata["test_macro_f1"] == f"{macro_f1:.4f}"


def _onnx_top1(path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0].argmax(1)


def test_int8_variant_benchmark_and_model_card(reproduced):
    from rarespecies.export.benchmark import BenchmarkReport
    from rarespecies.runtime.session import read_metadata

    project, _ = reproduced
    quantized = json.loads((project / "reports/quantize.json").read_text())
    int8 = project / "export/int8/model.onnx"
    assert int8.is_file() == quantized["shipped"]
    assert json.loads((project / "metrics/quantize.json").read_text()) == {"int8": {
        "f1_drop": quantized["macro_f1_drop"], "top1": quantized["top1_agreement"],
        "shipped": quantized["shipped"]}}
    assert int8.is_file() or (project / "export/int8/NOT_SHIPPED.txt").is_file()
    if int8.is_file():
        assert read_metadata(int8)["labels"] == read_metadata(project / "export/model.onnx")[
            "labels"]
        # Independently of the stage's own report: both files, same test images, onnxruntime.
        images = np.load(project / "artifacts/export/test_x.npy")
        fp32_top1, int8_top1 = (_onnx_top1(path, images) for path in
                                (project / "export/model.onnx", int8))
        assert np.mean(fp32_top1 == int8_top1) == pytest.approx(quantized["top1_agreement"])
        assert quantized["top1_agreement"] >= 0.9
    bench = json.loads((project / "reports/benchmark.json").read_text())
    BenchmarkReport.model_validate(bench)  # strict: no missing, extra or impossible figure
    assert ("onnxruntime_int8" in bench) == int8.is_file()
    assert bench["threads"] >= 1 and bench["input_size"] == 32
    baseline = json.loads((project / "reports/tf_baseline.json").read_text())
    assert bench["keras_tf_function"]["p50_ms"] == baseline["keras_tf_function"]["p50_ms"]
    headline = json.loads((project / "metrics/benchmark.json").read_text())
    assert headline["p50_ms"]["ort_fp32"] == bench["onnxruntime_fp32"]["p50_ms"]
    assert headline["goals"] == bench["goals"]
    table = (project / "reports/benchmark.md").read_text()
    assert "| onnxruntime fp32 |" in table and "| Keras `model.predict` |" in table
    card = (project / "reports/model_card.md").read_text()
    macro_f1 = json.loads((project / "reports/test/convnext_full.json").read_text())["macro_f1"]
    assert "# Model card: convnext_full" in card and f"| {macro_f1:.4f} |" in card
    assert "reports/benchmark.md" in card and "Worst families:" in card


def test_second_repro_runs_nothing(reproduced):
    project, _ = reproduced
    again = run("dvc", "repro", cwd=project)
    assert ran_stages(again.stdout) == set()
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}


@contextmanager
def _params_changed(project, change) -> Iterator[None]:
    """params.yaml with `change(params)` applied for the block, restored afterwards."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    change(params)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        yield
    finally:
        params_file.write_text(original)


def _repro_with(project, change) -> set[str]:
    """Stages a `dvc repro` runs after `change(params)`; params.yaml is restored afterwards."""
    try:
        with _params_changed(project, change):
            return ran_stages(run("dvc", "repro", cwd=project).stdout)
    finally:
        run("dvc", "repro", cwd=project)  # back to the committed state (from the run cache)


def test_other_model_parameter_leaves_export_alone(reproduced):
    project, _ = reproduced

    def change(params):
        params["models"]["custom_cnn"]["head"]["dropout"] = 0.1

    # select sees the same choice and writes the same folder, so DVC skips export.
    assert _repro_with(project, change) == {"train@custom_cnn", "evaluate@custom_cnn",
                                            "leaderboard", "select"}


def _stale(project, stage: str, change) -> dict:
    """`dvc status --json <stage>` after `change(params)`; params.yaml is restored afterwards."""
    with _params_changed(project, change):
        return json.loads(run("dvc", "status", "--json", stage, cwd=project).stdout)


def test_backbone_graph_reruns_for_a_backbone_change_not_for_a_head_change(reproduced):
    """The backbone's ONNX graph depends on the backbone only: a head experiment reuses it."""
    project, _ = reproduced
    stage = "export_backbone@convnext_base"
    assert (project / "artifacts/onnx/convnext_base/backbone.onnx").is_file()

    def head(params):
        params["models"]["convnext_full"]["head"]["dropout"] = 0.3
        params["models"]["convnext_full"]["training"]["learning_rate"] = 0.01

    def backbone(params):
        params["backbones"]["convnext_base"]["seed"] += 1

    def batch_size(params):  # of feature extraction: the graph does not depend on it
        params["backbones"]["convnext_base"]["batch_size"] += 1

    assert _stale(project, stage, head) == {}
    assert _stale(project, stage, batch_size) == {}
    # Its own key changed (DVC lists it among the stage's changed params.yaml entries).
    assert "backbones.convnext_base.seed" in json.dumps(_stale(project, stage, backbone)[stage])
    # Export reads the graph; the head's parameters reach it through select's hand-over.
    assert json.loads(run("dvc", "status", "--json", "export", cwd=project).stdout) == {}


def test_backbone_int8_reruns_for_its_quantization_not_for_a_head_or_the_gate(reproduced):
    """The backbone's INT8 graph is remade when how it is quantized changes, not when the
    head or the shipping threshold does: a head experiment quantizes only its head."""
    project, _ = reproduced
    stage = "quantize_backbone@convnext_base"
    assert (project / "artifacts/onnx/convnext_base/backbone.int8.onnx").is_file()

    def head(params):
        params["models"]["convnext_full"]["head"]["dropout"] = 0.3

    def gate(params):
        params["quantize"]["max_f1_drop"] = 0.02

    def calibration(params):
        params["quantize"]["calibration_images"] = 8

    assert _stale(project, stage, head) == {}
    assert _stale(project, stage, gate) == {}
    assert "quantize.calibration_images" in json.dumps(_stale(project, stage, calibration))


def test_export_best_picks_the_highest_validation_f1(reproduced, tmp_path):
    from rarespecies.config.params import load_params
    from rarespecies.export.select import select

    project, _ = reproduced
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["export"]["model"] = "best"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    choice = select(load_params(tmp_path / "params.yaml"), project, tmp_path / "export")
    scores = {m: json.loads((project / f"reports/train/{m}.json").read_text())["val_macro_f1"]
              for m in MODELS}
    assert scores[choice["model"]] == max(scores.values())
    assert choice["reason"].startswith("export.model is best: highest validation macro F1")
    assert (tmp_path / "export/model.keras").is_file()


def test_experiment_reports_the_changed_metric(reproduced, tmp_path):
    """`dvc exp run -S` on a head parameter; `dvc metrics diff` and `dvc exp show` report it."""
    project = project_copy(reproduced[0], tmp_path / "project", commit=True)
    start = time.perf_counter()
    output = run("dvc", "exp", "run", "-n", "short-head",
                 "-S", "models.convnext_full.training.epochs=1", cwd=project).stdout
    print(f"head-only experiment on the tiny profile: {time.perf_counter() - start:.1f} s")
    # That model and the export chain, nothing else: not features@convnext_base (a head
    # never reruns its backbone), no other model.
    assert ran_stages(output) == {"train@convnext_full", "evaluate@convnext_full",
                                  "leaderboard", "select", "export", "quantize", "benchmark",
                                  "model_card"}
    trained = json.loads((project / "reports/train/convnext_full.json").read_text())
    assert trained["epochs"] == 1  # the experiment's outputs are in the workspace
    diff = json.loads(run("dvc", "metrics", "diff", "--json", cwd=project).stdout)
    assert "metrics/models/custom_cnn.json" not in diff  # nothing else retrained
    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=project).stdout)
    experiments = [exp for commit in shown for exp in commit.get("experiments") or []]
    ours = next(exp for exp in experiments if exp["name"] == "short-head")
    data = ours["revs"][0]["data"]
    figures = data["metrics"]["metrics/models/convnext_full.json"]["data"]["convnext_full"]
    assert set(figures) == {"f1", "wf1", "acc", "top5", "val_f1"}
    params = data["params"]["params.yaml"]["data"]["models"]["convnext_full"]
    assert params["training"]["epochs"] == 1


def test_exp_show_as_the_readme_writes_it_fits_160_columns(reproduced, tmp_path, monkeypatch):
    """README's command shows every model's test macro F1 for the baseline and two experiments
    in a 160-column terminal, no column collapsed to "…"; `dvc metrics diff` of the two fits
    one screen; `dvc plots diff` draws both experiments' training curves."""
    from rarespecies.runtime.metrics import TEST_F1

    project = project_copy(reproduced[0], tmp_path / "project", commit=True)
    for name, dropout in (("drop-1", 0.1), ("drop-4", 0.4)):
        run("dvc", "exp", "run", "-n", name, "-S", f"models.convnext_full.head.dropout={dropout}",
            cwd=project)
    monkeypatch.setenv("COLUMNS", "160")
    table = run(*EXP_SHOW, cwd=project).stdout
    lines = table.splitlines()
    assert "…" not in table and max(map(len, lines)) <= 160, table
    header = next(line for line in lines if "Experiment" in line)
    assert all(f"{m}.{TEST_F1}" in header for m in MODELS), table
    assert "models.convnext_full.head.dropout" in table.replace("\n", ""), table
    rows = [line.split() for line in lines[3:] if line.strip().strip("─")]
    # The workspace, the baseline commit and its two experiments, each with five F1 figures.
    assert len(rows) == 4 and rows[0][0] == "workspace", table
    assert [row[0] for row in rows[2:]] == ["├──", "└──"], table
    assert all(0 <= float(f1) <= 1 for row in rows for f1 in row[-6:-1]), table
    diff = run("dvc", "metrics", "diff", "drop-1", "drop-4", cwd=project).stdout.splitlines()
    assert len(diff) <= 50 and max(map(len, diff)) <= 160, "\n".join(diff)
    plots = json.loads(run("dvc", "plots", "diff", "drop-1", "drop-4", "--json", "--split",
                           "--targets", "dvclive/convnext_full/plots/metrics",
                           cwd=project).stdout)
    curves = plots["data"]  # {tsv file: [one vega plot]}, each overlaying the revisions
    assert any(path.endswith("train/loss.tsv") for path in curves), list(curves)
    assert all({"drop-1", "drop-4"} <= set(entry["revisions"])
               for plot in curves.values() for entry in plot), curves


def test_export_keeps_no_file_when_parity_fails(reproduced, monkeypatch, tmp_path):
    import rarespecies.export.export as module
    from rarespecies.config.params import load_params
    from rarespecies.export.convert import ParityError
    from rarespecies.export.export import export

    project, _ = reproduced
    monkeypatch.chdir(project)
    for gate in ("parity", "compare"):  # a whole conversion's gate, a grafted model's
        real = getattr(module, gate)
        monkeypatch.setattr(module, gate, lambda *a, real=real, **k: real(*a, **k)
                            | {"max_abs_diff": 0.25})
    # The conversion itself is the pipeline's (tested above): its file, without converting again.
    monkeypatch.setattr(module, "convert_to_onnx", lambda model, path, *_: shutil.copyfile(
        project / "export/model.onnx", path))
    monkeypatch.setattr(module, "graft", lambda backbone, head, weights, path, *_:
                        shutil.copyfile(project / "export/model.onnx", path))
    params = load_params(project / "params.yaml")
    out, report = tmp_path / "model.onnx", tmp_path / "export.json"
    with pytest.raises(ParityError, match=r"0\.25"):
        export(project / "artifacts/export", params.export, out, report, tmp_path / "m.json",
               params.ingest.max_side)
    assert not out.exists() and not report.exists() and not (tmp_path / "m.json").exists()
