"""Where an ONNX model spends its time: onnxruntime's own profiler, summed per operator type.

Answers "what would make this faster": for ConvNeXtBase INT8 it shows how much goes to the
quantized MatMuls and how much to the elementwise LayerNorm and GELU ops around them.

    python benchmarks/onnx_profile.py export/int8/model.onnx [--runs 10] [--top 12]
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import typer

from rarespecies.config.paths import EXPORT_DIR
from rarespecies.modeling.datasets import load_split


def op_times(path: Path, image: np.ndarray, runs: int, threads: int) -> dict[str, float]:
    """Kernel milliseconds per run for each operator type, as onnxruntime executed the graph.

    Args:
        path: an ONNX model.
        image: a batch of one uint8 image.
        runs: profiled runs after one warm-up.
        threads: intra-op threads (0 = onnxruntime's default).

    Returns:
        Operator type (after onnxruntime's fusions) to mean kernel ms per run, largest first.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: image}
    session.run(None, feed)  # warm-up, outside the profile
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling, options.profile_file_prefix = True, f"{tmp}/profile"
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / (runs + 1)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def main(
    model: Annotated[Path, typer.Argument(help="ONNX file to profile")],
    runs: Annotated[int, typer.Option(help="profiled batch-1 runs")] = 10,
    top: Annotated[int, typer.Option(help="operator types to list")] = 12,
    threads: Annotated[int, typer.Option(help="intra-op threads, 0 = one per core")] = 0,
) -> None:
    """Print a table of operator types by kernel time at batch 1 on a real test image."""
    images, _ = load_split(EXPORT_DIR, "test")
    times = op_times(model, np.asarray(images[:1]), runs, threads)
    total = sum(times.values())
    print(f"{model}: {total:.1f} ms of kernel time per image (profiling adds overhead)\n")
    print("| operator | ms per image | share |\n| --- | --- | --- |")
    for op, ms in list(times.items())[:top]:
        print(f"| {op} | {ms:.1f} | {ms / total:.1%} |")


if __name__ == "__main__":
    typer.run(main)
