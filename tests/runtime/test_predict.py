"""`rarespecies predict`: the exported model on real EOL photos, without TensorFlow; bad
models and odd files with a tiny hand-built ONNX model."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from rarespecies.runtime.predict import Classifier, ModelError, image_files, predict

from conftest import EOL_SAMPLE, ROOT, require_shared, run

GRAYSCALE = "chordata_balaenidae/29364685_46559421_eol-full-size-copy.jpg"
HUGE = "chordata_ardeidae/30030966_45517756_eol-full-size-copy.jpg"  # 5792 x 8688


@pytest.fixture(scope="module")
def model(reproduced):
    require_shared(EOL_SAMPLE / "metadata.csv")
    project, _ = reproduced
    return project / "export/model.onnx"


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_images_are_prepared_as_the_pipeline_prepared_them(model):
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


@pytest.mark.slow
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


# A tiny classifier with the pipeline's metadata, built by hand: fast, and wrong on purpose.


def tiny_model(path: Path, labels: int = 3, input_size: int = 8,
               shape: tuple = ("N", 8, 8, 3), outputs: int | str | None = None,
               dtype: int = TensorProto.UINT8) -> Path:
    """pixels `shape` -> Cast -> mean over the middle axes -> MatMul -> Softmax.

    Args:
        path: where to write it.
        labels: how many labels its metadata lists.
        input_size: the metadata's input side (the graph's is in `shape`).
        shape: the graph's declared input shape.
        outputs: probabilities per image (default: one per label); "dynamic" gives one per
            pixel row, under a symbolic output dimension that only a run can check.
        dtype: the input's element type.

    Returns:
        `path`.
    """
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT)]
    weights = []
    if outputs == "dynamic":
        shape, out = ("N", "S", "S", 3), ["N", "K"]
        nodes.append(helper.make_node("ReduceMean", ["f"], ["logits"], axes=[2, 3], keepdims=0))
    else:
        out = ["N", outputs or labels]
        weights = [numpy_helper.from_array(
            np.linspace(-1, 1, shape[-1] * out[1], dtype=np.float32).reshape(shape[-1], -1), "w")]
        nodes += [helper.make_node("ReduceMean", ["f"], ["mean"],
                                   axes=list(range(1, len(shape) - 1)), keepdims=0),
                  helper.make_node("MatMul", ["mean", "w"], ["logits"])]
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("pixels", dtype, list(shape))],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, out)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"labels": json.dumps([f"family{i}" for i in range(labels)]),
                                   "input_size": str(input_size), "normalize_max_side": "16"})
    onnx.save(model, path)
    return path


def photo(path: Path, colour: tuple[int, int, int] = (200, 30, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 20), colour).save(path, format="JPEG")
    return path


def predict_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`rarespecies predict` in a process that cannot hang the suite (a FIFO used to block it)."""
    return subprocess.run([sys.executable, "-m", "rarespecies.cli", "predict", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def test_a_tiny_consistent_model_predicts(tmp_path):
    classifier = Classifier(tiny_model(tmp_path / "m.onnx"))
    results = list(predict(classifier, [photo(tmp_path / "a.jpg")], top_k=3))
    assert [r.error for r in results] == [None]
    assert sorted(label for label, _ in results[0].top) == ["family0", "family1", "family2"]
    assert sum(p for _, p in results[0].top) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(("model", "message"), [
    ({"input_size": 16}, "its metadata says input_size 16 but the graph's input is "
                         "[N, 8, 8, 3]"),
    ({"labels": 2, "outputs": 3}, "its metadata lists 2 labels but the graph's output is [N, 3]"),
    ({"labels": 4, "outputs": 3}, "its metadata lists 4 labels but the graph's output is [N, 3]"),
    ({"shape": ("N", 8, 8, 1)}, "the graph's input pixels is tensor(uint8) [N, 8, 8, 1], not "
                                "uint8 [N, S, S, 3]"),
    ({"dtype": TensorProto.FLOAT}, "the graph's input pixels is tensor(float) [N, 8, 8, 3], "
                                   "not uint8 [N, S, S, 3]"),
    ({"shape": ("N", 8, 8)}, "the graph's input pixels is tensor(uint8) [N, 8, 8], not uint8 "
                               "[N, S, S, 3]"),
    ({"outputs": "dynamic"}, "its metadata lists 3 labels but the graph's output is [1, 8] when "
                             "run on [1, 8, 8, 3]"),
], ids=["input-size", "fewer-labels", "more-labels", "channels", "float-input", "rank-3",
        "dynamic-output"])
def test_metadata_that_disagrees_with_the_graph_is_named(tmp_path, model, message):
    path = tiny_model(tmp_path / "m.onnx", **model)
    with pytest.raises(ModelError) as raised:
        list(predict(Classifier(path), [photo(tmp_path / "a.jpg")]))  # dynamic: on the run
    assert str(raised.value) == f"{path}: {message}; export it again with `dvc repro export`"


def test_a_model_onnxruntime_cannot_run_is_one_line(tmp_path):
    path = tiny_model(tmp_path / "m.onnx", shape=(1, 8, 8, 3))  # a fixed batch of one
    photos = [photo(tmp_path / "a.jpg"), photo(tmp_path / "b.jpg")]
    with pytest.raises(ModelError) as raised:
        list(predict(Classifier(path), photos))
    assert str(raised.value).startswith(f"{path}: onnxruntime cannot run it on [2, 8, 8, 3]: ")
    assert "\n" not in str(raised.value)


def test_a_model_that_disagrees_with_its_metadata_is_one_line_exit_1(tmp_path):
    tiny_model(tmp_path / "m.onnx", input_size=16)
    proc = predict_cli("m.onnx", str(photo(tmp_path / "a.jpg")), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "rarespecies predict: error: m.onnx: its metadata says input_size 16 but the graph's "
        "input is [N, 8, 8, 3]; export it again with `dvc repro export`  (--debug shows the "
        "traceback)"]


def special_files(folder: Path) -> dict[str, str]:
    """A FIFO, a socket and a device named like images in `folder`, with the reason for each."""
    folder.mkdir(exist_ok=True)
    os.mkfifo(folder / "fifo.jpg")
    os.symlink(os.devnull, folder / "null.jpg")
    cwd = Path.cwd()
    os.chdir(folder)  # a socket path is limited to ~100 bytes: bind a relative one
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("socket.png")
    finally:
        os.chdir(cwd)
    return {"fifo.jpg": "FIFO", "null.jpg": "character device", "socket.png": "socket"}


@pytest.mark.parametrize("given", ["explicitly", "in-a-folder"])
def test_files_that_are_not_regular_are_skipped_without_blocking(tmp_path, given):
    photos = tmp_path / "photos"
    photo(photos / "good.jpg")
    kinds = special_files(photos)
    targets = ["photos"] if given == "in-a-folder" else [f"photos/{n}" for n in
                                                           ["good.jpg", *kinds]]
    proc = predict_cli(str(tiny_model(tmp_path / "m.onnx")), *targets, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == ["photos/good.jpg"]
    errors = sorted(proc.stderr.splitlines()[:-1])
    assert errors == [f"photos/{name}: error: skipped: {kind}, not a regular file"
                      for name, kind in sorted(kinds.items())]
    assert proc.stderr.splitlines()[-1] == "classified 1 of 4 images; 3 could not be read"


def test_symlink_loops_and_dangling_links_in_a_folder_are_reported(tmp_path):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photo(photos / "good.jpg")
    photo(elsewhere / "linked.jpg")
    os.symlink("b.jpg", photos / "a.jpg")  # a.jpg -> b.jpg -> a.jpg
    os.symlink("a.jpg", photos / "b.jpg")
    os.symlink("missing.jpg", photos / "gone.jpg")
    (photos / "sub").mkdir()
    os.symlink("..", photos / "sub/up")  # a folder loop: walked, it never ends
    os.symlink(elsewhere, photos / "sub/more")  # a linked folder is followed

    results = {r.path.relative_to(photos).as_posix(): r.error
               for r in predict(Classifier(tiny_model(tmp_path / "m.onnx")),
                                image_files([photos]))}
    assert results == {
        "a.jpg": "skipped: symlink loop", "b.jpg": "skipped: symlink loop",
        "gone.jpg": "skipped: dangling symlink", "good.jpg": None,
        "sub/more/linked.jpg": None,
        "sub/up": "skipped: symlink loop (leads back to a folder above)"}


def test_control_characters_in_file_names_never_split_a_line(tmp_path):
    names = ["new\nline.jpg", "tab\there.jpg", "esc\x1b[31mred.jpg", "plain name.jpg"]
    for name in names:
        photo(tmp_path / "photos" / name)
    (tmp_path / "photos/broken\r\nline.jpg").write_bytes(b"not an image")
    model = str(tiny_model(tmp_path / "m.onnx"))

    text = predict_cli(model, "photos", cwd=tmp_path)
    shown = sorted(line.rsplit(": ", 1)[0] for line in text.stdout.splitlines())
    assert shown == sorted(["'photos/new\\nline.jpg'", "'photos/tab\\there.jpg'",
                            "'photos/esc\\x1b[31mred.jpg'", "photos/plain name.jpg"])
    errors = text.stderr.splitlines()
    assert len(errors) == 2 and errors[1] == "classified 4 of 5 images; 1 could not be read"
    assert errors[0].startswith("'photos/broken\\r\\nline.jpg': error: cannot read image: ")
    assert all(c.isprintable() for c in text.stdout + text.stderr if c != "\n")

    as_json = predict_cli(model, "photos", "--json", cwd=tmp_path)
    paths = {json.loads(line)["path"] for line in as_json.stdout.splitlines()}
    assert paths == {f"photos/{name}" for name in [*names, "broken\r\nline.jpg"]}
