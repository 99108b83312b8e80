"""The backbone converted once, the head grafted: the same model as a whole conversion."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rarespecies.config.params import ExportParams, QuantizeParams
from rarespecies.export.consumers import run_opencv
from rarespecies.export.convert import compare, parity
from rarespecies.export.export import cached_test_features, graph_of
from rarespecies.export.graft import WEIGHTS_SHA256, GraftError, graft
from rarespecies.export.optimize import op_counts
from rarespecies.export.quantize import quantize_model

from conftest import MINI_CLASSES, mini_convnext_parts

TOLERANCE = ExportParams().parity_tolerance  # the export stage's parity gate


def _run(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": pixels})[0]


@pytest.mark.slow
def test_grafted_model_equals_the_whole_conversion(grafted, mini_convnext_onnx, mini_pixels):
    whole, joined = _run(mini_convnext_onnx, mini_pixels), _run(grafted["model"], mini_pixels)
    assert joined.shape == (len(mini_pixels), MINI_CLASSES)
    assert np.max(np.abs(joined - whole)) <= TOLERANCE
    assert (joined.argmax(axis=1) == whole.argmax(axis=1)).all()
    # The export stage's own gate, against Keras.
    report = parity(grafted["keras"], grafted["model"], mini_pixels)
    assert report["max_abs_diff"] <= TOLERANCE and report["top1_agreement"] == 1.0


@pytest.mark.slow
def test_the_gate_on_cached_features_is_the_gate_on_the_keras_model(grafted, mini_pixels,
                                                                      tmp_path):
    """What export does for a grafted model: Keras' head on the features the features stage
    cached (here computed the same way), against the ONNX file on the pixels."""
    features = grafted["features"](mini_pixels)
    labels = np.arange(len(mini_pixels)) % MINI_CLASSES
    np.save(tmp_path / "test_x.npy", features)
    np.save(tmp_path / "test_y.npy", labels)
    cached = cached_test_features(tmp_path, labels)
    gate = compare(grafted["head"].predict(cached, verbose=0), grafted["model"], mini_pixels)
    whole = parity(grafted["keras"], grafted["model"], mini_pixels)
    assert gate["images"] == whole["images"] == len(mini_pixels)
    assert gate["top1_agreement"] == whole["top1_agreement"] == 1.0
    assert abs(gate["max_abs_diff"] - whole["max_abs_diff"]) <= 1e-6
    with pytest.raises(ValueError, match="another split"):
        cached_test_features(tmp_path, labels[::-1])
    with pytest.raises(ValueError, match="Keras outputs for"):
        compare(grafted["head"].predict(cached[:-1], verbose=0), grafted["model"], mini_pixels)


@pytest.mark.slow
def test_grafted_model_keeps_the_interface_fusions_and_metadata(grafted, mini_convnext_onnx):
    whole, joined = (onnx.load(str(path)) for path in (mini_convnext_onnx, grafted["model"]))
    # Same input and output as a whole export: uint8 pixels, a dynamic batch, probabilities.
    assert [i.SerializeToString() for i in joined.graph.input] == \
        [i.SerializeToString() for i in whole.graph.input]
    assert [o.SerializeToString() for o in joined.graph.output] == \
        [o.SerializeToString() for o in whole.graph.output]
    # The optimisation of issue 16 is all there (fused LayerNorms, GELU form, 4-D MatMuls):
    # the grafted graph holds exactly the ops of a whole, optimised conversion.
    assert op_counts(joined) == op_counts(whole)
    assert op_counts(joined)["LayerNormalization"] == 8
    # The exported model's metadata, and of the backbone graph's only its weights' digest
    # (quantize checks it), not its own settings.
    backbone = {p.key: p.value for p in onnx.load(str(grafted["backbone"])).metadata_props}
    assert len(backbone[WEIGHTS_SHA256]) == 64 and backbone["backbone"] == "mini"
    assert {p.key: p.value for p in joined.metadata_props} == {
        **grafted["metadata"], WEIGHTS_SHA256: backbone[WEIGHTS_SHA256]}
    onnx.checker.check_model(str(grafted["model"]), full_check=True)


@pytest.mark.slow
def test_grafting_is_deterministic(grafted, tmp_path):
    """Same inputs, same bytes: a DVC output must not change on a rerun."""
    again = graft(grafted["backbone"], grafted["head"], grafted["weights"],
                  tmp_path / "again.onnx", 17, grafted["metadata"])
    assert again.read_bytes() == grafted["model"].read_bytes()


@pytest.mark.slow
def test_graft_refuses_a_backbone_graph_of_other_weights(grafted, tmp_path):
    other = tmp_path / "backbone.weights.h5"
    backbone, _ = mini_convnext_parts()
    backbone.set_weights([w * 1.01 for w in backbone.get_weights()])
    backbone.save_weights(other)
    with pytest.raises(GraftError, match=r"other weights.*dvc repro export_backbone"):
        graft(grafted["backbone"], grafted["head"], other, tmp_path / "m.onnx", 17,
              grafted["metadata"])
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_graft_refuses_another_opset(grafted, tmp_path):
    with pytest.raises(GraftError, match="not at opset 18"):
        graft(grafted["backbone"], grafted["head"], grafted["weights"], tmp_path / "m.onnx",
              18, grafted["metadata"])


@pytest.mark.slow
def test_grafted_model_runs_in_opencv(grafted, mini_pixels):
    """The portable fold holds for the joined graph: OpenCV's DNN runs it."""
    expected = _run(grafted["model"], mini_pixels[:4])
    result = run_opencv(grafted["model"], mini_pixels[:4], expected, 4)
    assert result.error is None, result
    assert result.max_abs_diff <= TOLERANCE


@pytest.mark.slow
def test_mixed_int8_quantizes_the_grafted_model(grafted, mini_pixels, tmp_path):
    params = QuantizeParams(method="mixed", static_op_types=["Conv"], op_types=["MatMul"],
                            calibration_images=4)
    out = quantize_model(grafted["model"], tmp_path / "int8.onnx", params, mini_pixels[:4])
    onnx.checker.check_model(str(out), full_check=True)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMulInteger"} <= ops
    assert _run(out, mini_pixels).shape == (len(mini_pixels), MINI_CLASSES)


def test_only_features_models_are_grafted(tmp_path):
    graph = tmp_path / "convnext_base.onnx"
    graph.write_bytes(b"")
    graphs = lambda name: tmp_path / f"{name}.onnx"  # noqa: E731
    features = {"model": "convnext_full", "inputs": "features",
                "settings": {"backbone": "convnext_base"}}
    end_to_end = {"model": "densenet121", "inputs": "arrays",
                  "settings": {"backbone": "densenet121"}}
    assert graph_of(features, graphs) == graph
    assert graph_of(end_to_end, graphs) is None
    assert graph_of(features, None) is None
    graph.unlink()
    with pytest.raises(FileNotFoundError, match=r"dvc repro export_backbone@convnext_base"):
        graph_of(features, graphs)


def test_head_input_follows_the_heads_own_shape():
    from rarespecies.export.graft import head_model

    keras.utils.set_random_seed(1)
    head = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3, activation="softmax")])
    model = head_model(head)
    assert model.inputs[0].shape == (None, 12) and model.output_names == ["probabilities"]
