"""Stage `export`: the chosen model to ONNX, with its labels and provenance, behind a parity gate.

The ONNX model takes RGB uint8 pixels [N, S, S, 3] and returns family probabilities; its
preprocessing is inside the graph. If its probabilities differ from the Keras model's by more
than `export.parity_tolerance` on the test split, the stage fails and no file is kept.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import yaml

from stages.data import load_split
from stages.imaging import RESIZE_METHOD
from stages.io import read_json, write_json
from stages.params import ExportParams, ModelParams


def load_inference_model(model: str, settings: ModelParams):
    """Rebuild backbone + trained head from the stage outputs, taking uint8 pixels."""
    import keras

    from stages.features import BACKBONE_WEIGHTS, load_backbone
    from stages.onnx_export import inference_model

    backbone = load_backbone(settings.backbone, settings.input_size,
                             Path(f"artifacts/features/{model}") / BACKBONE_WEIGHTS)
    head = keras.models.load_model(f"models/{model}/model.keras")
    return inference_model(backbone, head, settings.input_size)


def git_revision() -> str:
    """HEAD's commit, marked `-dirty` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def provenance(model: str, settings: ModelParams, labels: list[str], data_dvc: Path,
               metrics: dict, normalize_max_side: int) -> dict[str, str]:
    """Metadata written into the ONNX file (string values, as ONNX requires).

    `normalize_max_side` and `resize_method` let a consumer prepare images exactly as the
    pipeline did: decode to at most that side (ingest), then resize to the input (preprocess).
    """
    params_json = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    data_hash = yaml.safe_load(data_dvc.read_text())["outs"][0]["md5"]
    return {
        "model_name": model,
        "labels": json.dumps(labels),
        "input_size": str(settings.input_size),
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "color_order": "RGB",
        "pixel_range": "0-255",
        "normalize_max_side": str(normalize_max_side),
        "resize_method": RESIZE_METHOD.format(size=settings.input_size,
                                              max_side=normalize_max_side),
        "backbone": settings.backbone.name,
        "backbone_weights": str(settings.backbone.weights),
        "params_sha256": hashlib.sha256(params_json.encode()).hexdigest()[:16],
        "params": params_json,
        "data_dvc_md5": data_hash,
        "git_revision": git_revision(),
        "test_macro_f1": f"{metrics['macro_f1']:.4f}",
    }


def export(model: str, settings: ModelParams, params: ExportParams, out_path: Path,
           report_path: Path, normalize_max_side: int) -> dict:
    """Convert, check parity on the test split, and keep the file only if it passes.

    Args:
        model: name of the model in params.yaml.
        settings: its params.
        params: export settings (opset, tolerance).
        out_path: the ONNX file to write.
        report_path: JSON with the parity figures and conversion time.
        normalize_max_side: `ingest.max_side`, recorded for consumers of the model.

    Returns:
        The report.
    """
    from stages.onnx_export import ParityError, check_parity, convert_to_onnx, parity

    labels = read_json("artifacts/split/labels.json")
    # data.dvc cannot be a DVC dependency (DVC refuses .dvc files); its hash is the `data`
    # dependency of ingest, so a change to it reruns this stage anyway.
    metadata = provenance(model, settings, labels, Path("data.dvc"),
                          read_json(f"metrics/{model}.json"), normalize_max_side)
    keras_model = load_inference_model(model, settings)
    start = time.perf_counter()
    convert_to_onnx(keras_model, out_path, params.opset, metadata)
    seconds = time.perf_counter() - start
    images, _ = load_split(Path(f"artifacts/arrays/{model}"), "test")
    report = parity(keras_model, out_path, np.asarray(images))
    report |= {"tolerance": params.parity_tolerance, "opset": params.opset,
               "convert_seconds": round(seconds, 1),
               "onnx_mb": round(out_path.stat().st_size / 2**20, 1)}
    try:
        check_parity(report, params.parity_tolerance)
    except ParityError:
        out_path.unlink(missing_ok=True)
        raise
    write_json(report_path, report)
    return report


def main() -> None:
    """Run the stage with the `export` keys and the exported model's params."""
    from stages.cli_util import stage_main
    from stages.params import load_params

    def work() -> str:
        params = load_params()
        name = params.export.model
        report = export(name, params.model(name), params.export, Path(f"models/{name}.onnx"),
                        Path("metrics/export.json"), params.ingest.max_side)
        return (f"models/{name}.onnx ({report['onnx_mb']} MB, opset {report['opset']}): "
                f"max |p_onnx - p_keras| {report['max_abs_diff']:.2e} on {report['images']} "
                f"test images, top-1 agreement {report['top1_agreement']:.2%}")

    stage_main("export", work)


if __name__ == "__main__":
    main()
