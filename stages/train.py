"""Stage `train@<model>`: fit the model's trainable part on what dvc.yaml says it trains on,
with per-epoch curves (dvclive), early stopping and per-epoch checkpoints."""

from __future__ import annotations

from typing import Annotated

import typer

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.config.plan import check_model
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.core.files import read_json, write_json
from rarespecies.modeling.training import train


def work(model: str) -> str:
    """Train with `models.<model>` and its backbone's keys of params.yaml."""
    params = load_params()
    settings, backbone = params.model(model), params.backbone_of(model)
    entry = check_model(params, model)
    result = train(settings, backbone, paths.inputs_dir(entry["inputs"], entry["backbone"]),
                   len(read_json(paths.LABELS)), paths.model_file(model), paths.live_dir(model),
                   paths.checkpoint_dir(model), label=f"train@{model}")
    write_json(paths.train_report(model),
               {"model": model, "backbone": settings.backbone,
                "architecture": backbone.architecture, "head": settings.head.type, **result})
    return (f"{result['epochs']} epochs on {entry['inputs']}, best {result['best_epoch']}: "
            f"val_loss {result['val_loss']:.4f}, val macro F1 {result['val_macro_f1']:.4f}")


def main(model: Annotated[str, typer.Argument(help="A key of `models` in params.yaml.")],
         debug: Debug = False) -> None:
    """Train one model; an interrupted run resumes from its last finished epoch."""
    run_stage(f"train@{model}", lambda: work(model), debug)


if __name__ == "__main__":
    run_command(main)
