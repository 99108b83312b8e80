"""INT8 quantization: a valid smaller model with the fp32 metadata, shipped only past its gate."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from rarespecies.config.params import QuantizeParams
from rarespecies.export import quantize as q
from rarespecies.export.calibration import spread
from rarespecies.export.convert import convert_to_onnx, inference_model
from rarespecies.export.graphs import WEIGHTS_SHA256
from rarespecies.export.optimize import op_counts
from rarespecies.export.quantize import (
    QuantizeError,
    compare,
    graft_int8,
    predict,
    quantize,
    quantize_backbone,
    quantize_model,
)
from rarespecies.modeling.backbones import build_backbone
from rarespecies.runtime.session import read_metadata

pytestmark = pytest.mark.slow
SIZE, CLASSES = 32, 4


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(5)
    head = keras.Sequential([keras.Input((768,)), keras.layers.Dense(32, activation="gelu"),
                             keras.layers.Dense(CLASSES, activation="softmax")])
    model = inference_model(build_backbone("ConvNeXtTiny", SIZE, None), head, SIZE)
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    return convert_to_onnx(model, path, 17, {"labels": '["a", "b", "c", "d"]'})


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "test_x.npy", rng.integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8))
    np.save(tmp_path / "test_y.npy", np.arange(12, dtype=np.int32) % CLASSES)
    np.save(tmp_path / "calibration_x.npy",
            rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8))
    np.save(tmp_path / "calibration_y.npy", np.arange(5, dtype=np.int32) % CLASSES)
    return tmp_path


def test_dynamic_matmul_int8_is_valid_smaller_and_keeps_the_metadata(fp32, tmp_path):
    out = quantize_model(fp32, tmp_path / "int8.onnx", QuantizeParams(method="dynamic"))
    onnx.checker.check_model(str(out), full_check=True)
    assert out.stat().st_size < fp32.stat().st_size / 2  # MatMul weights are most of ConvNeXt
    metadata = read_metadata(out)
    assert metadata["labels"] == '["a", "b", "c", "d"]'
    assert metadata["quantization"] == "dynamic INT8 (per-tensor weights) on MatMul"
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


@pytest.mark.parametrize("method", ["static", "mixed"])
def test_calibrated_quantization_needs_calibration_images(fp32, tmp_path, method):
    params = QuantizeParams(method=method)
    with pytest.raises(ValueError, match=f"{method} quantization needs calibration images"):
        quantize_model(fp32, tmp_path / "int8.onnx", params)


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_mixed_is_static_on_convolutions_and_dynamic_on_matmuls(fp32, tmp_path):
    params = QuantizeParams(method="mixed", static_op_types=["Conv"], op_types=["MatMul"],
                            calibration_images=4)
    images = np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    out = quantize_model(fp32, tmp_path / "int8.onnx", params, images)
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    conv_inputs = {name for node in model.graph.node if node.op_type == "Conv"
                   for name in node.input}
    dequantized = {node.output[0] for node in model.graph.node
                   if node.op_type == "DequantizeLinear"}
    assert conv_inputs & dequantized  # QDQ around the convolutions, calibrated statically
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= _ops(out)  # MatMuls dynamic
    assert "MatMul" not in _ops(out)
    assert not list(tmp_path.glob("*.static.onnx"))  # the intermediate file is gone
    assert read_metadata(out)["quantization"].startswith("static QDQ INT8 on Conv (per-tensor")


def test_static_uses_the_calibration_method_and_activation_type(fp32, tmp_path):
    params = QuantizeParams(method="static", op_types=["MatMul"], activation_type="int8",
                            calibration="percentile", calibration_images=2)
    images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    out = quantize_model(fp32, tmp_path / "int8.onnx", params, images)
    model = onnx.load(str(out))
    zero_points = {node.input[2] for node in model.graph.node
                   if node.op_type == "QuantizeLinear"}
    types = {init.data_type for init in model.graph.initializer if init.name in zero_points}
    assert types == {onnx.TensorProto.INT8}
    assert "percentile calibration on 2 train images" in read_metadata(out)["quantization"]


def _fake_predictions(monkeypatch, fp32: Path, fp32_top1: np.ndarray,
                      int8_top1: np.ndarray) -> None:
    """Make `predict` return these classes, one-hot: `fp32_top1` for `fp32`, else `int8_top1`."""
    import rarespecies.export.quantize as module

    def predict(path, images):
        top1 = fp32_top1 if Path(path) == fp32 else int8_top1
        return np.eye(CLASSES, dtype=np.float32)[top1]

    monkeypatch.setattr(module, "predict", predict)


@pytest.mark.parametrize(("int8_wrong", "shipped"), [(0, True), (1, False)])
def test_gate_ships_only_within_the_allowed_drop(fp32, tmp_path, monkeypatch, int8_wrong,
                                                 shipped):
    labels = np.arange(40) % CLASSES
    int8 = labels.copy()
    int8[:int8_wrong] = (int8[:int8_wrong] + 1) % CLASSES  # one error costs ~2.5 points
    _fake_predictions(monkeypatch, fp32, labels, int8)
    other = tmp_path / "int8.onnx"
    other.write_bytes(fp32.read_bytes())
    report = compare(fp32, other, np.zeros((40, 1), np.uint8), labels, max_f1_drop=0.01)
    assert report["shipped"] is shipped and report["fp32_macro_f1"] == 1.0
    assert report["macro_f1_drop"] == pytest.approx(1.0 - report["int8_macro_f1"])
    assert ("within" if shipped else "more than") in report["reason"]


def test_stage_ships_the_int8_model_when_it_passes(fp32, export_dir, tmp_path):
    out = tmp_path / "export/int8"
    params = QuantizeParams(max_f1_drop=1.0, calibration_images=3)  # the default: mixed
    report = quantize(fp32, export_dir, out, params, tmp_path / "quantize.json",
                      tmp_path / "metrics.json")
    assert report["shipped"] and report["images"] == 12
    assert "3 train images" in report["quantization"]  # calibrated on that split's first 3
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]
    assert 0 <= report["int8_macro_f1"] <= 1 and 0 <= report["top1_agreement"] <= 1
    # The report keeps every figure, the metrics file only the three people compare.
    assert json.loads((tmp_path / "quantize.json").read_text()) == report
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"int8": {
        "f1_drop": report["macro_f1_drop"], "top1": report["top1_agreement"], "shipped": True}}


def test_stage_keeps_a_note_instead_of_a_failing_model(fp32, export_dir, tmp_path, monkeypatch):
    labels = np.load(export_dir / "test_y.npy")
    _fake_predictions(monkeypatch, fp32, labels, (labels + 1) % CLASSES)
    out = tmp_path / "export/int8"
    report = quantize(fp32, export_dir, out, QuantizeParams(method="dynamic"),
                      tmp_path / "quantize.json", tmp_path / "metrics.json")
    assert not report["shipped"] and report["int8_macro_f1"] == 0.0
    assert json.loads((tmp_path / "metrics.json").read_text())["int8"]["shipped"] is False
    assert sorted(p.name for p in out.iterdir()) == ["NOT_SHIPPED.txt"]
    assert "drop of 100.00 points" in (out / "NOT_SHIPPED.txt").read_text()


# A head grafted onto a cached backbone: the backbone quantized once, the head alone.

def _arrays(folder: Path, pixels: np.ndarray) -> Path:
    folder.mkdir()
    np.save(folder / "train_x.npy", pixels)
    np.save(folder / "train_y.npy", np.zeros(len(pixels), dtype=np.int32))
    return folder


@pytest.mark.parametrize("method", ["mixed", "dynamic"])
def test_int8_of_a_grafted_model_is_its_whole_quantization(grafted, mini_pixels, tmp_path,
                                                           method):
    params = QuantizeParams(method=method, **({"calibration_images": 4} if method == "mixed"
                                              else {}))
    backbone = quantize_backbone(grafted["backbone"], _arrays(tmp_path / "a", mini_pixels),
                                 tmp_path / "backbone.int8.onnx", params)
    joined = graft_int8(grafted["model"], backbone, tmp_path / "joined.onnx", params)
    # The whole model quantized on the images select hands over (the same spread).
    calibration = mini_pixels[spread(len(mini_pixels))][:4] if method == "mixed" else None
    whole = quantize_model(grafted["model"], tmp_path / "whole.onnx", params, calibration)
    assert op_counts(onnx.load(str(joined))) == op_counts(onnx.load(str(whole)))
    np.testing.assert_array_equal(predict(joined, mini_pixels), predict(whole, mini_pixels))
    assert read_metadata(joined) == read_metadata(whole)


@pytest.fixture(scope="module")
def int8_backbone(grafted, mini_pixels, tmp_path_factory) -> tuple[Path, QuantizeParams]:
    params = QuantizeParams(calibration_images=4)  # mixed
    folder = tmp_path_factory.mktemp("int8_backbone")
    return quantize_backbone(grafted["backbone"], _arrays(folder / "a", mini_pixels),
                             folder / "backbone.int8.onnx", params), params


def test_grafting_refuses_a_backbone_of_other_weights_or_settings(grafted, int8_backbone,
                                                                  tmp_path):
    path, params = int8_backbone
    other = onnx.load(str(path))
    for entry in other.metadata_props:
        if entry.key == WEIGHTS_SHA256:
            entry.value = "0" * 64
    onnx.save_model(other, str(tmp_path / "other.onnx"))
    with pytest.raises(QuantizeError, match=r"other backbone weights.*quantize_backbone"):
        graft_int8(grafted["model"], tmp_path / "other.onnx", tmp_path / "m.onnx", params)
    with pytest.raises(QuantizeError, match=r"quantized as .*not as the quantize settings"):
        graft_int8(grafted["model"], path, tmp_path / "m.onnx",
                   params.model_copy(update={"calibration_images": 3}))
    assert not (tmp_path / "m.onnx").exists()


def test_a_head_quantized_statically_is_quantized_with_its_backbone(grafted, mini_pixels,
                                                                    tmp_path):
    # Static QDQ on MatMul: the head's MatMuls need calibrating on the backbone's outputs.
    params = QuantizeParams(method="static", op_types=["MatMul"], calibration_images=4)
    backbone = quantize_backbone(grafted["backbone"], _arrays(tmp_path / "a", mini_pixels),
                                 tmp_path / "backbone.int8.onnx", params)
    assert graft_int8(grafted["model"], backbone, tmp_path / "m.onnx", params) is None


def _grafted_export_dir(folder: Path, pixels: np.ndarray) -> Path:
    folder.mkdir()
    np.save(folder / "test_x.npy", pixels)
    np.save(folder / "test_y.npy", np.arange(len(pixels), dtype=np.int32) % 5)
    (folder / "choice.json").write_text(json.dumps(
        {"inputs": "features", "settings": {"backbone": "mini"}}))
    return folder


def test_stage_grafts_and_reuses_the_exports_probabilities(grafted, int8_backbone, mini_pixels,
                                                           tmp_path, monkeypatch):
    path, params = int8_backbone
    export_dir = _grafted_export_dir(tmp_path / "export", mini_pixels)
    fp32_file = tmp_path / "test_probabilities.npy"
    np.save(fp32_file, predict(grafted["model"], mini_pixels))
    run = []
    monkeypatch.setattr(q, "predict", lambda model, images: run.append(model) or
                        predict(model, images))
    report = quantize(grafted["model"], export_dir, tmp_path / "int8", params,
                      tmp_path / "quantize.json", tmp_path / "metrics.json",
                      int8_backbones={"mini": path}.__getitem__, fp32_probabilities=fp32_file)
    assert report["grafted"] and report["images"] == len(mini_pixels)
    assert run and all(path != grafted["model"] for path in run)  # fp32 did not run again
    np.save(fp32_file, np.load(fp32_file)[:-1])
    with pytest.raises(ValueError, match=r"11 fp32 probabilities for 12 .*dvc repro export"):
        quantize(grafted["model"], export_dir, tmp_path / "int8", params,
                 tmp_path / "quantize.json", tmp_path / "metrics.json",
                 int8_backbones={"mini": path}.__getitem__, fp32_probabilities=fp32_file)
