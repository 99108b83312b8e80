"""Graph optimisation: a tiny ConvNeXt's LayerNorms and GELUs come out in forms onnxruntime
fuses, in standard ONNX, with the same outputs."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from keras.src.applications import convnext as keras_convnext
from onnx import TensorProto, helper

from rarespecies.export.convert import convert_to_onnx, inference_model, parity
from rarespecies.export.optimize import op_counts, optimize
from rarespecies.modeling.backbones import to_depthwise

SIZE = 64  # the last stage is 2x2: at 1x1 tf2onnx turns some transposes into reshapes


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _tiny_convnext(perturb: bool) -> keras.Model:
    """ConvNeXt with one block per stage and 8-32 channels; `perturb` moves every weight off
    its initial value, so that no LayerNorm beta or Dense bias is zero (tf2onnx drops zeros)."""
    keras.utils.set_random_seed(5)
    backbone = keras_convnext.ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[8, 16, 24, 32],
                                       default_size=SIZE, include_top=False, weights=None,
                                       input_shape=(SIZE, SIZE, 3), pooling="avg", name="tiny")
    if perturb:
        rng = np.random.default_rng(0)
        for weight in backbone.weights:
            weight.assign(weight.numpy() + rng.normal(0, 0.1, weight.shape).astype("float32"))
    head = keras.Sequential([keras.Input((32,)), keras.layers.Dense(4, activation="softmax")])
    return inference_model(to_depthwise(backbone), head, SIZE)


def _count_layers(model: keras.Model, kind: type) -> int:
    return sum(isinstance(layer, kind) for layer in model._flatten_layers(include_self=False))


@pytest.fixture(scope="module", params=[True, False], ids=["perturbed", "initial"])
def converted(request, tmp_path_factory) -> tuple[keras.Model, Path, Path]:
    """(Keras model, tf2onnx's file, optimized file)."""
    model = _tiny_convnext(request.param)
    folder = tmp_path_factory.mktemp("optimize")
    plain = convert_to_onnx(model, folder / "plain.onnx", 17, {"k": "v"}, optimize=False)
    optimized = convert_to_onnx(model, folder / "optimized.onnx", 17, {"k": "v"})
    return model, plain, optimized


@pytest.mark.slow
def test_every_layernorm_becomes_one_op_and_the_file_stays_standard(converted) -> None:
    model, plain, optimized = converted
    layer_norms = _count_layers(model, keras.layers.LayerNormalization)
    assert layer_norms == 9  # stem, 3 downsampling, 4 blocks, after pooling
    before, after = op_counts(onnx.load(str(plain))), op_counts(onnx.load(str(optimized)))
    assert before.get("LayerNormalization", 0) == 0 and before["ReduceMean"] == 2 * layer_norms
    assert after["LayerNormalization"] == layer_norms
    assert "ReduceMean" not in after and "Neg" not in after
    # The pointwise convolutions' run-time shape arithmetic is gone with their Reshapes.
    assert after.get("Shape", 0) < before["Shape"] and after["MatMul"] == before["MatMul"]
    model_proto = onnx.load(str(optimized))
    assert {node.domain for node in model_proto.graph.node} == {""}
    assert [(o.domain, o.version) for o in model_proto.opset_import] == [("", 17)]
    assert {p.key: p.value for p in model_proto.metadata_props} == {"k": "v"}


@pytest.mark.slow
def test_onnxruntime_fuses_every_block_gelu(converted, tmp_path) -> None:
    """tf2onnx's GELU form is fused by no onnxruntime rule; the rewritten one is."""
    _, plain, optimized = converted
    fused = {}
    for name, path in (("plain", plain), ("optimized", optimized)):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        counts = op_counts(onnx.load(options.optimized_model_filepath))
        fused[name] = counts.get("Gelu", 0) + counts.get("BiasGelu", 0)
    assert fused == {"plain": 0, "optimized": 4}  # one GELU per block


@pytest.mark.slow
def test_optimized_outputs_match_keras_and_the_plain_file(converted) -> None:
    model, plain, optimized = converted
    report = parity(model, optimized, _pixels(6), batch_size=4)
    assert report["max_abs_diff"] <= 1e-5 and report["top1_agreement"] == 1.0
    images = {"pixels": _pixels(3)}
    before = ort.InferenceSession(str(plain)).run(None, images)[0]
    after = ort.InferenceSession(str(optimized)).run(None, images)[0]
    np.testing.assert_allclose(after, before, atol=1e-6)


def _tensordot(middle_out: int) -> onnx.ModelProto:
    """x [N, 2, 3, 4] -> Reshape [-1, 4] -> MatMul W [4, 5] -> Reshape [-1, middle_out, 3, 5]."""
    weights = np.arange(20, dtype=np.float32).reshape(4, 5) / 10
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["x2"]),
        helper.make_node("MatMul", ["x2", "w"], ["y2"]),
        helper.make_node("Reshape", ["y2", "back"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(weights, "w"),
         onnx.numpy_helper.from_array(np.array([-1, 4], np.int64), "flat"),
         onnx.numpy_helper.from_array(np.array([-1, middle_out, 3, 5], np.int64), "back")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_flattened_matmul_becomes_one_4d_matmul_with_the_same_result() -> None:
    model = _tensordot(middle_out=2)
    optimized = optimize(model)
    assert op_counts(optimized) == {"MatMul": 1}
    x = np.random.default_rng(0).normal(size=(3, 2, 3, 4)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    actual = ort.InferenceSession(optimized.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_a_reshape_that_moves_axes_around_is_kept() -> None:
    # [N, 2, 3, 5] -> [-1, 1, 3, 5] mixes the batch and the second axis: not a plain MatMul.
    assert op_counts(optimize(_tensordot(middle_out=1)))["Reshape"] == 2
