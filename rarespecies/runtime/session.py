"""The exported model in onnxruntime: one way to open a session, read its metadata, run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

INPUT_NAME = "pixels"  # uint8 RGB [N, S, S, 3]
OUTPUT_NAME = "probabilities"  # float32 [N, families]


def open_session(path: str | Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session with deliberate settings, the same for the benchmark,
    quantization and `rarespecies predict`: every graph optimization, `threads` intra-op
    threads (0 = one per core), sequential execution.

    Args:
        path: an ONNX file.
        threads: intra-op threads.

    Returns:
        The session.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (labels, input size, provenance)."""
    options = ort.SessionOptions()
    # Only the header is needed: skip graph optimizations (seconds for ConvNeXtBase).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def probabilities(session: ort.InferenceSession, images: np.ndarray,
                  batch_size: int = 16) -> np.ndarray:
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
