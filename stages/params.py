"""Typed, validated settings: `params.yaml` is read once into these objects.

Unknown keys and impossible values are rejected with a message naming the key, so a typo in
`params.yaml` or in `dvc exp run -S ...` fails before any work starts.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """`params.yaml` is missing, malformed or holds an invalid value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Strict):
    dir: str = "data"


class IngestParams(_Strict):
    max_side: int = Field(512, ge=32, description="longest side of normalized images, px")
    max_pixels: int = Field(200_000_000, gt=0, description="larger images are quarantined")
    jpeg_quality: int = Field(95, ge=50, le=100)
    workers: int = Field(0, ge=0, description="decode processes; 0 = one per core")


class ValidateParams(_Strict):
    min_side: int = Field(100, ge=1, description="smallest accepted source side, px")
    max_side: int = Field(20_000, ge=1, description="largest accepted source side, px")
    min_images_per_class: int = Field(2, ge=1, description="smaller classes fail the suite")
    max_class_imbalance: float = Field(
        20.0, ge=1, description="largest / smallest class size above this fails the suite")
    strict: bool = Field(True, description="fail the pipeline on a failed expectation, or warn")

    @model_validator(mode="after")
    def _bounds(self) -> ValidateParams:
        if self.min_side > self.max_side:
            raise ValueError("validate.min_side must not exceed validate.max_side")
        return self


class SplitParams(_Strict):
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="held-out share of each class")
    val_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share of what test leaves (the study's 90/10)")
    seed: int = Field(42, description="salt of the per-image hash that picks the split")
    min_class_size: int = Field(10, ge=1, description="smaller classes follow small_classes")
    small_classes: Literal["train_only", "drop"] = "train_only"


class BackboneParams(_Strict):
    name: Literal["ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge"]
    weights: str | None = Field(None, description="'imagenet', null (random init) or a file path")
    batch_size: int = Field(16, ge=1, description="batch size of feature extraction")
    seed: int = Field(42, description="initialisation seed when weights is null")


class CnnHead(_Strict):
    """The custom CNN, trained end to end from pixels."""

    type: Literal["cnn"]
    filters: list[int] = Field(min_length=1)
    dense_units: int = Field(128, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)


class FullHead(_Strict):
    """The study's ConvNeXtFull head: GAP, [Dense gelu + L2, BatchNorm, Dropout] x N, softmax."""

    type: Literal["full"]
    dense_units: list[int] = Field(min_length=1)
    l2: float = Field(0.002, ge=0)
    dropout: float = Field(0.5, ge=0, lt=1)


class TrainingParams(_Strict):
    optimizer: Literal["adam", "adamw", "rmsprop"]
    learning_rate: float = Field(gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    patience: int = Field(5, ge=1, description="early stopping on val_loss")
    seed: int = 42


class ModelParams(_Strict):
    input_size: int = Field(ge=32, le=1024)
    backbone: BackboneParams | None = None
    head: Annotated[CnnHead | FullHead, Field(discriminator="type")]
    training: TrainingParams

    @model_validator(mode="after")
    def _head_fits_backbone(self) -> ModelParams:
        if (self.backbone is None) != (self.head.type == "cnn"):
            raise ValueError("a 'cnn' head trains without a backbone; other heads need one")
        return self


class ExportParams(_Strict):
    model: str = "convnext_full"
    opset: int = Field(17, ge=17, le=18)
    parity_tolerance: float = Field(1e-4, gt=0)


class BenchmarkParams(_Strict):
    warmup: int = Field(2, ge=1)
    runs: int = Field(20, ge=3, description="timed batch-1 calls per runtime")
    batch_size: int = Field(32, ge=1)
    batch_runs: int = Field(3, ge=1, description="timed batch calls per runtime")
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = one per core")


class Params(_Strict):
    data: DataParams = DataParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    split: SplitParams = SplitParams()
    models: dict[str, ModelParams] = Field(min_length=1)
    export: ExportParams = ExportParams()
    benchmark: BenchmarkParams = BenchmarkParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _export_model_exists(self) -> Params:
        chosen = self.models.get(self.export.model)
        if chosen is None:
            raise ValueError(f"export.model '{self.export.model}' is not one of models: "
                             f"{', '.join(self.models)}")
        if chosen.backbone is None:
            raise ValueError(f"export.model '{self.export.model}' has no backbone to export")
        return self

    def model(self, name: str) -> ModelParams:
        """Return one model's settings, or fail naming the known models."""
        try:
            return self.models[name]
        except KeyError:
            raise ParamsError(f"unknown model '{name}'; params.yaml defines: "
                              f"{', '.join(self.models)}") from None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]).replace("validate_", "validate")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"params.yaml: {key}: {first['msg']}{more}"


def parse_params(raw: dict) -> Params:
    """Validate a params dictionary.

    Args:
        raw: the parsed YAML.

    Returns:
        The validated settings.

    Raises:
        ParamsError: naming the first offending key.
    """
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_describe(error)) from None


@lru_cache(maxsize=4)
def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate `params.yaml` (cached: settings are loaded once per process)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the project root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    return parse_params(raw)
