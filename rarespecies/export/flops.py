"""How much arithmetic a model does, and how much this CPU can do: the benchmark's yardsticks.

A model's FLOPs per image are counted from its ONNX graph (2 per multiply-add of Conv, MatMul
and Gemm, which dominate CNNs and transformers alike); the CPU's attainable peak is measured,
not looked up: an fp32 matrix product through NumPy's BLAS on every core, and (for INT8
models) onnxruntime's integer matrix product, uint8 x int8 as VNNI units take it, on the same
number of threads as the benchmark. Each runtime is then judged against its own ceiling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from rarespecies.runtime.session import session_options


def _dims(value_info) -> list[int] | None:
    """A tensor's shape, or None if any dimension is still unknown."""
    dims = [d.dim_value for d in value_info.type.tensor_type.shape.dim]
    return dims if dims and all(dims) else None


def model_gflops(path: Path) -> float:
    """Floating-point operations of one image through the ONNX model, in GFLOPs.

    Args:
        path: an ONNX model (fp32; quantized ops are not counted).

    Returns:
        2 x the multiply-adds of its Conv, MatMul and Gemm nodes, for a batch of one.
    """
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1  # a concrete batch of one
    # Only the weights' shapes count: as inputs of known shape they spare the inference below
    # a copy of every weight (0.5 of 0.8 s on ConvNeXtBase). 1-D and integer initializers,
    # which shapes can be computed from (Reshape targets, Resize scales), stay.
    initializers = model.graph.initializer
    for i in reversed(range(len(initializers))):
        weight = initializers[i]
        if weight.data_type == TensorProto.FLOAT and len(weight.dims) >= 2:
            model.graph.input.append(
                helper.make_tensor_value_info(weight.name, weight.data_type, weight.dims))
            del initializers[i]
    # onnx's own inference loses the rows of MatMuls behind computed Reshapes (tf2onnx's
    # LayerNorm); onnxruntime's symbolic inference follows them.
    graph = SymbolicShapeInference.infer_shapes(model, auto_merge=True).graph
    shapes = {v.name: _dims(v) for v in (*graph.input, *graph.value_info, *graph.output)}
    shapes |= {t.name: list(t.dims) for t in graph.initializer}
    macs = 0
    for node in graph.node:
        if node.op_type == "Conv":
            out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
            if out and weight:  # each output element: (C_in / groups) x kernel multiply-adds
                macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:  # each output element: K multiply-adds
                transposed = node.op_type == "Gemm" and any(
                    attr.name == "transA" and attr.i for attr in node.attribute)
                macs += int(np.prod(out)) * (a[-2] if transposed else a[-1])
    return 2 * macs / 1e9


def initializer_mb(path: Path) -> float:
    """Size of the model's weights in MB (what quantization shrinks)."""
    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer) / 2**20


def _fastest(call: Callable[[], object], seconds: float) -> float:
    """Seconds of the fastest of repeated `call()`s within `seconds` (after one warm-up).

    The fastest call is the one least disturbed by other processes, so a longer window makes
    the figure robust on a busy host.
    """
    call()  # warm-up: thread pool, caches, prepacked weights
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_peak_gflops(size: int = 2048, seconds: float = 1.0) -> float:
    """Attainable fp32 GFLOP/s of this CPU: the fastest of `size` x `size` matrix products.

    Args:
        size: matrix side; 2048 keeps every core busy for tens of milliseconds.
        seconds: how long to keep sampling.

    Returns:
        2 x size^3 over the fastest product's time, in GFLOP/s.
    """
    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    return 2 * size**3 / _fastest(lambda: a @ b, seconds) / 1e9


def integer_matmul_model(size: int) -> onnx.ModelProto:
    """`A (uint8, input) x B (int8, constant)` as one ONNX MatMulInteger: what quantized
    MatMuls run on (uint8 activations times int8 weights is the VNNI instruction's form; a
    constant B is prepacked by onnxruntime as a quantized model's weights are)."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])],
        [numpy_helper.from_array(weight, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cpu_int8_peak_gops(size: int = 2048, seconds: float = 1.0, threads: int = 0) -> float:
    """Attainable INT8 GOP/s of this CPU: onnxruntime's integer matrix product on `size`
    x `size` matrices, measured the way `cpu_peak_gflops` measures fp32.

    Args:
        size: matrix side.
        seconds: how long to keep sampling.
        threads: intra-op threads, as the benchmarked sessions use (0 = one per core).

    Returns:
        2 x size^3 (a multiply and an add per pair) over the fastest product's time, in GOP/s.
    """
    import onnxruntime as ort

    # The benchmarked sessions' own settings, so the ceiling and the rows are measured alike.
    session = ort.InferenceSession(integer_matmul_model(size).SerializeToString(),
                                   session_options(threads),
                                   providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).integers(0, 256, (size, size), dtype=np.uint8)
    return 2 * size**3 / _fastest(lambda: session.run(None, {"a": a}), seconds) / 1e9
