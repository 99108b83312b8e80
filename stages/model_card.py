"""Stage `model_card`: `reports/model_card.md`, what a user of the ONNX file needs to know, from
the pipeline's own outputs."""

from __future__ import annotations

from rarespecies.config import paths
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.export.model_card import write_model_card


def work() -> str:
    """Write the card of `export/model.onnx`."""
    card = write_model_card(paths.EXPORT_DIR, paths.ONNX_FILE, paths.SPLIT_REPORT,
                            paths.INGEST_REPORT, paths.EXPORT_REPORT, paths.QUANTIZE_REPORT,
                            paths.MODEL_CARD)
    return f"{paths.MODEL_CARD} ({len(card.splitlines())} lines)"


def main(debug: Debug = False) -> None:
    """Describe the exported model."""
    run_stage("model_card", work, debug)


if __name__ == "__main__":
    run_command(main)
