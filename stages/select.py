"""Stage `select`: the model to export (`export.model`: a name, or `best` on validation macro
F1) and exactly what export, quantize and the model card need, in `artifacts/export/`."""

from __future__ import annotations

from pathlib import Path

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.export.select import select


def work() -> str:
    """Select with `export.model`, `models` and `backbones` of params.yaml."""
    choice = select(load_params(), Path("."), paths.EXPORT_DIR)
    return f"{choice['model']} ({choice['reason']})"


def main(debug: Debug = False) -> None:
    """Choose the model to export and gather its files."""
    run_stage("select", work, debug)


if __name__ == "__main__":
    run_command(main)
