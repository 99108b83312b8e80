"""Stage `features@<backbone>`: the frozen backbone runs once over every split; every head on it
then trains on the cached features in seconds."""

from __future__ import annotations

from typing import Annotated

import typer

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.modeling.features import compute_features


def work(backbone: str) -> str:
    """Extract with `backbones.<backbone>` of params.yaml."""
    settings = load_params().backbone(backbone)
    counts = compute_features(paths.arrays_dir(backbone), paths.features_dir(backbone), settings)
    return f"{settings.architecture} features for {counts}"


def main(backbone: Annotated[str, typer.Argument(help="A key of `backbones` in params.yaml.")],
         debug: Debug = False) -> None:
    """Compute and cache the backbone's features of every image."""
    run_stage(f"features@{backbone}", lambda: work(backbone), debug)


if __name__ == "__main__":
    run_command(main)
