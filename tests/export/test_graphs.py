"""Joining a backbone graph and a head graph in place (rarespecies.export.graphs.join)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rarespecies.export.graphs import FEATURES, HEAD_PREFIX, GraftError, join


def _value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 2])


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [_value(n) for n in inputs],
                              [_value(n) for n in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _backbone() -> onnx.ModelProto:
    return _model([helper.make_node("Neg", ["pixels"], [FEATURES], name="neg")],
                  ["pixels"], [FEATURES])


def _head(opset: int = 17, name: str = HEAD_PREFIX + "add") -> onnx.ModelProto:
    bias = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), HEAD_PREFIX + "bias")
    return _model([helper.make_node("Add", [HEAD_PREFIX + FEATURES, HEAD_PREFIX + "bias"],
                                    [HEAD_PREFIX + "probabilities"], name=name)],
                  [HEAD_PREFIX + FEATURES], [HEAD_PREFIX + "probabilities"], [bias], opset)


def test_joined_model_runs_the_head_on_the_backbones_features():
    model = join(_backbone(), _head())
    onnx.checker.check_model(model, full_check=True)
    assert [v.name for v in model.graph.input] == ["pixels"]
    assert [v.name for v in model.graph.output] == ["probabilities"]
    assert [(e.domain, e.version) for e in model.opset_import] == [("", 17)]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[3.0, -4.0]], np.float32)
    np.testing.assert_array_equal(session.run(None, {"pixels": x})[0], [[-2.0, 6.0]])


def test_a_name_in_both_graphs_is_refused():
    with pytest.raises(GraftError, match="names in both"):
        join(_backbone(), _head(name="neg"))


def test_operator_sets_at_other_versions_are_refused_leaving_the_backbone_as_it_was():
    backbone = _backbone()
    with pytest.raises(GraftError, match="versions 17 and 13"):
        join(backbone, _head(opset=13))
    assert backbone == _backbone()


def test_a_backbone_without_the_features_output_is_refused():
    backbone = _model([helper.make_node("Neg", ["pixels"], ["other"])], ["pixels"], ["other"])
    with pytest.raises(GraftError, match="not \\['features'\\]"):
        join(backbone, _head())
