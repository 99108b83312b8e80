"""Stage `benchmark`: onnxruntime against Keras in a `tf.function`, same inputs, same run.

Batch-1 latency (p50, p95) and batch throughput after warm-up, written to
`metrics/benchmark.json` so `dvc metrics diff` shows speed changes between experiments.
Ratios compare runtimes measured in the same process, which stays meaningful on a noisy host.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stages.data import load_split
from stages.io import write_json
from stages.params import BenchmarkParams


def measure(call: Callable[[np.ndarray], object], one: np.ndarray, batch: np.ndarray,
            params: BenchmarkParams, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Latency of single images and throughput of batches for one runtime.

    Args:
        call: runs the model on a uint8 batch and returns when the result is ready.
        one: a batch of one image.
        batch: a batch of `params.batch_size` images.
        params: warm-up and repetition counts.
        clock: seconds counter.

    Returns:
        p50/p95/mean latency in ms and throughput in images per second.
    """
    for _ in range(params.warmup):
        call(one)
        call(batch)
    latencies = []
    for _ in range(params.runs):
        start = clock()
        call(one)
        latencies.append((clock() - start) * 1000)
    start = clock()
    for _ in range(params.batch_runs):
        call(batch)
    elapsed = clock() - start
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p95_ms": round(float(np.percentile(latencies, 95)), 2),
            "mean_ms": round(float(np.mean(latencies)), 2),
            "throughput_ips": round(len(batch) * params.batch_runs / elapsed, 2)}


def onnx_session(path: Path, threads: int):
    """An onnxruntime session with deliberate settings: all graph optimizations, fixed threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def benchmark(keras_model, onnx_path: Path, images: np.ndarray, params: BenchmarkParams) -> dict:
    """Time both runtimes on the same real test images.

    Args:
        keras_model: the Keras inference model (uint8 input).
        onnx_path: its ONNX export.
        images: uint8 test images; repeated to fill a batch when there are fewer.
        params: benchmark settings.

    Returns:
        The figures per runtime and the ONNX speed-up ratios.
    """
    import tensorflow as tf

    threads = params.threads or os.cpu_count() or 1
    reps = -(-params.batch_size // len(images))
    batch = np.concatenate([images] * reps)[:params.batch_size]
    one = images[:1]

    forward = tf.function(lambda x: keras_model(x, training=False), reduce_retracing=True)
    session = onnx_session(onnx_path, threads)
    input_name = session.get_inputs()[0].name
    results = {
        "keras_tf_function": measure(lambda x: forward(x).numpy(), one, batch, params),
        "onnxruntime_fp32": measure(lambda x: session.run(None, {input_name: x}), one, batch,
                                    params),
    }
    keras_r, onnx_r = results["keras_tf_function"], results["onnxruntime_fp32"]
    return {
        "input_size": int(images.shape[1]), "batch_size": params.batch_size,
        "threads": threads, **results,
        "onnx_speedup_p50": round(keras_r["p50_ms"] / onnx_r["p50_ms"], 2),
        "onnx_speedup_throughput": round(onnx_r["throughput_ips"] / keras_r["throughput_ips"], 2),
    }


def main() -> None:
    """Run the stage with the `benchmark` keys on the exported model."""
    from stages.cli_util import stage_main
    from stages.export import EXPORT_DIR, ONNX_FILE, load_inference_model
    from stages.params import load_params

    def work() -> str:
        import tensorflow as tf

        params = load_params()
        # Both runtimes get the same thread count; TF takes it only before its first op.
        tf.config.threading.set_intra_op_parallelism_threads(
            params.benchmark.threads or os.cpu_count() or 1)
        images, _ = load_split(EXPORT_DIR, "test")
        figures = benchmark(load_inference_model(EXPORT_DIR), ONNX_FILE, np.asarray(images),
                            params.benchmark)
        write_json("metrics/benchmark.json", figures)
        k, o = figures["keras_tf_function"], figures["onnxruntime_fp32"]
        return (f"batch 1 p50: keras {k['p50_ms']} ms, onnx {o['p50_ms']} ms; "
                f"batch {figures['batch_size']}: keras {k['throughput_ips']} img/s, "
                f"onnx {o['throughput_ips']} img/s")

    stage_main("benchmark", work)


if __name__ == "__main__":
    main()
