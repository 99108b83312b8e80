"""Graph rewrites that let runtimes other than onnxruntime run the exported model.

OpenCV's DNN module (5.0.0, its new ONNX engine) gives a reduction with `keepdims=0` whose
`axes` list every axis of a 1-D tensor the shape `[1]` instead of the 0-D scalar ONNX
specifies. tf2onnx writes exactly that for every Keras `Dense` applied to a 4-D tensor (all of
ConvNeXt's pointwise convolutions, lowered through TF's Tensordot): `ReduceProd(keepdims=0,
axes=[0])` over the batch, height and width of the input's shape, then `Unsqueeze(axes=[0])`
to make it a `[1]` again for the `Reshape`. OpenCV's Unsqueeze then yields `[1, 1]` where its
own shape inference planned `[1]`, and `forward()` stops on
`buf.shape() == m.shape() in function 'forwardGraph'`.

`fold_reduce_unsqueeze` writes each such pair as one `ReduceProd(keepdims=1)`: the same `[1]`
values, no scalar in between, standard ONNX, and nothing onnxruntime computes differently
(these nodes only compute shapes; the arithmetic kernels are untouched).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from rarespecies.core.files import atomic_path

REDUCE_OPS = frozenset({"ReduceProd", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"})


def _ints(node: onnx.NodeProto, name: str, position: int,
          constants: dict[str, np.ndarray]) -> list[int] | None:
    """An integer list given as attribute `name` (older opsets) or as constant input `position`.

    Returns:
        The integers; None when absent or not a constant.
    """
    for attribute in node.attribute:
        if attribute.name == name:
            return list(attribute.ints)
    if len(node.input) > position and node.input[position] in constants:
        return [int(v) for v in np.atleast_1d(constants[node.input[position]])]
    return None


def _rank(name: str, value_info: dict[str, onnx.ValueInfoProto]) -> int | None:
    """The static rank of tensor `name` from shape inference; None when unknown."""
    info = value_info.get(name)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def fold_reduce_unsqueeze(model: onnx.ModelProto) -> int:
    """Rewrite `Reduce*(1-D x, axes=[0], keepdims=0) -> Unsqueeze(axes=[0])` as `keepdims=1`.

    Only a reduction whose output feeds nothing but such Unsqueeze nodes (and is not a graph
    output) is changed, so every other node sees the same tensors as before.

    Args:
        model: an ONNX model, changed in place (its main graph; ConvNeXt has no subgraphs).

    Returns:
        How many reductions were rewritten (each drops its Unsqueeze nodes).
    """
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                 if t.data_type == onnx.TensorProto.INT64 and len(t.dims) <= 1}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    # Shape inference on the graph alone: the weights' values are not needed for ranks.
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for tensor in skeleton.graph.initializer:
        if tensor.name not in constants:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    inferred = shape_inference.infer_shapes(skeleton).graph
    value_info = {v.name: v for v in (*inferred.value_info, *inferred.input, *inferred.output)}

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    rewritten, dropped, stale = 0, [], set()
    for node in graph.node:
        if node.op_type not in REDUCE_OPS or _rank(node.input[0], value_info) != 1:
            continue
        keepdims = next((a for a in node.attribute if a.name == "keepdims"), None)
        if keepdims is None or keepdims.i != 0:
            continue
        if _ints(node, "axes", 1, constants) not in ([0], [-1]):
            continue
        users = consumers.get(node.output[0], [])
        if not users or node.output[0] in graph_outputs or any(
                user.op_type != "Unsqueeze" or _ints(user, "axes", 1, constants) not in ([0],)
                for user in users):
            continue
        keepdims.i = 1
        stale.add(node.output[0])
        for unsqueeze in users:
            for later in consumers.get(unsqueeze.output[0], []):
                for i, name in enumerate(later.input):
                    if name == unsqueeze.output[0]:
                        later.input[i] = node.output[0]
            for output in graph.output:
                if output.name == unsqueeze.output[0]:
                    output.name = node.output[0]
            dropped.append(unsqueeze)
        rewritten += 1
    for unsqueeze in dropped:
        graph.node.remove(unsqueeze)
        stale.add(unsqueeze.output[0])
    # Shapes recorded for the old tensors (quant_pre_process writes them) would contradict the
    # new [1]: drop them, shape inference recomputes them.
    for info in [v for v in graph.value_info if v.name in stale]:
        graph.value_info.remove(info)
    # The Unsqueeze nodes' axes constants are now unused (onnxruntime warns about each one).
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name in constants and t.name not in used]:
        graph.initializer.remove(tensor)
    return rewritten


def make_portable(source: Path, target: Path) -> int:
    """Write a copy of the ONNX file `source` with `fold_reduce_unsqueeze` applied.

    Args:
        source: an exported model.
        target: where to write the rewritten model (atomically; may equal `source`).

    Returns:
        How many reductions were rewritten.
    """
    model = onnx.load(str(source))
    count = fold_reduce_unsqueeze(model)
    with atomic_path(Path(target)) as tmp:
        onnx.save_model(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return count
