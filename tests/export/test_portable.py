"""The portable rewrite: tf2onnx's Reduce-then-Unsqueeze shape arithmetic as one keepdims=1
reduction, which OpenCV's DNN module runs and onnxruntime computes identically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rarespecies.export.consumers import reference, run_opencv
from rarespecies.export.portable import fold_reduce_unsqueeze, make_portable

from conftest import mini_convnext_keras

OPENCV_REFUSAL = "(-215:Assertion failed) buf.shape() == m.shape() in function 'forwardGraph'"


def tensordot_graph(reduce_axes: list[int] | None = None, keepdims: int = 0,
                    extra_user: bool = False) -> onnx.ModelProto:
    """A Dense on a 4-D tensor as tf2onnx writes it (TF's Tensordot), opset 17.

    x[batch, 4, 4, 3] -> Reshape to [prod(batch, 4, 4), 3] -> MatMul -> y[batch*16, 5], the
    first Reshape's shape computed from Shape, Cast to int32, Gather, ReduceProd(keepdims=0)
    and Unsqueeze, like every pointwise convolution of the exported ConvNeXt.

    Args:
        reduce_axes: the ReduceProd's axes ([0] as tf2onnx writes it; None: no attribute).
        keepdims: the ReduceProd's keepdims.
        extra_user: also send the reduction's output to a graph output (must stop the rewrite).
    """
    constants = [numpy_helper.from_array(np.array([0, 1, 2], np.int64), "first3"),
                 numpy_helper.from_array(np.array([0], np.int64), "axis0"),
                 numpy_helper.from_array(np.array([3], np.int32), "channels"),
                 numpy_helper.from_array(
                     np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32), "w")]
    prod = {"keepdims": keepdims} | ({"axes": reduce_axes} if reduce_axes is not None else {})
    nodes = [
        helper.make_node("Shape", ["x"], ["shape64"]),
        helper.make_node("Cast", ["shape64"], ["shape"], to=TensorProto.INT32),
        helper.make_node("Gather", ["shape", "first3"], ["leading"], axis=0),
        helper.make_node("ReduceProd", ["leading"], ["rows"], **prod),
        helper.make_node("Unsqueeze", ["rows", "axis0"], ["rows1"]),
        # keepdims=1 already gives [1]: its Unsqueeze ([1, 1]) then only goes to an output.
        helper.make_node("Concat", ["rows" if keepdims else "rows1", "channels"], ["target32"],
                         axis=0),
        helper.make_node("Cast", ["target32"], ["target"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 5])]
    if extra_user:
        outputs.append(helper.make_tensor_value_info("rows", TensorProto.INT32, []))
    if keepdims:
        outputs.append(helper.make_tensor_value_info("rows1", TensorProto.INT32, [1, 1]))
    graph = helper.make_graph(
        nodes, "tensordot", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["batch", 4, 4, 3])],
        outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _reduce_unsqueeze_pairs(model: onnx.ModelProto) -> int:
    """ReduceProd nodes whose output an Unsqueeze takes."""
    unsqueezed = {node.input[0] for node in model.graph.node if node.op_type == "Unsqueeze"}
    return sum(node.op_type == "ReduceProd" and node.output[0] in unsqueezed
               for node in model.graph.node)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _opencv(path: Path, x: np.ndarray) -> tuple[str | None, np.ndarray | None]:
    """OpenCV's own refusal (None when it ran) and its output (its new engine raises here)."""
    import cv2

    net = cv2.dnn.readNetFromONNX(str(path), cv2.dnn.ENGINE_NEW)
    net.setInput(x)
    try:
        return None, np.array(net.forward())
    except cv2.error as error:
        return str(error), None


@pytest.mark.parametrize("with_shapes", [False, True])
def test_fold_writes_reduce_and_unsqueeze_as_one_keepdims_reduction(with_shapes):
    model = tensordot_graph(reduce_axes=[0])
    if with_shapes:  # intermediate shapes recorded, as quant_pre_process leaves them
        model = onnx.shape_inference.infer_shapes(model)
        assert "rows" in {v.name for v in model.graph.value_info}
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
    before = _run(model, x)
    assert fold_reduce_unsqueeze(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert "Unsqueeze" not in ops and ops.count("ReduceProd") == 1
    prod = next(node for node in model.graph.node if node.op_type == "ReduceProd")
    assert {a.name: helper.get_attribute_value(a) for a in prod.attribute}["keepdims"] == 1
    concat = next(node for node in model.graph.node if node.op_type == "Concat")
    assert concat.input[0] == prod.output[0]
    assert "axis0" not in {t.name for t in model.graph.initializer}  # unused constant dropped
    np.testing.assert_array_equal(_run(model, x), before)
    assert fold_reduce_unsqueeze(model) == 0  # nothing left to rewrite


@pytest.mark.parametrize(("axes", "keepdims", "extra_user"), [
    (None, 0, False),  # no axes: OpenCV gives the 0-D scalar right, no need to touch it
    ([0], 1, False),  # already [1]: an Unsqueeze after it would make [1, 1]
    ([0], 0, True),  # the scalar is used elsewhere too: it must stay a scalar
])
def test_fold_leaves_other_reductions_alone(axes, keepdims, extra_user):
    model = tensordot_graph(reduce_axes=axes, keepdims=keepdims, extra_user=extra_user)
    expected = model.SerializeToString()
    assert fold_reduce_unsqueeze(model) == 0
    assert model.SerializeToString() == expected


def test_opencv_refuses_the_tensordot_pattern_and_runs_it_once_folded(tmp_path):
    """The root cause on a graph of nine nodes: OpenCV 5.0.0 makes the keepdims=0 ReduceProd
    over axes=[0] a [1] instead of a scalar; the Unsqueeze then yields [1, 1]."""
    x = np.random.default_rng(2).normal(size=(2, 4, 4, 3)).astype(np.float32)
    model = tensordot_graph(reduce_axes=[0])
    onnx.save(model, str(tmp_path / "tf2onnx.onnx"))
    error, _ = _opencv(tmp_path / "tf2onnx.onnx", x)
    assert error is not None and OPENCV_REFUSAL in error

    expected = _run(model, x)
    assert make_portable(tmp_path / "tf2onnx.onnx", tmp_path / "portable.onnx") == 1
    error, got = _opencv(tmp_path / "portable.onnx", x)
    assert error is None
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_the_unoptimized_export_is_folded_and_runs_in_opencv(tmp_path, mini_pixels):
    """With `export.optimize: false` the export keeps tf2onnx's Tensordot arithmetic: the fold
    inside convert_to_onnx is what lets OpenCV run it."""
    import keras

    from rarespecies.export.convert import convert_to_onnx

    path = convert_to_onnx(mini_convnext_keras(), tmp_path / "model.onnx", 17, {},
                           optimize=False)
    model = onnx.load(str(path))
    ops = [node.op_type for node in model.graph.node]
    assert "ReduceProd" in ops and "MatMul" in ops  # the Tensordot arithmetic is still there
    assert _reduce_unsqueeze_pairs(model) == 0
    assert fold_reduce_unsqueeze(model) == 0
    expected = reference(path, mini_pixels, 4)
    result = run_opencv(path, mini_pixels, expected, 4)
    assert result.error is None, result
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0
    keras.backend.clear_session()
