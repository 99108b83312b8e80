"""Typed, validated settings: `params.yaml` is read once into these objects.

Unknown keys and impossible values are rejected with a message naming the key, so a typo in
`params.yaml` or in `dvc exp run -S ...` fails before any work starts. A key written twice
(YAML keeps the last silently) and a YAML syntax error fail in one line, `file:line:column:`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rarespecies.core.files import NotUtf8, read_utf8

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """`params.yaml` is missing, malformed or holds an invalid value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Strict):
    dir: str = "data"


class IngestParams(_Strict):
    max_side: int = Field(512, ge=32, description="longest side of normalized images, px")
    max_pixels: int = Field(100_000_000, gt=0, description="larger images are quarantined")
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


ARCHITECTURES = ("rescale", "ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge",
                 "DenseNet121", "InceptionResNetV2")


class BackboneParams(_Strict):
    """What turns pixels into the head's input; its preprocessing lives inside the model."""

    architecture: Literal[ARCHITECTURES] = Field(
        description="a Keras application, or 'rescale' (pixels / 255, for the custom CNN)")
    input_size: int = Field(ge=32, le=1024, description="square input side, px")
    weights: str | None = Field(None, description="'imagenet', null (random init) or a file path")
    pooling: Literal["avg", "none"] = Field(
        "avg", description="avg: pooled vector; none: the last feature map (for a flatten head)")
    batch_size: int = Field(16, ge=1, description="batch size of feature extraction")
    seed: int = Field(42, description="initialisation seed when weights is null")
    bn_calibration_images: int = Field(
        64, ge=0, description="weights null: training images (one batch) on which the "
        "BatchNormalization statistics are measured; 0 keeps a fresh layer's mean 0, var 1")

    @model_validator(mode="after")
    def _consistent(self) -> BackboneParams:
        if self.architecture == "rescale" and (self.weights is not None or self.pooling != "none"):
            raise ValueError("a 'rescale' backbone has no weights and no pooling: "
                             "set weights: null and pooling: none")
        if self.architecture == "InceptionResNetV2" and self.input_size < 75:
            raise ValueError("InceptionResNetV2 needs input_size >= 75")
        return self


class CnnHead(_Strict):
    """The custom CNN: a conv stack trained from scratch on rescaled pixels."""

    type: Literal["cnn"]
    filters: list[int] = Field(min_length=1)
    dense_units: int = Field(128, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)


class PoolHead(_Strict):
    """Global average pooling, dropout, softmax: ConvNeXt "Mini" (no dropout), DenseNet121."""

    type: Literal["gap"]
    dropout: float = Field(0.0, ge=0, lt=1)


class FlattenHead(_Strict):
    """Flatten the feature map, dropout, softmax: the study's InceptionResNetV2 head."""

    type: Literal["flatten"]
    dropout: float = Field(0.4, ge=0, lt=1)


class FullHead(_Strict):
    """The study's ConvNeXtFull head: GAP, [Dense gelu + L2, BatchNorm, Dropout] x N, softmax."""

    type: Literal["full"]
    dense_units: list[int] = Field(min_length=1)
    l2: float = Field(0.002, ge=0)
    dropout: float = Field(0.5, ge=0, lt=1)


Optimizer = Literal["adam", "adamw", "rmsprop"]


class Augmentation(_Strict):
    """Random image transforms applied while training (Keras preprocessing layers)."""

    flip: bool = Field(False, description="random horizontal flip")
    rotation: float = Field(0.0, ge=0, le=0.5, description="up to this fraction of a full turn")
    zoom: float = Field(0.0, ge=0, lt=1, description="zoom in or out by up to this fraction")
    contrast: float = Field(0.0, ge=0, lt=1, description="contrast factor range 1 +/- this")
    brightness: float = Field(0.0, ge=0, lt=1, description="brightness shift up to this fraction")

    @property
    def active(self) -> bool:
        """Whether any transform is on."""
        return self.flip or any((self.rotation, self.zoom, self.contrast, self.brightness))


