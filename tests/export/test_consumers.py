"""The exported model in Node.js (onnxruntime-node) and OpenCV's DNN module, fed the same pixels
as Python's onnxruntime: the same probabilities, or the exact refusal the README documents."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rarespecies.config.params import QuantizeParams
from rarespecies.export.consumers import (
    NODE_DIR,
    ConsumerResult,
    ConsumerSetupError,
    check_model,
    markdown_table,
    node_version,
    reference,
    run_node,
    run_opencv,
    unsupported_operations,
)
from rarespecies.export.quantize import quantize_model

TOLERANCE = 1e-4
FORWARD_GRAPH = "(-215:Assertion failed) buf.shape() == m.shape() in function 'forwardGraph'"


def _npy_roundtrip(tmp_path: Path, array: np.ndarray) -> subprocess.CompletedProcess:
    np.save(tmp_path / "in.npy", array)
    script = ("const p = require(process.argv[1]); const a = p.readNpyUint8(process.argv[2]);"
              "p.writeNpyFloat32(process.argv[3], a.shape, Float32Array.from(a.data));")
    return subprocess.run(["node", "-e", script, str(NODE_DIR / "predict.js"),
                           str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                          capture_output=True, text=True, check=False)


def test_node_consumer_reads_uint8_npy_and_writes_float32_npy(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    done = _npy_roundtrip(tmp_path, pixels)
    assert done.returncode == 0, done.stderr
    out = np.load(tmp_path / "out.npy")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, pixels.astype(np.float32))


@pytest.mark.parametrize("bad", [np.zeros((2, 3), np.float32),
                                 np.asfortranarray(np.zeros((2, 3), np.uint8))])
def test_node_consumer_refuses_pixels_that_are_not_c_ordered_uint8(tmp_path, bad):
    done = _npy_roundtrip(tmp_path, bad)
    assert done.returncode != 0
    assert "expected C-ordered uint8 pixels" in done.stderr


def test_node_consumer_usage_and_missing_install(tmp_path):
    done = subprocess.run(["node", str(NODE_DIR / "predict.js")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and done.stderr.startswith("usage: ")
    assert node_version() == json.loads(
        (NODE_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"][
            "onnxruntime-node"]  # the pinned version is the one installed
    with pytest.raises(ConsumerSetupError, match="npm ci --ignore-scripts"):
        node_version(tmp_path)


def test_unsupported_operations_are_read_from_opencvs_warning():
    log = ("[ WARN:0@0.4] global onnx_importer2.cpp:729 parseModel DNN/ONNX: the model 'm' "
           "cannot be loaded with the new parser. Trying the older parser.  Unsupported "
           "operations:\n\tDynamicQuantizeLinear\n\tMatMulInteger\n\n")
    assert unsupported_operations(log) == ["DynamicQuantizeLinear", "MatMulInteger"]
    assert unsupported_operations("nothing refused\n") == []


def test_markdown_table_shows_refusals_and_parity():
    table = markdown_table([ConsumerResult("node", "m.onnx", None, 2e-7, 1.0),
                            ConsumerResult("cv", "m.onnx", "boom"),
                            ConsumerResult("cv2", "m.onnx", None, 3e-3, 0.9)])
    lines = table.splitlines()
    assert len(lines) == 5
    assert "runs, same probabilities" in lines[2] and "2.00e-07" in lines[2]
    assert "refused: `boom`" in lines[3]
    assert "DIFFERENT probabilities (> 0.0001)" in lines[4] and "90.0%" in lines[4]


@pytest.mark.slow
def test_node_runs_the_export_with_pythons_probabilities(mini_convnext_onnx, mini_pixels):
    expected = reference(mini_convnext_onnx, mini_pixels, 4)
    result = run_node(mini_convnext_onnx, mini_pixels, expected, 4)
    assert result.error is None
    assert result.max_abs_diff <= TOLERANCE and result.top1_agreement == 1.0


@pytest.mark.slow
def test_opencv_runs_the_export_with_pythons_probabilities(mini_convnext_onnx, mini_pixels):
    """What the README documents: OpenCV's default engine runs the export; its older engine
    refuses it (fails once that changes: then update the README)."""
    expected = reference(mini_convnext_onnx, mini_pixels, 4)
    for engine in ("auto", "new"):
        result = run_opencv(mini_convnext_onnx, mini_pixels, expected, 4, engine=engine)
        assert result.error is None, result
        assert result.max_abs_diff <= TOLERANCE and result.top1_agreement == 1.0
    classic = run_opencv(mini_convnext_onnx, mini_pixels, expected, 4, engine="classic")
    assert classic.error is not None and "permute_layer.cpp" in classic.error


@pytest.mark.slow
def test_check_model_needs_no_rewrite_of_the_export(mini_convnext_onnx, mini_pixels):
    results = check_model(mini_convnext_onnx, mini_pixels, 4)
    assert len(results) == 2  # no "portable rewrite" row: the export already is portable
    for result in results:
        assert result.error is None, result
        assert result.max_abs_diff <= TOLERANCE and result.top1_agreement == 1.0


@pytest.fixture(scope="module")
def int8_models(mini_convnext_onnx, mini_pixels, tmp_path_factory) -> dict[str, Path]:
    """INT8 variants of the mini ConvNeXt: dynamic (what `quantize.method: dynamic` ships), and
    static QDQ (MatMul and Conv, per-channel weights)."""
    folder = tmp_path_factory.mktemp("int8")
    static = QuantizeParams(method="static", op_types=["MatMul", "Conv"], per_channel=True)
    return {"dynamic": quantize_model(mini_convnext_onnx, folder / "dynamic.onnx",
                                      QuantizeParams(method="dynamic")),
            "static": quantize_model(mini_convnext_onnx, folder / "static.onnx", static,
                                     calibration=mini_pixels)}


@pytest.mark.slow
def test_dynamic_int8_depends_on_the_batch_so_runtimes_are_compared_on_the_same_batches(
        int8_models, mini_pixels):
    # DynamicQuantizeLinear takes one scale per batch: an image's probabilities change with
    # its batch-mates. That is why check_model feeds every runtime the same batches.
    one = reference(int8_models["dynamic"], mini_pixels, 1)
    four = reference(int8_models["dynamic"], mini_pixels, 4)
    assert np.abs(one - four).max() > TOLERANCE
    result = run_node(int8_models["dynamic"], mini_pixels, four, 4)
    assert result.error is None and result.max_abs_diff <= TOLERANCE


@pytest.mark.slow
def test_opencv_refuses_dynamic_int8_and_runs_static_qdq_int8(int8_models, mini_pixels):
    dynamic = int8_models["dynamic"]
    expected = reference(dynamic, mini_pixels, 4)
    new = run_opencv(dynamic, mini_pixels, expected, 4, engine="new")
    assert new.error == ("readNetFromONNX returned an empty network after its new engine "
                         "refused DynamicQuantizeLinear")
    auto = run_opencv(dynamic, mini_pixels, expected, 4, engine="auto")
    assert auto.error is not None
    assert auto.error.endswith("after its new engine refused DynamicQuantizeLinear")

    static = int8_models["static"]
    expected = reference(static, mini_pixels, 4)
    for runtime in (run_node, run_opencv):
        result = runtime(static, mini_pixels, expected, 4)
        assert result.error is None, result
        assert result.max_abs_diff <= TOLERANCE and result.top1_agreement == 1.0
