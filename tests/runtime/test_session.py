"""One definition of the onnxruntime session settings, reported as plain values."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rarespecies.runtime.session import SESSION_SETTINGS, describe_session, session_options


def test_options_follow_the_settings_and_the_thread_count() -> None:
    options = session_options(threads=2)
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == SESSION_SETTINGS["inter_op_threads"]
    assert options.enable_cpu_mem_arena == SESSION_SETTINGS["cpu_mem_arena"]
    assert (options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL) == (
        SESSION_SETTINGS["graph_optimization_level"] == "all")
    spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    assert spinning == ("1" if SESSION_SETTINGS["allow_spinning"] else "0")
    gelu = options.get_session_config_entry("optimization.enable_gelu_approximation")
    assert gelu == ("1" if SESSION_SETTINGS["gelu_approximation"] else "0")


def _erf_gelu() -> bytes:
    """y = 0.5·x·(1 + erf(x/√2)): the exact GELU, as the export writes it for onnxruntime."""
    nodes = [helper.make_node(op, inputs, [output]) for op, inputs, output in (
        ("Div", ["x", "sqrt2"], "d"), ("Erf", ["d"], "e"), ("Add", ["e", "one"], "a"),
        ("Mul", ["x", "a"], "m"), ("Mul", ["m", "half"], "y"))]
    constants = [numpy_helper.from_array(np.array(value, np.float32), name)
                 for name, value in (("sqrt2", np.sqrt(2)), ("one", 1.0), ("half", 0.5))]
    graph = helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_gelu_stays_exact_unless_the_approximation_is_asked_for() -> None:
    x = np.linspace(-3, 3, 64, dtype=np.float32)[None]
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))

    def run(**overrides):
        session = ort.InferenceSession(_erf_gelu(), session_options(1, **overrides),
                                       providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    assert np.abs(run() - exact).max() < 1e-6
    assert np.abs(run(gelu_approximation=True) - exact).max() > 1e-5


def test_a_benchmark_variant_changes_one_setting() -> None:
    options = session_options(1, allow_spinning=False, cpu_mem_arena=False,
                              graph_optimization_level="basic", execution_mode="parallel",
                              inter_op_threads=2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not options.enable_cpu_mem_arena
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.inter_op_num_threads == 2


def test_an_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"\['spin'\]"):
        session_options(0, spin=False)


def test_description_is_plain_json() -> None:
    description = describe_session(2)
    assert json.loads(json.dumps(description)) == description
    assert description["intra_op_threads"] == 2
    assert description["onnxruntime"] == ort.__version__
    assert {key: description[key] for key in SESSION_SETTINGS} == SESSION_SETTINGS
