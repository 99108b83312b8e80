"""A tiny ONNX classifier with the exported model's interface (uint8 NHWC `pixels` in,
`probabilities` out), for tests that run real onnxruntime sessions in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save_tiny_model(path: Path, seed: int = 0, size: int = 8, families: int = 2) -> Path:
    """Write a model whose weights depend on `seed` (so two seeds give two files).

    Args:
        path: the ONNX file to write (parents are created).
        seed: of the weights.
        size: input side in pixels.
        families: output classes.

    Returns:
        `path`.
    """
    weights = np.random.default_rng(seed).normal(size=(size * size * 3, families))
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["f"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("pixels", TensorProto.UINT8,
                                                      ["N", size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", families])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"labels": json.dumps([f"family{i}" for i in range(families)]),
                                   "input_size": str(size)})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
