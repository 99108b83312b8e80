"""An INT8 variant of the exported model (the quantize stage), shipped only if it keeps its F1.

onnxruntime's quantization tools make the candidate (dynamic: weights INT8, activations
quantized on the fly; static: both, calibrated on training images; mixed: static on some op
types, dynamic on the rest). Both models then classify the whole test split; the INT8 file
goes to `export/int8/model.onnx` only when its macro F1 is at most `quantize.max_f1_drop`
below the fp32 model's. Otherwise that folder holds
`NOT_SHIPPED.txt` saying why, and `reports/quantize.json` has the figures either way
(`metrics/quantize.json` the three people compare).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from rarespecies.config.params import QuantizeParams
from rarespecies.core.files import atomic_path, write_json, write_metrics
from rarespecies.modeling.datasets import load_split
from rarespecies.runtime.metrics import macro_f1
from rarespecies.runtime.session import open_session, probabilities


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
        source_metadata = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
        del model.metadata_props[:]
        for key, value in {**source_metadata, "quantization": describe(params)}.items():
            model.metadata_props.add(key=key, value=value)
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
            max_f1_drop: float) -> dict:
    """Both models on the same images: macro F1 each, top-1 agreement, and the verdict.

    Args:
        fp32: the exported model.
        int8: its quantized variant.
        images: uint8 test images.
        labels: their class indices.
        max_f1_drop: the largest macro F1 loss (absolute, 0.01 = one point) that ships.

    Returns:
        The figures, `shipped` and the `reason`.
    """
    p32, p8 = predict(fp32, images), predict(int8, images)
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
             report_path: Path, metrics_path: Path) -> dict:
    """Make the INT8 candidate, compare it on the test split, ship it or say why not.

    Args:
        fp32: the exported ONNX model.
        export_dir: the select stage's folder (test arrays; train arrays for calibration).
        out_dir: `export/int8`; holds `model.onnx` or `NOT_SHIPPED.txt`.
        params: the `quantize` settings.
        report_path: the JSON report: every figure, the method and the reason.
        metrics_path: `int8_metrics` (a DVC metric).

    Returns:
        The report.
    """
    images, labels = load_split(export_dir, "test")
    calibration = None
    if params.method != "dynamic":
        calibration = np.asarray(load_split(export_dir, "calibration")[0])
        calibration = calibration[:params.calibration_images]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        candidate = quantize_model(fp32, tmp / "model.onnx", params, calibration)
        report = {"quantization": describe(params)}
        report |= compare(fp32, candidate, np.asarray(images), labels, params.max_f1_drop)
        if not report["shipped"]:
            candidate.unlink()
            (tmp / "NOT_SHIPPED.txt").write_text(
                f"The INT8 model ({report['quantization']}) was not shipped: "
                f"{report['reason']}.\n")
    write_json(report_path, report)
    write_metrics(metrics_path, int8_metrics(report))
    return report