class FineTune(_Strict):
    """After the frozen phase, unfreeze the backbone's last layers and train on at a low rate."""

    layers: int = Field(0, ge=0, description="weight-holding layers to unfreeze; 0 = off")
    optimizer: Optimizer = "adamw"
    learning_rate: float = Field(1e-5, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(5, ge=1)


class TrainingParams(_Strict):
    optimizer: Optimizer
    learning_rate: float = Field(gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    patience: int = Field(5, ge=1, description="early stopping on val_loss")
    seed: int = 42
    class_weights: bool = Field(False, description="weigh the loss by inverse class frequency")
    augmentation: Augmentation = Augmentation()
    fine_tune: FineTune = FineTune()


Head = Annotated[CnnHead | PoolHead | FlattenHead | FullHead, Field(discriminator="type")]


class ModelParams(_Strict):
    backbone: str = Field(description="a key of `backbones`")
    head: Head
    training: TrainingParams

    @property
    def end_to_end(self) -> bool:
        """Trains on images (augmentation, fine-tuning, the custom CNN), not cached features."""
        t = self.training
        return self.head.type == "cnn" or t.augmentation.active or t.fine_tune.layers > 0


class ExportParams(_Strict):
    model: str = Field("convnext_full", description="a model name, or 'best' (validation F1)")
    opset: int = Field(17, ge=17, le=18)
    optimize: bool = Field(True, description="rewrite GELU, LayerNorm and the pointwise "
                           "convolutions into forms onnxruntime runs fast (export/optimize.py)")
    parity_tolerance: float = Field(1e-4, gt=0)
    min_top1_agreement: float = Field(0.999, gt=0, le=1)


QuantOp = Literal["MatMul", "Conv", "Gemm"]  # the compute ops worth INT8 in these models


class QuantizeParams(_Strict):
    """The INT8 variant; the defaults won on ConvNeXt (benchmarks/quantization.py)."""

    method: Literal["dynamic", "static", "mixed"] = Field(
        "mixed", description="dynamic: weights INT8, activations quantized at run time; "
        "static: QDQ calibrated on training images; mixed: static on static_op_types, then "
        "dynamic on op_types")
    op_types: list[QuantOp] = Field(["MatMul"], description="ONNX op types; [] = all supported "
                                    "(dynamic/static), the dynamic part of mixed")
    static_op_types: list[QuantOp] = Field(
        ["Conv"], description="mixed only: op types quantized statically first")
    per_channel: bool = False
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="static/mixed: uint8 activations x int8 weights is VNNI's form")
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="static/mixed: how activation ranges are chosen")
    calibration_images: int = Field(64, ge=1, description="static/mixed: train images used")
    max_f1_drop: float = Field(0.01, ge=0, le=1, description="macro F1 loss allowed (0.01 = "
                               "one point)")

    @model_validator(mode="after")
    def _consistent(self) -> QuantizeParams:
        # A key written for another method is refused: it would silently do nothing.
        calibrated = {"activation_type", "calibration", "calibration_images"}
        if self.method == "dynamic" and calibrated & self.model_fields_set:
            raise ValueError(f"{', '.join(sorted(calibrated & self.model_fields_set))} only "
                             "apply to method static or mixed; remove them or change the method")
        if self.method != "mixed" and "static_op_types" in self.model_fields_set:
            raise ValueError("static_op_types is only used by method mixed; remove it or "
                             "change the method")
        if self.method == "mixed" and not self.static_op_types:
            raise ValueError("method mixed needs static_op_types (for example [Conv])")
        if self.method == "mixed" and (not self.op_types
                                       or set(self.static_op_types) & set(self.op_types)):
            raise ValueError("mixed: static_op_types and op_types must not overlap "
                             "(op_types [] means every op type)")
        return self


class BenchmarkParams(_Strict):
    warmup: int = Field(2, ge=1)
    min_runs: int = Field(10, ge=6, description="timed batch-1 calls before the p50's 95% "
                          "interval is looked at (6 is the fewest that give one)")
    max_runs: int = Field(60, ge=6, description="timed batch-1 calls at most per runtime")
    ci_width: float = Field(0.04, gt=0, description="stop timing a runtime once its p50's "
                            "95% interval is this narrow (high / low - 1)")
    batch_size: int = Field(32, ge=1)
    batch_runs: int = Field(2, ge=1, description="timed batch calls per runtime")
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = one per core")

    @model_validator(mode="after")
    def _runs_ordered(self) -> BenchmarkParams:
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs {self.max_runs} is below min_runs {self.min_runs}")
        return self


class PromoteParams(_Strict):
    """What the `retrain` flow asks of a candidate before downstream tools get it."""

    min_gain: float = Field(0.01, ge=0, le=1, description="test macro F1 gain over the "
                            "promoted model (0.01 = one point)")
    max_latency_ratio: float = Field(1.1, gt=0, description="candidate's batch-1 latency over "
                                     "the promoted model's, measured interleaved at decision "
                                     "time (1.1 = at most 10% slower)")
    latency_ci_width: float = Field(0.1, gt=0, description="a 95% interval of that ratio wider "
                                    "than this (high / low - 1) cannot judge, unless it lies "
                                    "wholly on one side of the limit")
    latency_pairs: int = Field(10, ge=6, description="interleaved pairs per round (6 is the "
                               "fewest that give a 95% interval)")
    latency_rounds: int = Field(6, ge=1, description="rounds before the gate gives up as "
                                "unjudgeable")


