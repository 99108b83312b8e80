"""An INT8 variant of the exported model (the quantize stage), shipped only if it keeps its F1.

onnxruntime's quantization tools make the candidate (dynamic: weights INT8, activations
quantized on the fly; static: both, calibrated on training images; mixed: static on some op
types, dynamic on the rest). Both models then classify the whole test split; the INT8 file
goes to `export/int8/model.onnx` only when its macro F1 is at most `quantize.max_f1_drop`
below the fp32 model's. Otherwise that folder holds
`NOT_SHIPPED.txt` saying why, and `reports/quantize.json` has the figures either way
(`metrics/quantize.json` the three people compare).

A head grafted onto a cached backbone's graph is quantized the same way: the backbone's INT8
variant is made once per backbone and quantization setting (`quantize_backbone@<backbone>`,
calibrated on the same training images), the head is quantized alone and joined to it. The
result is the file quantizing the whole model gives (same nodes, same probabilities), in
seconds: a head experiment does not recalibrate the backbone. A head holding an op type that
is quantized statically needs its own calibration, and is quantized whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from rarespecies.config.params import QuantizeParams
from rarespecies.core.files import atomic_path, read_json, write_json, write_metrics
from rarespecies.core.progress import phase
from rarespecies.export.calibration import spread
from rarespecies.export.graphs import FEATURES, WEIGHTS_SHA256, join
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.metrics import macro_f1
from rarespecies.runtime.session import open_session, probabilities


class QuantizeError(RuntimeError):
    """The backbone's INT8 variant does not belong to this model or these settings."""


def _calibration_reader(input_name: str, images: np.ndarray, batch_size: int = 8):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: images[i:i + batch_size]}
                                 for i in range(0, len(images), batch_size)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    return Reader()


def _quantize_static(fp32: Path, out: Path, op_types: list[str] | None, params: QuantizeParams,
                     calibration: np.ndarray) -> None:
    """QDQ static quantization of `op_types`, activation ranges from `calibration` images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    activation = QuantType.QUInt8 if params.activation_type == "uint8" else QuantType.QInt8
    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    quantize_static(fp32, out, _calibration_reader(input_name, calibration),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                    per_channel=params.per_channel, weight_type=QuantType.QInt8,
                    activation_type=activation, calibrate_method=methods[params.calibration])


def quantize_model(fp32: Path, out: Path, params: QuantizeParams,
                   calibration: np.ndarray | None = None) -> Path:
    """Write the INT8 variant of `fp32` to `out`, with fp32's metadata plus how it was made.

    Args:
        fp32: the exported ONNX model.
        out: the quantized file to write.
        params: method (dynamic, static or mixed), op types, per-channel weights, calibration.
        calibration: uint8 images for static calibration (typically from the train split).

    Returns:
        `out`.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if params.method != "dynamic" and (calibration is None or len(calibration) == 0):
        raise ValueError(f"{params.method} quantization needs calibration images")
    op_types = list(params.op_types) or None  # None: every op type the tool supports
    with atomic_path(out) as tmp:
        if params.method == "static":
            _quantize_static(fp32, tmp, op_types, params, calibration)
        else:
            source = fp32
            try:
                if params.method == "mixed":  # static first; dynamic leaves its QDQ ops alone
                    source = tmp.with_name(tmp.name + ".static.onnx")
                    _quantize_static(fp32, source, list(params.static_op_types), params,
                                     calibration)
                quantize_dynamic(source, tmp, op_types_to_quantize=op_types,
                                 per_channel=params.per_channel, weight_type=QuantType.QInt8)
            finally:
                if source != fp32:
                    source.unlink(missing_ok=True)
        model = onnx.load(str(tmp))
        _set_metadata(model, {**_metadata(fp32), "quantization": describe(params)})
        onnx.save_model(model, str(tmp))
    return out


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def static_op_types(params: QuantizeParams) -> set[str] | None:
    """The op types `params` quantizes statically (calibrated); None means every type."""
    if params.method == "mixed":
        return set(params.static_op_types)
    if params.method == "static":
        return set(params.op_types) or None
    return set()


