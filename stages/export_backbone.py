"""Stage `export_backbone@<backbone>`: a frozen backbone converted to ONNX once, from the
weights its features were computed with; `export` grafts each head trained on them onto it."""

from __future__ import annotations

from typing import Annotated

import typer

from rarespecies.config import paths
from rarespecies.config.params import BackboneParams, load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.export.graft import export_backbone


def work(backbone: str) -> str:
    """Convert with `backbones.<backbone>` (not its batch size), `export.opset` and
    `export.optimize` of params.yaml."""
    params = load_params()
    # Feature extraction's batch size does not change the graph: not a key of this stage.
    settings = BackboneParams(**params.backbone(backbone).model_dump(exclude={"batch_size"}))
    path = paths.backbone_graph(backbone)
    export_backbone(settings, paths.features_dir(backbone) / paths.BACKBONE_WEIGHTS, path,
                    params.export.opset, params.export.optimize)
    return f"{settings.architecture} -> {path} ({path.stat().st_size / 2**20:.1f} MB)"


def main(backbone: Annotated[str, typer.Argument(help="A key of `backbones` in params.yaml.")],
         debug: Debug = False) -> None:
    """Convert the backbone whose features the heads train on, once."""
    run_stage(f"export_backbone@{backbone}", lambda: work(backbone), debug)


if __name__ == "__main__":
    run_command(main)
