"""Stage `quantize_backbone@<backbone>`: the INT8 variant of a cached backbone's graph, made
once per backbone and quantization setting; `quantize` joins each head's INT8 variant to it."""

from __future__ import annotations

from typing import Annotated

import typer

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.config.plan import check_declared
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.export.quantize import describe, quantize_backbone


def work(backbone: str) -> str:
    """Quantize with the `quantize` keys of params.yaml but `max_f1_drop`."""
    check_declared("cached", backbone)
    params = load_params().quantize
    path = paths.backbone_int8(backbone)
    quantize_backbone(paths.backbone_graph(backbone), paths.arrays_dir(backbone), path, params)
    return f"{describe(params)} -> {path} ({path.stat().st_size / 2**20:.1f} MB)"


def main(backbone: Annotated[str, typer.Argument(help="A key of `backbones` in params.yaml.")],
         debug: Debug = False) -> None:
    """Quantize the backbone graph every head on its features is grafted onto, once."""
    run_stage(f"quantize_backbone@{backbone}", lambda: work(backbone), debug)


if __name__ == "__main__":
    run_command(main)
