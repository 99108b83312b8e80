"""Which inputs each model trains on, as `params.yaml` implies and `dvc.yaml` must declare.

DVC cannot branch on a parameter, so `dvc.yaml` lists in its `vars` which models train on a
backbone's cached features and which end to end on images. This module derives that plan from
the settings; the train stage and the tests compare it with `dvc.yaml`, so the two never drift.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from rarespecies.config.params import ModelParams, Params
from rarespecies.config.paths import DVC_YAML


class PlanError(ValueError):
    """`dvc.yaml` does not declare the inputs `params.yaml` implies."""


def entry_of(model: ModelParams) -> dict:
    """What one model trains on: `{"inputs": "features" | "arrays", "backbone": name}`."""
    return {"inputs": "arrays" if model.end_to_end else "features", "backbone": model.backbone}


def plan(params: Params) -> dict:
    """The `vars` of dvc.yaml these settings need.

    Args:
        params: the validated settings.

    Returns:
        `{"trained": {model: {"inputs": "features" | "arrays", "backbone": name}},
        "cached": [backbones whose features some model trains on]}`.
    """
    trained = {name: entry_of(model) for name, model in params.models.items()}
    cached = sorted({entry["backbone"] for entry in trained.values()
                     if entry["inputs"] == "features"})
    return {"trained": trained, "cached": cached}


def declared(dvc_yaml: Path = DVC_YAML) -> dict:
    """The `trained` and `cached` vars written in dvc.yaml."""
    found: dict = {}
    for block in yaml.safe_load(dvc_yaml.read_text()).get("vars", []):
        if isinstance(block, dict):
            found |= {key: block[key] for key in ("trained", "cached") if key in block}
    return found


def check_declared(kind: str, name: str, dvc_yaml: Path = DVC_YAML) -> None:
    """Fail unless dvc.yaml's `vars.<kind>` ("trained" or "cached") lists `name`.

    Raises:
        PlanError: naming what it lists.
    """
    names = list(declared(dvc_yaml).get(kind, []))
    if name not in names:
        raise PlanError(f"unknown {'model' if kind == 'trained' else 'backbone'} '{name}'; "
                        f"{dvc_yaml} lists under vars.{kind}: {', '.join(names)}")


def check_model(params: Params, model: str, dvc_yaml: Path = DVC_YAML) -> dict:
    """Fail unless dvc.yaml declares `model`'s inputs as its settings imply.

    Returns:
        The model's plan entry, e.g. `{"inputs": "features", "backbone": "convnext_base"}`.

    Raises:
        PlanError: naming the line to write in dvc.yaml.
    """
    # Only this model's settings: train@<model> declares no other model's keys.
    entry, vars_ = entry_of(params.model(model)), declared(dvc_yaml)
    if vars_.get("trained", {}).get(model) != entry:
        raise PlanError(
            f"{dvc_yaml} does not match params.yaml for model '{model}': under vars.trained "
            f"write `{model}: {{inputs: {entry['inputs']}, backbone: {entry['backbone']}}}`"
            + (f" and list {entry['backbone']} under vars.cached" if entry["inputs"] == "features"
               else "") + " (augmentation or fine-tuning trains on images, end to end)")
    if entry["inputs"] == "features" and entry["backbone"] not in vars_.get("cached", []):
        raise PlanError(f"{dvc_yaml}: list {entry['backbone']} under vars.cached, the "
                        f"features model '{model}' trains on")
    return entry
