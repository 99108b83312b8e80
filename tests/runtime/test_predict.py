"""`rarespecies predict`: the exported model on real EOL photos, without TensorFlow."""

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import EOL_SAMPLE, ROOT, require_shared, run

pytestmark = pytest.mark.slow
GRAYSCALE = "chordata_balaenidae/29364685_46559421_eol-full-size-copy.jpg"
HUGE = "chordata_ardeidae/30030966_45517756_eol-full-size-copy.jpg"  # 5792 x 8688


@pytest.fixture(scope="module")
def model(reproduced):
    require_shared(EOL_SAMPLE / "metadata.csv")
    project, _ = reproduced
    return project / "export/model.onnx"


def test_real_eol_photos_get_valid_probabilities(model):
    proc = run("rarespecies", "predict", str(model), str(EOL_SAMPLE), "--top-k", "3", "--json",
               cwd=model.parent)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    labels = json.loads((model.parents[1] / "artifacts/split/labels.json").read_text())
    assert len(results) == len(list(EOL_SAMPLE.rglob("*.jpg"))) == 128
    for result in results:
        probabilities = [t["probability"] for t in result["top"]]
        assert result["error"] is None and len(probabilities) == 3
        assert all(0 <= p <= 1 for p in probabilities) and probabilities == sorted(
            probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-5
        assert {t["family"] for t in result["top"]} <= set(labels)
    paths = {r["path"] for r in results}
    assert str(EOL_SAMPLE / GRAYSCALE) in paths and str(EOL_SAMPLE / HUGE) in paths
    assert "classified 128 of 128 images" in proc.stderr


def test_a_bad_image_is_reported_and_the_rest_go_on(model, tmp_path):
    shutil.copy(EOL_SAMPLE / GRAYSCALE, tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"<html>not an image</html>")
    shutil.copy(EOL_SAMPLE / HUGE, tmp_path / "c.jpg")
    proc = run("rarespecies", "predict", str(model), str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == [
        str(tmp_path / "a.jpg"), str(tmp_path / "c.jpg")]
    assert f"{tmp_path / 'b.jpg'}: error: cannot read image" in proc.stderr
    assert "classified 2 of 3 images; 1 could not be read" in proc.stderr


def test_a_file_that_is_no_model_is_one_clear_line(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"nope")
    proc = run("rarespecies", "predict", str(tmp_path / "m.onnx"), str(EOL_SAMPLE / GRAYSCALE),
               cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("rarespecies predict: error: ")
    assert "is not a loadable ONNX model" in proc.stderr and "Traceback" not in proc.stderr


def test_prediction_never_imports_tensorflow(model):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rarespecies.cli import app\n"
        f"result = CliRunner().invoke(app, ['predict', {str(model)!r}, "
        f"{str(EOL_SAMPLE / GRAYSCALE)!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'dvc', 'prefect')"
        " if m in sys.modules))\n")
    assert run(sys.executable, "-c", code, cwd=model.parent).stdout.strip() == "[]"


def test_images_are_prepared_as_the_pipeline_prepared_them(model):
    from rarespecies.runtime.predict import Classifier

    project = model.parents[1]
    classifier = Classifier(model)
    split = pd.read_csv(project / "artifacts/split/split.csv", dtype={"id": str})
    manifest = pd.read_csv(project / "artifacts/ingest/manifest.csv", dtype={"id": str})
    test = split[split["split"] == "test"].merge(manifest[["id", "source_path"]], on="id")
    trained_on = np.load(project / "artifacts/arrays/convnext_base/test_x.npy")
    for row, expected in zip(test.itertuples(), trained_on, strict=True):
        pixels = classifier.pixels(project / "data" / row.source_path)
        # Ingest stores normalized images as JPEG (quality 95): only that re-encoding differs.
        difference = np.abs(pixels.astype(int) - expected.astype(int))
        assert pixels.shape == expected.shape and difference.mean() < 2.0


def test_base_install_is_the_package_alone_and_predicts_without_tensorflow(model, tmp_path):
    venv = tmp_path / "venv"

    def alone(*args: str, check: bool = True):
        """In the new environment, without the checkout on PYTHONPATH."""
        return run(*args, cwd=tmp_path, check=check, checkout_on_path=False)

    alone(sys.executable, "-m", "venv", str(venv))
    # The base install only: no [pipeline] extra, so no TensorFlow, Keras, DVC or Prefect.
    alone(str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "-c",
          str(ROOT / "constraints.txt"), str(ROOT))
    absent = alone(str(venv / "bin/python"), "-c", "import tensorflow", check=False)
    assert "No module named 'tensorflow'" in absent.stderr
    shown = alone(str(venv / "bin/python"), "-m", "pip", "show", "-f", "rarespecies").stdout
    files = [line.strip() for line in shown.split("Files:")[1].splitlines() if line.strip()]
    tops = {name.split("/")[0] for name in files if not name.startswith("..")}
    assert tops == {"rarespecies", "rarespecies-0.1.0.dist-info"}  # no stages/, no flows/
    assert "rarespecies/data/expectations/manifest.json" in files
    proc = alone(str(venv / "bin/rarespecies"), "predict", str(model),
                 str(EOL_SAMPLE / GRAYSCALE), "--json")
    assert json.loads(proc.stdout)["error"] is None
    (tmp_path / "c.csv").write_text("eol_content_id\n")
    for command in (["ensure-data"], ["acquire", "eol", "--catalog", "c.csv"],
                    ["acquire", "huggingface"], ["sample", "--out", "d"]):
        proc = alone(str(venv / "bin/rarespecies"), *command, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, command
        assert len(proc.stderr.strip().splitlines()) == 1, (command, proc.stderr)
        assert "pip install '.[pipeline]'" in proc.stderr, (command, proc.stderr)
