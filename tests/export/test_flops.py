"""FLOP counting on a graph whose arithmetic is known by hand; the CPU peak is a real figure."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rarespecies.export.flops import (
    cpu_int8_peak_gops,
    cpu_peak_gflops,
    initializer_mb,
    integer_matmul_model,
    model_gflops,
)


def _conv_then_matmul(path: Path, groups: int = 1) -> Path:
    """[N,4,8,8] -> Conv 3x3 (8 filters, `groups`, same padding) -> flatten -> MatMul to 5."""
    weights = [numpy_helper.from_array(np.ones((8, 4 // groups, 3, 3), np.float32), "w"),
               numpy_helper.from_array(np.ones((512, 5), np.float32), "m"),
               numpy_helper.from_array(np.array([-1, 512], np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=groups),
             helper.make_node("Reshape", ["c", "flat"], ["r"]),
             helper.make_node("MatMul", ["r", "m"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("groups", [1, 4])
def test_counts_two_flops_per_multiply_add(tmp_path, groups):
    model = _conv_then_matmul(tmp_path / "m.onnx", groups)
    conv = 8 * 8 * 8 * (4 // groups) * 3 * 3  # output elements x multiply-adds each
    matmul = 5 * 512
    assert model_gflops(model) == pytest.approx(2 * (conv + matmul) / 1e9)


def test_weights_size(tmp_path):
    model = _conv_then_matmul(tmp_path / "m.onnx")
    assert initializer_mb(model) == pytest.approx((8 * 4 * 9 * 4 + 512 * 5 * 4 + 16) / 2**20)


def test_cpu_peak_is_a_plausible_measurement():
    peak = cpu_peak_gflops(size=256, seconds=0.05)
    assert 0.1 < peak < 1e5  # GFLOP/s: above a pocket calculator, below a supercomputer


def test_int8_peak_runs_an_integer_matmul_that_onnxruntime_computes_exactly():
    import onnxruntime as ort

    model = integer_matmul_model(64)
    assert [node.op_type for node in model.graph.node] == ["MatMulInteger"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)
    b = numpy_helper.to_array(model.graph.initializer[0])
    assert b.dtype == np.int8  # uint8 x int8: the form VNNI multiplies
    expected = a.astype(np.int32) @ b.astype(np.int32)
    assert np.array_equal(session.run(None, {"a": a})[0], expected)


def test_int8_peak_is_a_plausible_measurement():
    peak = cpu_int8_peak_gops(size=256, seconds=0.05, threads=1)
    assert 0.1 < peak < 1e6  # GOP/s
