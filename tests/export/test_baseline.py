"""The TensorFlow baseline: timed on the exported architecture, with random weights, once."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rarespecies.config.params import BenchmarkParams, Params
from rarespecies.export.baseline import run_tf_baseline, timed_model
from rarespecies.export.select import timed_architecture

from conftest import tiny_params

PARAMS = Params(**tiny_params())
# threads 0 (one per core): what TensorFlow already runs with in a test process
FAST = BenchmarkParams(warmup=1, min_runs=6, max_runs=6, batch_size=2, batch_runs=1)


def _timed(model: str, inputs: str) -> dict:
    choice = {"inputs": inputs,
              "backbone": PARAMS.backbone_of(model).model_dump(mode="json"),
              "settings": PARAMS.model(model).model_dump(mode="json")}
    return timed_architecture(choice, classes=5)


def test_a_head_on_features_is_timed_without_its_head_and_ignores_head_settings():
    timed = _timed("convnext_full", "features")
    assert timed["head"] is None
    settings = PARAMS.model("convnext_full").model_dump(mode="json")
    settings["head"]["dropout"] = 0.3
    choice = {"inputs": "features", "backbone": timed["backbone"], "settings": settings}
    assert timed_architecture(choice, classes=5) == timed  # a head-only change: same baseline
    model = timed_model(timed)
    assert model.input.dtype == "uint8" and model.output_shape[:1] == (None,)


def test_an_end_to_end_model_is_timed_whole():
    timed = _timed("custom_cnn", "arrays")
    assert timed["head"]["type"] == "cnn"
    model = timed_model(timed)
    pixels = np.zeros((2, *model.input_shape[1:]), np.uint8)
    assert model.predict(pixels, verbose=0).shape == (2, 5)  # the classes, softmax head


def test_run_writes_figures_the_benchmark_checks_against(tmp_path):
    (tmp_path / "timed.json").write_text(json.dumps(_timed("custom_cnn", "arrays")))
    figures = run_tf_baseline(tmp_path / "timed.json", FAST, tmp_path / "tf_baseline.json")
    assert json.loads((tmp_path / "tf_baseline.json").read_text()) == figures
    assert (figures["input_size"], figures["threads"], figures["batch_size"]) == (
        32, os.cpu_count(), 2)
    for name in ("keras_predict", "keras_tf_function"):
        row = figures[name]
        assert row["runs"] == 6 and row["throughput_ips"] > 0
        assert row["p50_low_ms"] <= row["p50_ms"] <= row["p50_high_ms"]


@pytest.mark.parametrize("weights", ["imagenet", "/nonexistent/backbone.weights.h5"])
def test_the_baseline_never_loads_weights(weights):
    timed = _timed("convnext_full", "features")
    timed["backbone"]["weights"] = weights  # no download, no file: speed needs no weights
    assert timed_model(timed).count_params() > 0
