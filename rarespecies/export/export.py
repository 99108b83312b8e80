"""The selected model to ONNX (the export stage), with its labels and provenance, behind a
parity gate.

The ONNX model takes RGB uint8 pixels [N, S, S, 3] and returns family probabilities; its
preprocessing is inside the graph. If its probabilities differ from the Keras model's by more
than `export.parity_tolerance`, or their top-1 families agree on fewer than
`export.min_top1_agreement` of the test split, the export fails and no file is kept.

The file's bytes depend only on the model, its data and its settings: provenance that changes
from run to run (the git state, durations) goes to the log and the promotion registry, never
into the model, so a fresh clone's `dvc repro` gives the same file and DVC's run cache holds
one result per input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from rarespecies.config import paths
from rarespecies.config.params import BackboneParams, ExportParams
from rarespecies.core.files import read_json, write_json, write_metrics
from rarespecies.core.progress import phase
from rarespecies.export.convert import (
    ParityError,
    check_parity,
    compare,
    convert_to_onnx,
    inference_model,
    parity,
)
from rarespecies.export.graft import graft
from rarespecies.modeling.datasets import load_split
from rarespecies.modeling.features import load_backbone
from rarespecies.modeling.heads import HEAD
from rarespecies.modeling.models import BACKBONE
from rarespecies.runtime.images import RESIZE_METHOD


def load_parts(export_dir: Path, features_dirs: Callable[[str], Path] = paths.features_dir):
    """The chosen model's backbone and head, from the select stage's folder.

    Args:
        export_dir: output of the select stage (`choice.json`, `model.keras`).
        features_dirs: backbone name -> its features stage's folder, whose
            `backbone.weights.h5` produced the features a head was trained on.

    Returns:
        (backbone: float pixels -> features, head: features -> probabilities, input size).
    """
    import keras

    choice = read_json(export_dir / "choice.json")
    trained = keras.models.load_model(export_dir / "model.keras")
    if choice["inputs"] == "features":
        backbone = load_backbone(BackboneParams(**choice["backbone"]),
                                 weights_of(choice, features_dirs))
        head = trained
    else:  # trained end to end: drop the augmentation, keep its backbone and head
        backbone, head = trained.get_layer(BACKBONE), trained.get_layer(HEAD)
    return backbone, head, choice["backbone"]["input_size"]


def weights_of(choice: dict, features_dirs: Callable[[str], Path]) -> Path:
    """The backbone weights a head on cached features was trained on (its features stage's)."""
    return features_dirs(choice["settings"]["backbone"]) / paths.BACKBONE_WEIGHTS


def provenance(choice: dict, labels: list[str], data_dvc: Path,
               normalize_max_side: int) -> dict[str, str]:
    """Metadata written into the ONNX file (string values, as ONNX requires).

    `normalize_max_side` and `resize_method` let a consumer prepare images exactly as the
    pipeline did: decode to at most that side (ingest), then resize to the input (preprocess).
    """
    size = choice["backbone"]["input_size"]
    params_json = json.dumps({"backbone": choice["backbone"], "model": choice["settings"]},
                             sort_keys=True)
    data_hash = yaml.safe_load(data_dvc.read_text())["outs"][0]["md5"]
    return {
        "model_name": choice["model"],
        "selection": choice["reason"],
        "labels": json.dumps(labels),
        "input_size": str(size),
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "color_order": "RGB",
        "pixel_range": "0-255",
        "normalize_max_side": str(normalize_max_side),
        "resize_method": RESIZE_METHOD.format(size=size, max_side=normalize_max_side),
        "backbone": choice["backbone"]["architecture"],
        "backbone_weights": str(choice["backbone"]["weights"]),
        "params_sha256": hashlib.sha256(params_json.encode()).hexdigest()[:16],
        "params": params_json,
        "data_dvc_md5": data_hash,
        "test_macro_f1": f"{choice['test_metrics']['macro_f1']:.4f}",
    }


def parity_metrics(report: dict) -> dict:
    """The export's numbers people compare, from its report: `{"parity": {"max_diff", "top1"}}`
    (the largest probability difference to Keras, the share of equal top-1 families)."""
    return {"parity": {"max_diff": report["max_abs_diff"], "top1": report["top1_agreement"]}}


def export(export_dir: Path, params: ExportParams, out_path: Path, report_path: Path,
           metrics_path: Path, normalize_max_side: int,
           backbone_graphs: Callable[[str], Path] | None = paths.backbone_graph,
           features_dirs: Callable[[str], Path] = paths.features_dir,
           probabilities_out: Path | None = None) -> dict:
    """Convert, check parity on the test split, and keep the file only if it passes.

    A head trained on cached features is converted alone and grafted onto its backbone's
    graph (`export_backbone@<backbone>`); a model trained end to end is converted whole.

    Args:
        export_dir: output of the select stage.
        params: export settings (opset, graph optimisation, tolerance).
        out_path: the ONNX file to write.
        report_path: JSON with the choice, the parity figures, thresholds and size.
        metrics_path: the parity figures alone (`parity_metrics`, a DVC metric).
        normalize_max_side: `ingest.max_side`, recorded for consumers of the model.
        backbone_graphs: backbone name -> its `export_backbone` graph; None converts every
            model whole.
        features_dirs: backbone name -> its features stage's folder (the Keras backbone's
            outputs on the test split, Keras' side of a grafted model's parity gate).
        probabilities_out: where the ONNX file's test-split probabilities go (`.npy`); quantize
            compares its INT8 variant with them.

    Returns:
        The report.
    """
    choice = read_json(export_dir / "choice.json")
    # data.dvc cannot be a DVC dependency (DVC refuses .dvc files); its hash is the `data`
    # dependency of ingest, so a change to it reruns this stage anyway.
    metadata = provenance(choice, read_json(export_dir / "labels.json"), paths.DATA_DVC,
                          normalize_max_side)
    backbone_graph = graph_of(choice, backbone_graphs)
    images, labels = load_split(export_dir, "test")
    images = np.asarray(images)
    if backbone_graph is not None:
        import keras

        with phase(f"load the head of {choice['model']}"):
            head = keras.models.load_model(export_dir / "model.keras")
        graft(backbone_graph, head, weights_of(choice, features_dirs),
              out_path, params.opset, metadata, params.optimize)
        # Keras' side of the gate without running the Keras backbone again: its outputs on
        # these test images, computed by the features stage with these weights.
        features = cached_test_features(features_dirs(choice["settings"]["backbone"]), labels)
        figures = compare(head.predict(features, verbose=0), out_path, images,
                          probabilities_out=probabilities_out)
    else:
        with phase(f"build the Keras model {choice['model']} (uint8 pixels -> probabilities)"):
            keras_model = inference_model(*load_parts(export_dir, features_dirs))
        convert_to_onnx(keras_model, out_path, params.opset, metadata, params.optimize)
        figures = parity(keras_model, out_path, images, probabilities_out=probabilities_out)
    report = {"model": choice["model"], "reason": choice["reason"],
              "grafted": backbone_graph is not None, **figures}
    report |= {"tolerance": params.parity_tolerance,
               "min_top1_agreement": params.min_top1_agreement, "opset": params.opset,
               "optimized": params.optimize,
               "onnx_mb": round(out_path.stat().st_size / 2**20, 1)}
    try:
        check_parity(report, params.parity_tolerance, params.min_top1_agreement)
    except ParityError:
        out_path.unlink(missing_ok=True)
        if probabilities_out is not None:
            Path(probabilities_out).unlink(missing_ok=True)
        raise
    write_json(report_path, report)
    write_metrics(metrics_path, parity_metrics(report))
    return report


def cached_test_features(features_dir: Path, labels: np.ndarray) -> np.ndarray:
    """The features stage's test-split features, checked to be of the select stage's images.

    Args:
        features_dir: the backbone's features folder.
        labels: the select stage's test labels, in order.

    Returns:
        The features, `[n, ...]`.

    Raises:
        ValueError: their labels differ from the select stage's (another split).
    """
    features, feature_labels = load_split(features_dir, "test")
    if not np.array_equal(np.asarray(feature_labels), np.asarray(labels)):
        raise ValueError(f"{features_dir}: its test features are not of the select stage's "
                         "test images (another split): run `dvc repro` to bring both up to date")
    return np.asarray(features)


def graph_of(choice: dict, backbone_graphs: Callable[[str], Path] | None) -> Path | None:
    """The converted backbone graph the chosen model's head grafts onto, if it has one.

    Args:
        choice: the select stage's `choice.json`.
        backbone_graphs: backbone name -> its `export_backbone` file.

    Returns:
        The file for a head on cached features; None for a model trained end to end.

    Raises:
        FileNotFoundError: a features model whose backbone graph is missing, naming the stage.
    """
    if choice["inputs"] != "features" or backbone_graphs is None:
        return None
    name = choice["settings"]["backbone"]
    path = Path(backbone_graphs(name))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the backbone graph of {choice['model']}; "
                                f"make it with `dvc repro export_backbone@{name}`")
    return path
