"""Stable names: the same graph under tf2onnx's run-dependent names gives the same bytes."""

import onnx
from onnx import TensorProto, helper

from rarespecies.export.canonical import canonicalize


def graph(counter: int, kept: str) -> onnx.GraphProto:
    """x -> Add(c) -> Mul(c) -> y, with tf2onnx-style numbered names from `counter` on, and
    the shared constant `c` named after whichever duplicate tf2onnx kept."""
    const = helper.make_tensor(kept, TensorProto.FLOAT, [1], [2.0])
    nodes = [helper.make_node("Add", ["x", kept], [f"Add__{counter}:0"], f"Add__{counter}"),
             helper.make_node("Mul", [f"Add__{counter}:0", kept], ["y"], "scale/mul")]
    return helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [const])


def test_numbering_and_merged_constants_do_not_change_the_bytes():
    first, second = graph(809, "scale/mul/y:0"), graph(1307, "shift/add/y:0")
    assert first.SerializeToString() != second.SerializeToString()
    for g in (first, second):
        canonicalize(g)
    assert first.SerializeToString() == second.SerializeToString()
    assert [n.name for n in first.node] == ["Add__1", "scale/mul"]
    assert [t.name for t in first.initializer] == ["Add__1#1"]
    onnx.checker.check_model(helper.make_model(first), full_check=True)


def test_different_graphs_stay_different():
    first, second = graph(1, "c"), graph(1, "c")
    second.initializer[0].float_data[0] = 3.0
    canonicalize(first)
    canonicalize(second)
    assert first.SerializeToString() != second.SerializeToString()