def quantize_backbone(backbone_graph: Path, arrays_dir: Path, out: Path,
                      params: QuantizeParams) -> Path:
    """The quantize_backbone stage: a cached backbone graph's INT8 variant, made once.

    Args:
        backbone_graph: `export_backbone`'s file (its weights' digest in the metadata is kept).
        arrays_dir: the backbone's image arrays; calibration takes the training images the
            select stage hands over for a head on this backbone.
        out: the INT8 file to write.
        params: the `quantize` settings (`max_f1_drop` is not used here).

    Returns:
        `out`.
    """
    calibration = None
    if params.method != "dynamic":
        x = load_split(arrays_dir, "train")[0]
        calibration = np.asarray(x[spread(len(x))])
        calibration = calibration[:params.calibration_images]
    with phase(f"quantize {backbone_graph}: {describe(params)}",
               key=f"quantize {describe(params)} {backbone_graph.stat().st_size}"):
        return quantize_model(backbone_graph, out, params, calibration)


def graft_int8(fp32: Path, int8_backbone: Path, out: Path, params: QuantizeParams) -> Path | None:
    """The INT8 variant of a grafted model: its head quantized alone, joined to the backbone's.

    Args:
        fp32: the exported model, a head grafted onto a backbone graph.
        int8_backbone: that backbone graph's INT8 variant (`quantize_backbone`).
        out: the INT8 file to write.
        params: the `quantize` settings the backbone's variant was made with.

    Returns:
        `out`; None when the head holds a statically quantized op type (it needs calibrating
        with the backbone: quantize the whole model).

    Raises:
        QuantizeError: the backbone's variant was made from other weights or settings, naming
            the stage that remakes it.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exported = onnx.load(str(fp32))
    source = {entry.key: entry.value for entry in exported.metadata_props}
    backbone_graph = onnx.load(str(int8_backbone))
    backbone = {entry.key: entry.value for entry in backbone_graph.metadata_props}
    remake = f"remake it with `dvc repro quantize_backbone` ({int8_backbone})"
    if backbone.get(WEIGHTS_SHA256) != source.get(WEIGHTS_SHA256):
        raise QuantizeError(f"{int8_backbone} was quantized from other backbone weights than "
                            f"{fp32}'s: {remake}")
    if backbone.get("quantization") != describe(params):
        raise QuantizeError(f"{int8_backbone} was quantized as {backbone.get('quantization')!r}, "
                            f"not as the quantize settings say ({describe(params)}): {remake}")
    # The extractor types the head's input from value_info, which an export leaves empty.
    exported.graph.value_info.extend(v for v in backbone_graph.graph.output if v.name == FEATURES)
    head = onnx.utils.Extractor(exported).extract_model([FEATURES],
                                                        [exported.graph.output[0].name])
    del exported
    static = static_op_types(params)
    if static is None or static & {node.op_type for node in head.graph.node}:
        return None
    with atomic_path(out) as tmp:
        head_file, head_int8 = (tmp.with_name(tmp.name + suffix)
                                for suffix in (".head.onnx", ".head.int8.onnx"))
        try:
            onnx.save_model(head, str(head_file))
            if params.method == "static":  # the head has none of its op types: left as is
                head_file.replace(head_int8)
            else:
                quantize_dynamic(head_file, head_int8, op_types_to_quantize=list(
                    params.op_types) or None, per_channel=params.per_channel,
                    weight_type=QuantType.QInt8)
            head = onnx.load(str(head_int8))
        finally:
            head_file.unlink(missing_ok=True)
            head_int8.unlink(missing_ok=True)
        model = join(backbone_graph, head)
        _set_metadata(model, {**source, "quantization": describe(params)})
        onnx.save_model(model, str(tmp))
    return out


def describe(params: QuantizeParams) -> str:
    """A one-line description of the quantization, for metadata and reports."""
    ops = ", ".join(params.op_types) or "all supported ops"
    channel = "per-channel" if params.per_channel else "per-tensor"
    if params.method == "dynamic":
        return f"dynamic INT8 ({channel} weights) on {ops}"
    how = (f"{params.activation_type} activations, {params.calibration} calibration on "
           f"{params.calibration_images} train images")
    if params.method == "static":
        return f"static QDQ INT8 ({channel} weights, {how}) on {ops}"
    return (f"static QDQ INT8 on {', '.join(params.static_op_types)} ({channel} weights, {how}), "
            f"then dynamic INT8 on {ops}")


def predict(path: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities of uint8 `images` from the ONNX file at `path`."""
    return probabilities(open_session(path), images)


