"""TensorFlow's speed on the exported architecture (the tf_baseline stage), measured once per
architecture and cached by DVC.

The benchmark compares onnxruntime with Keras `model.predict` and Keras in a `tf.function`.
Their speed depends on the architecture, the input size and the thread count, not on the
weights, so this stage times a model built from `artifacts/export/timed.json` with freshly
initialised weights (no download, whatever `weights` says) on fixed random pixels, and a
head-only experiment reuses the figures instead of spending a minute re-measuring them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter

from rarespecies.config.params import BackboneParams, BenchmarkParams, Head
from rarespecies.core.files import read_json, write_json
from rarespecies.export.benchmark import LABELS, BenchmarkError, measure
from rarespecies.modeling.heads import build_head
from rarespecies.modeling.models import build_backbone_model


def timed_model(timed: dict):
    """The Keras model TensorFlow is timed on: uint8 pixels, cast, backbone (and head).

    Args:
        timed: the select stage's `timed.json`.

    Returns:
        A Keras model with random weights and the exported model's arithmetic.
    """
    import keras

    backbone_params = BackboneParams(**timed["backbone"]).model_copy(update={"weights": None})
    keras.utils.set_random_seed(backbone_params.seed)
    backbone = build_backbone_model(backbone_params)
    size = backbone_params.input_size
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    outputs = backbone(keras.ops.cast(pixels, "float32"))
    if timed["head"] is not None:
        head = TypeAdapter(Head).validate_python(timed["head"])
        outputs = build_head(head, backbone.output_shape[1:], timed["classes"])(outputs)
    return keras.Model(pixels, outputs, name="timed")


def tf_baseline(timed: dict, params: BenchmarkParams) -> dict:
    """Time Keras `model.predict` and a `tf.function` on the architecture of `timed`.

    Args:
        timed: the select stage's `timed.json`.
        params: the benchmark's settings (the same as the onnxruntime rows').

    Returns:
        {"input_size", "threads", "batch_size", "keras_predict": figures,
        "keras_tf_function": figures}, figures as `rarespecies.export.benchmark.measure` gives.
    """
    import tensorflow as tf

    threads = params.threads or os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TF takes it only before its first op: keep an equivalent setting
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads and not (current == 0 and threads == os.cpu_count()):
            raise BenchmarkError(f"TensorFlow already runs with {current or 'all'} intra-op "
                                 f"threads in this process, not {threads}: time the "
                                 "baseline in a fresh process (dvc repro tf_baseline)") from None
    model = timed_model(timed)
    size = model.input_shape[1]
    pixels = np.random.default_rng(0).integers(0, 256, (params.batch_size, size, size, 3),
                                               dtype=np.uint8)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    calls = {"keras_predict": lambda x: model.predict(x, batch_size=len(x), verbose=0),
             "keras_tf_function": lambda x: forward(x).numpy()}
    return {"input_size": int(size), "threads": threads, "batch_size": params.batch_size,
            **{name: measure(call, pixels[:1], pixels, params, label=LABELS[name])
               for name, call in calls.items()}}


def run_tf_baseline(timed_path: Path, params: BenchmarkParams, out: Path) -> dict:
    """Measure the baseline of the architecture in `timed_path` and write it to `out`.

    Args:
        timed_path: the select stage's `timed.json`.
        params: the `benchmark` settings.
        out: the figures (JSON, read by the benchmark stage).

    Returns:
        The figures.
    """
    figures = tf_baseline(read_json(timed_path), params)
    write_json(out, figures)
    return figures
