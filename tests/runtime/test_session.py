"""One definition of the onnxruntime session settings, reported as plain values."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

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