class Params(_Strict):
    data: DataParams = DataParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    split: SplitParams = SplitParams()
    backbones: dict[str, BackboneParams] = Field(min_length=1)
    models: dict[str, ModelParams] = Field(min_length=1)
    export: ExportParams = ExportParams()
    quantize: QuantizeParams = QuantizeParams()
    benchmark: BenchmarkParams = BenchmarkParams()
    promote: PromoteParams = PromoteParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _references_exist(self) -> Params:
        for name, model in self.models.items():
            backbone = self.backbones.get(model.backbone)
            if backbone is None:
                raise ValueError(f"models.{name}.backbone '{model.backbone}' is not one of "
                                 f"backbones: {', '.join(self.backbones)}")
            rescale = backbone.architecture == "rescale"
            if rescale != (model.head.type == "cnn"):
                raise ValueError(f"models.{name}: a 'cnn' head goes with a 'rescale' backbone, "
                                 "other heads with a pretrained architecture")
            if model.head.type == "flatten" and backbone.pooling != "none":
                raise ValueError(f"models.{name}: a flatten head needs backbones."
                                 f"{model.backbone}.pooling: none")
            if rescale and model.training.fine_tune.layers:
                raise ValueError(f"models.{name}.training.fine_tune.layers: a 'rescale' "
                                 "backbone has nothing to fine-tune; set it to 0")
        if unused := set(self.backbones) - {model.backbone for model in self.models.values()}:
            raise ValueError(f"backbones {', '.join(sorted(unused))}: no model uses it; remove "
                             "it (each backbone gets its own preprocess stage)")
        if self.export.model not in {*self.models, "best"}:
            raise ValueError(f"export.model '{self.export.model}' is not 'best' nor one of "
                             f"models: {', '.join(self.models)}")
        return self

    def backbone_of(self, model: str) -> BackboneParams:
        """The backbone settings of a model."""
        return self.backbone(self.model(model).backbone)

    def backbone(self, name: str) -> BackboneParams:
        """Return one backbone's settings, or fail naming the known backbones."""
        try:
            return self.backbones[name]
        except KeyError:
            raise ParamsError(f"unknown backbone '{name}'; params.yaml defines: "
                              f"{', '.join(self.backbones)}") from None

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
    """Read and validate `params.yaml` (cached: settings are loaded once per stage process)."""
    return read_params(path)


def read_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate `params.yaml` afresh: for long-lived processes such as served flows."""
    return parse_params(raw_params(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` keys may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            try:
                mark = first.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error names it
            if mark is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} (first at line {mark.line + 1})",
                    problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep)


def _one_line(path: Path, text: str, error: yaml.YAMLError) -> str:
    """`path:line:column: problem (context at line N)` from PyYAML's multi-line message."""
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML forbids, by offset
        line = text.count("\n", 0, error.position) + 1
        column = error.position - text.rfind("\n", 0, error.position)
        return f"{path}:{line}:{column}: character U+{error.character:04X} is not allowed in YAML"
    mark = getattr(error, "problem_mark", None)
    if mark is None or not getattr(error, "problem", None):
        return f"{path}: not valid YAML: {' '.join(str(error).split())}"
    context, at = getattr(error, "context", None), getattr(error, "context_mark", None)
    where = f" ({context} at line {at.line + 1})" if context and at else ""
    return f"{path}:{mark.line + 1}:{mark.column + 1}: {error.problem}{where}"


def raw_params(path: str | Path = PARAMS_FILE) -> dict:
    """`params.yaml` as a dictionary, not validated, with no key written twice.

    Args:
        path: the file.

    Returns:
        The parsed YAML (for code that needs the file's own keys, such as a sweep's check).

    Raises:
        ParamsError: missing, not UTF-8, not YAML, a duplicate key, or not a mapping; one line
            naming the file (and line and column when YAML can tell).
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the project root")
    try:
        text = read_utf8(path)
    except NotUtf8 as error:
        raise ParamsError(str(error)) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ParamsError(_one_line(path, text, error)) from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level is a {type(raw).__name__}, not a mapping of "
                          "sections (data, ingest, models...)")
    return raw or {}
