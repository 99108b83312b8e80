"""Stage `quantize`: an INT8 variant of `export/model.onnx`, shipped in `export/int8/` only if its
test macro F1 is within `quantize.max_f1_drop` of the fp32 model's."""

from __future__ import annotations

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.export.quantize import quantize


def work() -> str:
    """Quantize with the `quantize` keys of params.yaml."""
    report = quantize(paths.ONNX_FILE, paths.EXPORT_DIR, paths.INT8_DIR, load_params().quantize,
                      paths.QUANTIZE_REPORT, paths.QUANTIZE_METRICS,
                      int8_backbones=paths.backbone_int8,
                      fp32_probabilities=paths.TEST_PROBABILITIES)
    where = paths.INT8_FILE if report["shipped"] else "not shipped"
    how = "head joined to its backbone's INT8 graph" if report["grafted"] else "whole model"
    return (f"{report['quantization']} ({how}) -> {where} ({report['int8_mb']} MB): "
            f"{report['reason']}")


def main(debug: Debug = False) -> None:
    """Quantize the exported model and ship it only if it keeps its macro F1."""
    run_stage("quantize", work, debug)


if __name__ == "__main__":
    run_command(main)
