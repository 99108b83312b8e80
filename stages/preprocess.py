"""Stage `preprocess@<backbone>`: every split's images at the backbone's input size, as uint8
arrays."""

from __future__ import annotations

from typing import Annotated

import typer

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.core.files import read_json
from rarespecies.data.preprocess import preprocess


def work(backbone: str) -> str:
    """Resize with `backbones.<backbone>.input_size` of params.yaml."""
    size = load_params().backbone(backbone).input_size
    counts = preprocess(paths.SPLIT_TABLE, read_json(paths.LABELS), paths.arrays_dir(backbone),
                        size=size)
    return f"{sum(counts.values())} images at {size}px ({counts})"


def main(backbone: Annotated[str, typer.Argument(help="A key of `backbones` in params.yaml.")],
         debug: Debug = False) -> None:
    """Resize every image of every split to the backbone's input size."""
    run_stage(f"preprocess@{backbone}", lambda: work(backbone), debug)


if __name__ == "__main__":
    run_command(main)
