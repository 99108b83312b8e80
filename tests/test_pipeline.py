"""The whole pipeline on the tiny profile: outputs, parity, reruns exactly what changed."""

import json

import pytest
import yaml

from conftest import ran_stages, run

pytestmark = pytest.mark.slow
MODELS = ("custom_cnn", "convnext_full")


def test_first_repro_runs_every_stage(reproduced):
    _, output = reproduced
    assert ran_stages(output) == {
        "ingest", "validate", "split", "preprocess@custom_cnn", "preprocess@convnext_full",
        "features@convnext_full", "train@custom_cnn", "train@convnext_full",
        "evaluate@custom_cnn", "evaluate@convnext_full", "export", "benchmark"}


def test_metrics_plots_and_reports_are_written(reproduced):
    project, _ = reproduced
    labels = json.loads((project / "artifacts/split/labels.json").read_text())
    for model in MODELS:
        metrics = json.loads((project / f"metrics/{model}.json").read_text())
        assert 0 <= metrics["macro_f1"] <= 1 and metrics["classes"] == len(labels)
        assert metrics["test_images"] >= len(labels)
        assert (project / f"dvclive/{model}/plots/metrics/train/loss.tsv").is_file()
        confusion = (project / f"plots/{model}/confusion.csv").read_text().splitlines()
        assert confusion[0] == "actual,predicted" and len(confusion) == metrics["test_images"] + 1
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=project).stdout)
    files = next(iter(shown.values()))["data"]
    assert {"metrics/custom_cnn.json", "metrics/convnext_full.json",
            "metrics/benchmark.json"} <= set(files)
    ingest = json.loads((project / "reports/ingest.json").read_text())
    assert ingest["quarantined"] == 0 and ingest["ingested"] == ingest["metadata_rows"]
    assert json.loads((project / "reports/validation.json").read_text())["success"]


def test_onnx_export_passes_parity_and_carries_provenance(reproduced):
    from stages.onnx_export import read_metadata

    project, _ = reproduced
    report = json.loads((project / "metrics/export.json").read_text())
    assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    metadata = read_metadata(project / "models/convnext_full.onnx")
    labels = json.loads((project / "artifacts/split/labels.json").read_text())
    assert json.loads(metadata["labels"]) == labels
    assert metadata["input_size"] == "32" and metadata["input_dtype"] == "uint8"
    assert metadata["normalize_max_side"] == "96"  # the tiny profile's ingest.max_side
    data_md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert metadata["data_dvc_md5"] == data_md5
    head = run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    assert metadata["git_revision"].startswith(head)
    macro_f1 = json.loads((project / "metrics/convnext_full.json").read_text())["macro_f1"]
    assert metadata["test_macro_f1"] == f"{macro_f1:.4f}"
    bench = json.loads((project / "metrics/benchmark.json").read_text())
    for runtime in ("keras_tf_function", "onnxruntime_fp32"):
        assert 0 < bench[runtime]["p50_ms"] <= bench[runtime]["p95_ms"]
        assert bench[runtime]["throughput_ips"] > 0


def test_second_repro_runs_nothing(reproduced):
    project, _ = reproduced
    again = run("dvc", "repro", cwd=project)
    assert ran_stages(again.stdout) == set()
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}


def test_head_parameter_reruns_only_that_model_and_export(reproduced):
    project, _ = reproduced
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["models"]["convnext_full"]["training"]["learning_rate"] = 0.0005
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        output = run("dvc", "repro", cwd=project).stdout
        assert ran_stages(output) == {"train@convnext_full", "evaluate@convnext_full",
                                      "export", "benchmark"}
    finally:
        params_file.write_text(original)
        run("dvc", "repro", cwd=project)  # back to the committed state (from the run cache)


def test_export_keeps_no_file_when_parity_fails(reproduced, monkeypatch, tmp_path):
    import stages.onnx_export as onnx_export
    from stages.export import export
    from stages.params import load_params

    project, _ = reproduced
    monkeypatch.chdir(project)
    real_parity = onnx_export.parity
    monkeypatch.setattr(onnx_export, "parity",
                        lambda *a, **k: real_parity(*a, **k) | {"max_abs_diff": 0.25})
    params = load_params(project / "params.yaml")
    out, report = tmp_path / "model.onnx", tmp_path / "export.json"
    with pytest.raises(onnx_export.ParityError, match=r"0\.25"):
        export("convnext_full", params.model("convnext_full"), params.export, out, report,
               params.ingest.max_side)
    assert not out.exists() and not report.exists()
