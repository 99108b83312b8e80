"""Stage `benchmark`: onnxruntime fp32 and INT8 on the test images against the TensorFlow
baseline: latency with its interval, throughput, speed-ups and share of the CPU's peak."""

from __future__ import annotations

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.export.benchmark import LABELS, run_benchmark


def work() -> str:
    """Benchmark with the `benchmark` keys of params.yaml."""
    figures = run_benchmark(paths.EXPORT_DIR, paths.ONNX_FILE, paths.INT8_FILE,
                            paths.TF_BASELINE, load_params().benchmark, paths.BENCHMARK_METRICS,
                            paths.BENCHMARK_FIGURES, paths.BENCHMARK_REPORT)
    fastest = min((n for n in LABELS if n in figures), key=lambda n: figures[n]["p50_ms"])
    return (f"fastest at batch 1: {LABELS[fastest]} {figures[fastest]['p50_ms']} ms p50, "
            f"{figures[fastest]['speedup_vs_predict']}x model.predict; "
            f"table in {paths.BENCHMARK_REPORT}")


def main(debug: Debug = False) -> None:
    """Time every runtime of the exported model."""
    run_stage("benchmark", work, debug)


if __name__ == "__main__":
    run_command(main)
