"""The exported model in runtimes nobody here targets: Node.js and OpenCV's DNN module.

Feeds the test split's pixels to onnxruntime-node (consumers/node/predict.js) and to OpenCV
(`cv2.dnn.readNetFromONNX`), and compares their probabilities with Python's onnxruntime. A
runtime that cannot run a graph prints its own refusal. OpenCV is also tried on the
`rarespecies.export.portable` rewrite of each file, which is what makes it run the fp32 model.

    python benchmarks/outside_runtimes.py [export/model.onnx export/int8/model.onnx]
        [--images 55] [--batch 8] [--json reports/outside_runtimes.json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from rarespecies.config.paths import EXPORT_DIR
from rarespecies.core.console import one_line_errors
from rarespecies.export.consumers import check_model, markdown_table
from rarespecies.modeling.datasets import load_split

DEFAULT_MODELS = [Path("export/model.onnx"), Path("export/int8/model.onnx")]


def main(
    models: Annotated[list[Path] | None, typer.Argument(help="ONNX files")] = None,
    images: Annotated[int, typer.Option(help="test images to feed, 0 = all")] = 0,
    batch: Annotated[int, typer.Option(min=1, help="images per run, in every runtime")] = 8,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results")]
    = None,
) -> None:
    """Print one table row per model and runtime: refusal, or max |Δp| and top-1 agreement."""
    with one_line_errors("outside_runtimes"):
        models = models or [m for m in DEFAULT_MODELS if m.is_file()]
        if not models:
            raise FileNotFoundError("no model given and export/model.onnx is missing: "
                                    "run dvc repro export (or dvc checkout export/model.onnx)")
        pixels, _ = load_split(EXPORT_DIR, "test")
        pixels = np.asarray(pixels[:images] if images else pixels)
        print(f"{len(pixels)} test images of {EXPORT_DIR}, batches of {batch}", flush=True)
        results = []
        for model in models:
            rows = check_model(model, pixels, batch)
            print(f"\n{markdown_table(rows)}", flush=True)  # each model as soon as it is done
            results += rows
        if json_out:
            json_out.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n",
                                encoding="utf-8")


if __name__ == "__main__":
    typer.run(main)