def compare(fp32: Path, int8: Path, images: np.ndarray, labels: np.ndarray,
            max_f1_drop: float, fp32_probabilities: np.ndarray | None = None) -> dict:
    """Both models on the same images: macro F1 each, top-1 agreement, and the verdict.

    Args:
        fp32: the exported model.
        int8: its quantized variant.
        images: uint8 test images.
        labels: their class indices.
        max_f1_drop: the largest macro F1 loss (absolute, 0.01 = one point) that ships.
        fp32_probabilities: `fp32`'s probabilities on `images` if already computed (the
            export's parity pass); else `fp32` runs here.

    Returns:
        The figures, `shipped` and the `reason`.
    """
    if fp32_probabilities is not None and len(fp32_probabilities) != len(images):
        raise ValueError(f"{len(fp32_probabilities)} fp32 probabilities for {len(images)} test "
                         "images: rerun the export stage (`dvc repro export`)")
    if fp32_probabilities is None:
        with phase(f"fp32 on {len(images)} test images"):
            p32 = predict(fp32, images)
    else:
        p32 = fp32_probabilities
    with phase(f"INT8 on {len(images)} test images"):
        p8 = predict(int8, images)
    f1 = {name: macro_f1(labels, p.argmax(1)) for name, p in (("fp32", p32), ("int8", p8))}
    drop = f1["fp32"] - f1["int8"]
    shipped = drop <= max_f1_drop
    verb = "within" if shipped else "more than"
    return {"images": len(images), "fp32_macro_f1": f1["fp32"], "int8_macro_f1": f1["int8"],
            "macro_f1_drop": drop, "max_f1_drop": max_f1_drop,
            "top1_agreement": float(np.mean(p32.argmax(1) == p8.argmax(1))),
            "max_abs_diff": float(np.max(np.abs(p32 - p8))),
            "fp32_mb": round(fp32.stat().st_size / 2**20, 1),
            "int8_mb": round(int8.stat().st_size / 2**20, 1),
            "shipped": shipped,
            "reason": (f"INT8 macro F1 {f1['int8']:.4f} vs fp32 {f1['fp32']:.4f}: a drop of "
                       f"{drop * 100:.2f} points, {verb} the allowed {max_f1_drop * 100:.2f}")}


def int8_metrics(report: dict) -> dict:
    """The quantization's numbers people compare, from its report:
    `{"int8": {"f1_drop", "top1", "shipped"}}` (macro F1 lost, top-1 agreement with fp32)."""
    return {"int8": {"f1_drop": report["macro_f1_drop"], "top1": report["top1_agreement"],
                     "shipped": bool(report["shipped"])}}


def quantize(fp32: Path, export_dir: Path, out_dir: Path, params: QuantizeParams,
             report_path: Path, metrics_path: Path,
             int8_backbones: Callable[[str], Path] | None = None,
             fp32_probabilities: Path | None = None) -> dict:
    """Make the INT8 candidate, compare it on the test split, ship it or say why not.

    Args:
        fp32: the exported ONNX model.
        export_dir: the select stage's folder (test arrays, calibration images; the choice
            when `int8_backbones` is given).
        out_dir: `export/int8`; holds `model.onnx` or `NOT_SHIPPED.txt`.
        params: the `quantize` settings.
        report_path: the JSON report: every figure, the method and the reason.
        metrics_path: `int8_metrics` (a DVC metric).
        int8_backbones: backbone name -> its `quantize_backbone` file, for a grafted model;
            None quantizes every model whole.
        fp32_probabilities: the export's `.npy` of `fp32`'s test probabilities, if kept.

    Returns:
        The report.
    """
    images, labels = load_split(export_dir, "test")
    choice = read_json(export_dir / "choice.json") if int8_backbones is not None else None
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        target, grafted = tmp / "model.onnx", None
        if choice is not None and choice["inputs"] == "features":
            backbone = int8_backbones(choice["settings"]["backbone"])
            with phase(f"quantize the head, join it to {backbone}"):
                grafted = graft_int8(fp32, backbone, target, params)
        candidate = grafted
        if candidate is None:
            calibration = None
            if params.method != "dynamic":
                calibration = np.asarray(load_split(export_dir, "calibration")[0])
                calibration = calibration[:params.calibration_images]
            with phase(f"quantize {fp32}: {describe(params)}",
                       key=f"quantize {describe(params)} {fp32.stat().st_size}"):
                candidate = quantize_model(fp32, target, params, calibration)
        report = {"quantization": describe(params), "grafted": grafted is not None}
        report |= compare(fp32, candidate, np.asarray(images), labels, params.max_f1_drop,
                          None if fp32_probabilities is None else np.load(fp32_probabilities))
        if not report["shipped"]:
            candidate.unlink()
            (tmp / "NOT_SHIPPED.txt").write_text(
                f"The INT8 model ({report['quantization']}) was not shipped: "
                f"{report['reason']}.\n")
    write_json(report_path, report)
    write_metrics(metrics_path, int8_metrics(report))
    return report
