"""The exported model in onnxruntime: one way to open a session, read its metadata, run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

INPUT_NAME = "pixels"  # uint8 RGB [N, S, S, 3]
OUTPUT_NAME = "probabilities"  # float32 [N, families]


# The settings of every session that runs the model (benchmark, quantization's gate,
# `rarespecies predict`), chosen by benchmarks/session_settings.py on the sample model:
# the README's "Speed" section gives the measured ratios.
SESSION_SETTINGS: dict[str, str | int | bool] = {
    "graph_optimization_level": "all",  # ORT's fusions (Gelu, NCHWc convolutions) at load
    "execution_mode": "sequential",  # one chain of ops: nothing for inter-op threads to do
    "inter_op_threads": 1,
    "allow_spinning": True,  # threads spin between ops instead of sleeping
    "cpu_mem_arena": True,  # reuse activation buffers across runs
    # Exact GELU: the tanh approximation was no faster here and changes the probabilities.
    "gelu_approximation": False,
}
# Images per onnxruntime call when many are classified: on ConvNeXtBase (2 threads) 32 images
# went fastest as 8 calls of 4, 1.11x (fp32) and 1.22x (INT8) the throughput of one call of
# 32 (benchmarks/session_settings.py): larger calls outgrow the caches.
IMAGES_PER_RUN = 4
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
          "parallel": ort.ExecutionMode.ORT_PARALLEL}


def session_options(threads: int = 0, **overrides: str | int | bool) -> ort.SessionOptions:
    """onnxruntime options from `SESSION_SETTINGS`, with `threads` intra-op threads.

    Args:
        threads: intra-op threads (0 = one per core).
        overrides: `SESSION_SETTINGS` keys to change (the benchmark's variants), plus
            "optimized_model_path" to save the optimized graph there.

    Returns:
        The options.
    """
    unknown = set(overrides) - set(SESSION_SETTINGS) - {"optimized_model_path"}
    if unknown:
        raise ValueError(f"unknown session settings {sorted(unknown)}; known: "
                         f"{sorted(SESSION_SETTINGS)}")
    settings = {**SESSION_SETTINGS, **overrides}
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[str(settings["graph_optimization_level"])]
    options.execution_mode = _MODES[str(settings["execution_mode"])]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = int(settings["inter_op_threads"])
    options.enable_cpu_mem_arena = bool(settings["cpu_mem_arena"])
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if settings["allow_spinning"] else "0")
    options.add_session_config_entry("optimization.enable_gelu_approximation",
                                     "1" if settings["gelu_approximation"] else "0")
    if settings.get("optimized_model_path"):
        options.optimized_model_filepath = str(settings["optimized_model_path"])
    return options


def open_session(path: str | Path, threads: int = 0,
                 **overrides: str | int | bool) -> ort.InferenceSession:
    """An onnxruntime CPU session with the measured settings (`SESSION_SETTINGS`), the same
    for the benchmark, quantization and `rarespecies predict`.

    Args:
        path: an ONNX file.
        threads: intra-op threads (0 = one per core).
        overrides: settings to change, for benchmarks only (see `session_options`).

    Returns:
        The session.
    """
    return ort.InferenceSession(str(path), session_options(threads, **overrides),
                                providers=["CPUExecutionProvider"])


def describe_session(threads: int = 0) -> dict[str, str | int | bool]:
    """The settings `open_session` uses, as plain values (for benchmark reports).

    Args:
        threads: the intra-op threads asked for (0 = one per core).

    Returns:
        `SESSION_SETTINGS` plus "intra_op_threads", "images_per_run" and "onnxruntime" (its
        version).
    """
    return {**SESSION_SETTINGS, "intra_op_threads": threads, "images_per_run": IMAGES_PER_RUN,
            "onnxruntime": ort.__version__}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (labels, input size, provenance)."""
    options = ort.SessionOptions()
    # Only the header is needed: skip graph optimizations (seconds for ConvNeXtBase).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def probabilities(session: ort.InferenceSession, images: np.ndarray,
                  batch_size: int = IMAGES_PER_RUN) -> np.ndarray:
    """Class probabilities of uint8 `images` [N, S, S, 3], computed `batch_size` at a time.

    Args:
        session: from `open_session`.
        images: uint8 pixels, possibly memory-mapped.
        batch_size: images per call.

    Returns:
        [N, families] float32.
    """
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: np.asarray(images[i:i + batch_size])})[0]
                           for i in range(0, len(images), batch_size)])
