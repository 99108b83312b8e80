"""Which INT8 quantization to ship: every candidate against fp32, in one run, on the same inputs.

Quantizes `export/model.onnx` (from `dvc repro`) several ways with onnxruntime's tools, then
measures each on the test split of `artifacts/export`: batch-1 latency (p50), batch
throughput, macro F1 and top-1 agreement with fp32. Static quantization calibrates on images
of the train split. The `quantize` params default to the winner.

    python benchmarks/quantization.py [--runs 10] [--calibration 32]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from rarespecies.config.params import BenchmarkParams, QuantizeParams
from rarespecies.config.paths import EXPORT_DIR, ONNX_FILE
from rarespecies.core.files import read_json
from rarespecies.export.benchmark import measure
from rarespecies.export.quantize import compare, describe, quantize_model
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.session import open_session

CANDIDATES = (
    QuantizeParams(method="dynamic", op_types=["MatMul"]),
    QuantizeParams(method="dynamic", op_types=["MatMul"], per_channel=True),
    QuantizeParams(method="dynamic", op_types=[]),
    QuantizeParams(method="static", op_types=[], per_channel=True),
    QuantizeParams(method="static", op_types=["MatMul"], per_channel=True),
)


def main(
    runs: Annotated[int, typer.Option(help="timed batch-1 calls per model")] = 10,
    calibration: Annotated[int, typer.Option(help="train images for static calibration")] = 32,
) -> None:
    """Print one row per candidate: size, speed, macro F1 and agreement against fp32."""
    images, labels = load_split(EXPORT_DIR, "test")
    images = np.asarray(images)
    backbone = read_json(EXPORT_DIR / "choice.json")["settings"]["backbone"]
    train = np.asarray(load_split(Path("artifacts/arrays") / backbone, "train")[0][:calibration])
    timing = BenchmarkParams(warmup=2, runs=runs, batch_size=16, batch_runs=2)
    batch = np.concatenate([images] * -(-timing.batch_size // len(images)))[:timing.batch_size]

    def speed(path: Path) -> dict:
        session = open_session(path, threads=0)
        name = session.get_inputs()[0].name
        return measure(lambda x: session.run(None, {name: x}), images[:1], batch, timing)

    base = speed(ONNX_FILE)
    print(f"fp32: p50 {base['p50_ms']:.0f} ms, {base['throughput_ips']:.1f} img/s "
          f"({len(images)} test images, batch {timing.batch_size})\n")
    print("| quantization | quantize s | MB | p50 ms | vs fp32 | img/s | macro F1 fp32 → int8 "
          "| top-1 agreement |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for i, params in enumerate(CANDIDATES):
            out = Path(tmp) / f"{i}.onnx"
            start = time.perf_counter()
            quantize_model(ONNX_FILE, out, params, train)
            made = time.perf_counter() - start
            fig, cmp = speed(out), compare(ONNX_FILE, out, images, labels, params.max_f1_drop)
            print(f"| {describe(params)} | {made:.0f} | {cmp['int8_mb']:.0f} "
                  f"| {fig['p50_ms']:.0f} | {base['p50_ms'] / fig['p50_ms']:.2f}x "
                  f"| {fig['throughput_ips']:.1f} "
                  f"| {cmp['fp32_macro_f1']:.4f} → {cmp['int8_macro_f1']:.4f} "
                  f"| {cmp['top1_agreement']:.1%} |", flush=True)
            out.unlink()


if __name__ == "__main__":
    typer.run(main)
