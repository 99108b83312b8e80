"""Does the portable rewrite (rarespecies.export.portable) cost onnxruntime anything?

Times batch-1 onnxruntime on a model and on its rewritten copy, interleaved round by round so
both see the same machine, and compares the operators onnxruntime runs after its own graph
optimizations (the rewrite only touches shape arithmetic; the kernels and fusions must match).
Run timings one at a time on a shared machine:

    flock /tmp/rarespecies-bench.lock python benchmarks/portable_speed.py export/model.onnx
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import numpy as np
import onnx
import onnxruntime as ort
import typer

from rarespecies.config.paths import EXPORT_DIR
from rarespecies.export.portable import make_portable
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.session import open_session


def optimized_ops(path: Path, folder: Path) -> Counter:
    """Operator counts of the graph onnxruntime runs (every optimization, CPU)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(folder / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    return Counter(node.op_type for node in graph.node)


def main(
    model: Annotated[Path, typer.Argument(help="ONNX file")] = Path("export/model.onnx"),
    rounds: Annotated[int, typer.Option(help="interleaved rounds")] = 5,
    runs: Annotated[int, typer.Option(help="timed batch-1 runs per model and round")] = 5,
    threads: Annotated[int, typer.Option(help="intra-op threads, 0 = one per core")] = 2,
) -> None:
    """Print the p50 of each and their ratio, and how the optimized graphs differ."""
    images, _ = load_split(EXPORT_DIR, "test")
    image = np.asarray(images[:1])
    with tempfile.TemporaryDirectory(prefix="portable-speed-") as tmp:
        folder = Path(tmp)
        portable = folder / model.name
        count = make_portable(model, portable)
        ops = {"as exported": optimized_ops(model, folder),
               "portable": optimized_ops(portable, folder)}
        sessions = {"as exported": open_session(model, threads),
                    "portable": open_session(portable, threads)}
        for session in sessions.values():
            session.run(None, {"pixels": image})  # warm-up
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, session in sessions.items():
                for _ in range(runs):
                    start = time.perf_counter()
                    session.run(None, {"pixels": image})
                    times[name].append((time.perf_counter() - start) * 1000)
    p50 = {name: float(np.median(values)) for name, values in times.items()}
    print(f"{model}: {count} ReduceProd+Unsqueeze pairs folded; batch-1, {threads} threads, "
          f"{rounds} interleaved rounds of {runs}\n")
    print("| graph | p50 ms | nodes onnxruntime runs |\n| --- | --- | --- |")
    for name in sessions:
        print(f"| {name} | {p50[name]:.1f} | {sum(ops[name].values())} |")
    print(f"\nportable / as exported p50: {p50['portable'] / p50['as exported']:.3f}")
    diff = {op: ops["portable"][op] - ops["as exported"][op]
            for op in ops["portable"] | ops["as exported"]
            if ops["portable"][op] != ops["as exported"][op]}
    print(f"operator counts that differ after onnxruntime's optimizations: {diff or 'none'}")


if __name__ == "__main__":
    typer.run(main)
