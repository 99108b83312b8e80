"""Model behaviour: every model learns the embedded sample; the custom CNN learns real photos.

Each of the five models of params.yaml is trained and scored with the stage code itself
(ingest, split, preprocess, features, train, evaluate) on the embedded synthetic sample (345
images of 13 families, split as params.yaml splits it: 55 test images of 11 families), and must
beat the majority-class baseline's test macro F1
(`rarespecies.modeling.leaderboard.majority_baseline`). The custom CNN, trained from scratch,
must also beat it on real Encyclopedia of Life photos.

"Beat" means by at least `MARGIN` (0.05). Always answering the largest family scores below
random guessing: on the sample 0.028 against about 0.08, and on the EOL photos 0.16 against
about 0.22. So a model that answers the majority family and gets one other image right by luck
would beat it by a hair; DenseNet121 did exactly that without its measured statistics (0.029).

What differs from the study's recipe (the `models:` of params.yaml), and why:

- No pretrained weights. This machine has no network and no ImageNet files, so every backbone
  starts from a random initialisation, where the study trains on ImageNet features.
- Tiny inputs, as in tests/profiles/tiny.yaml: 32 px (75 px for InceptionResNetV2, its minimum)
  and ConvNeXtTiny instead of ConvNeXtBase. The recipes' own 224 and 299 px would take the
  better part of an hour on CPU.
- DenseNet121 and InceptionResNetV2 start from random weights whose BatchNormalization
  statistics are measured on the training images (`bn_calibrated_weights`, loaded through
  `weights: <file>`). The stage code runs a backbone in inference mode and never trains its
  BatchNormalization layers (`rarespecies.modeling.models.build_end_to_end`,
  `rarespecies.modeling.backbones.unfreeze_last`),
  which is right for ImageNet weights. With a fresh layer's statistics (mean 0, variance 1),
  nothing normalizes the activations of these deep networks: their random features vary by about
  0.004 from image to image. With this file's recipes, that leaves DenseNet121 at 0.029 and
  InceptionResNetV2 at 0.012 test macro F1. ConvNeXt normalizes with LayerNorm, and the custom
  CNN trains its own BatchNormalization layers, so those models need no such step.
- Learning rates for heads on random features. Rates meant for fine-tuning or for ImageNet
  features become 1e-3: InceptionResNetV2's 1e-5, DenseNet121's 5e-4 and the ConvNeXt "Mini"
  head's 1e-4 (the "Full" head learns at its own 1e-4). InceptionResNetV2 and DenseNet121 also
  run fewer epochs (8, and 12 + 2 fine-tuning, instead of 20 and 20 + 5) to stay within the time
  budget.

Everything else comes from the study: heads, optimizers, batch sizes, patience, augmentation,
DenseNet121's fine-tuning of its last 50 layers at 1e-5, and whether a model trains on cached
features (the ConvNeXt heads) or end to end on images (the others), which is checked against
`rarespecies.config.plan`. Training DenseNet121 or InceptionResNetV2 from scratch with every
layer trainable also beats the baseline, but slowly. Their BatchNormalization layers cannot
train, and InceptionResNetV2 needed about 9 minutes for 10 epochs on this 2-core machine.

The real photos are ../shared/data/eol-real-sample, restricted to its four families with at
least 7 images (ardeidae 60, balaenidae 30, pleuronectidae 30, goodeidae 7; nesospingidae's
single photo is left out). With the split seed 42, the project's hash split puts none of
goodeidae's 7 photos in the test split at any fraction up to 0.3. It also keeps a family that
small for training only. So these photos get a per-family stratified split (`stratified_split`)
in the project's own hash order. The custom CNN trains there with its study recipe at 64 px,
since real photos lose more than the synthetic ones at 32 px.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import yaml

from rarespecies.config.params import BackboneParams, Params, parse_params

from conftest import EOL_SAMPLE, ROOT, deep_merge, require_shared, tiny_params

if TYPE_CHECKING:
    import keras

pytestmark = pytest.mark.slow

SEED = 42  # training and backbone initialisation; the results hold for seeds 42, 7 and 1
MARGIN = 0.05  # test macro F1 points above the majority baseline (see the module docstring)
STUDY = yaml.safe_load((ROOT / "params.yaml").read_text())
MODELS = tuple(STUDY["models"])
# What each model's recipe changes from params.yaml's (see the module docstring).
RECIPE_CHANGES: dict[str, dict] = {
    "custom_cnn": {},
    "inception_resnet_v2": {"training": {"learning_rate": 1e-3, "epochs": 8}},
    "densenet121": {"training": {"learning_rate": 1e-3, "epochs": 12,
                                 "fine_tune": {"epochs": 2}}},
    "convnext_mini": {"training": {"learning_rate": 1e-3}},
    "convnext_full": {},
}
# Backbones whose random BatchNormalization statistics must be measured before use.
BATCH_NORMALIZED = {"DenseNet121", "InceptionResNetV2"}
EOL_MIN_IMAGES = 7
EOL_FAMILIES = {"chordata_ardeidae", "chordata_balaenidae", "chordata_goodeidae",
                "chordata_pleuronectidae"}
EOL_INPUT_SIZE = 64


@dataclass(frozen=True)
class Prepared:
    """A dataset after ingest, split and preprocess, as the training stages read it."""

    root: Path
    labels: list[str]

    @property
    def split_csv(self) -> Path:
        return self.root / "split.csv"

    def arrays(self, size: int) -> Path:
        return self.root / "arrays" / str(size)

    def baseline(self) -> float:
        """The majority-class baseline's test macro F1."""
        from rarespecies.modeling.leaderboard import majority_baseline

        return majority_baseline(self.split_csv)["macro_f1"]


def behaviour_params(seed: int = SEED) -> Params:
    """The study's models with `RECIPE_CHANGES` on the tiny profile's backbones, seeded."""
    raw = tiny_params()
    raw["split"] = STUDY["split"]
    raw["models"] = {name: deep_merge(model, RECIPE_CHANGES[name])
                     for name, model in STUDY["models"].items()}
    for model in raw["models"].values():
        model["training"]["seed"] = seed
    for backbone in raw["backbones"].values():
        backbone["seed"] = seed
    return parse_params(raw)


def ingested(data: Path, root: Path) -> pd.DataFrame:
    """Run the ingest stage (tiny profile settings) on `data`; returns its manifest."""
    from rarespecies.data.ingest import ingest

    p = tiny_params()["ingest"]
    ingest(data, root / "images", root / "manifest.csv", root / "ingest.json",
           max_side=p["max_side"], max_pixels=p["max_pixels"], jpeg_quality=p["jpeg_quality"],
           workers=p["workers"], progress=False)
    return pd.read_csv(root / "manifest.csv", dtype=str)


def preprocessed(root: Path, table: pd.DataFrame, sizes: set[int]) -> Prepared:
    """Write the split table and run the preprocess stage at each input size."""
    from rarespecies.data.preprocess import preprocess

    prepared = Prepared(root, sorted(table["label"].unique()))
    table.to_csv(prepared.split_csv, index=False)
    for size in sizes:
        preprocess(prepared.split_csv, prepared.labels, prepared.arrays(size), size=size,
                   progress=False)
    return prepared


def prepare_sample(root: Path) -> Prepared:
    """The embedded sample, generated, ingested, split with params.yaml and preprocessed."""
    from rarespecies.data.acquire.sample import SampleSpec, generate_sample
    from rarespecies.data.split import split_manifest

    generate_sample(root / "data", SampleSpec())
    table, _ = split_manifest(ingested(root / "data", root), **STUDY["split"])
    sizes = {backbone.input_size for backbone in behaviour_params().backbones.values()}
    return preprocessed(root, table, sizes)


def stratified_split(manifest: pd.DataFrame, test_fraction: float, val_fraction: float,
                     seed: int) -> pd.DataFrame:
    """Per family, in the project's hash order: the first share (at least one) is test, the
    next validation, the rest train. Used only where the hash split leaves a family untested."""
    from rarespecies.data.split import identity, unit_hash

    order = identity(manifest).map(lambda key: unit_hash(key, seed))
    parts = []
    for _, family in manifest.assign(order=order).groupby("label"):
        family = family.sort_values("order")
        tests = max(1, round(test_fraction * len(family)))
        vals = max(1, round(val_fraction * len(family)))
        parts.append(family.assign(split=["test"] * tests + ["val"] * vals
                                   + ["train"] * (len(family) - tests - vals)))
    return pd.concat(parts).sort_values("id")[["id", "label", "split", "image_path"]]


def _batch_norms(model: keras.Model) -> Iterator[keras.layers.BatchNormalization]:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _batch_norms(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            yield layer


def bn_calibrated_weights(backbone: BackboneParams, images: np.ndarray, path: Path) -> Path:
    """Save the backbone's random weights with BatchNormalization statistics of `images`.

    With momentum 0, one forward pass in training mode sets each layer's moving mean and
    variance to those of its input on this batch; as every layer normalizes with them, each
    later one sees what it will see at inference. Only the statistics change, not the weights.
    """
    import keras

    from rarespecies.modeling.models import build_backbone_model

    keras.utils.set_random_seed(backbone.seed)
    model = build_backbone_model(backbone)
    model.trainable = True  # a frozen BatchNormalization layer keeps its statistics
    for layer in _batch_norms(model):
        layer.momentum = 0.0
    model(images.astype(np.float32), training=True)
    model.save_weights(path)
    return path


def backbone_for(params: Params, model: str, data: Prepared, work: Path) -> BackboneParams:
    """The model's backbone settings, with measured statistics where it needs them."""
    backbone = params.backbone_of(model)
    if backbone.architecture not in BATCH_NORMALIZED:
        return backbone
    images = np.load(data.arrays(backbone.input_size) / "train_x.npy")
    weights = bn_calibrated_weights(backbone, images, work / "calibrated.weights.h5")
    return backbone.model_copy(update={"weights": str(weights)})


def cached_features(data: Prepared, backbone: BackboneParams) -> Path:
    """Run the features stage once per backbone setting; its heads share the output."""
    from rarespecies.modeling.features import compute_features

    key = hashlib.sha256(backbone.model_dump_json().encode()).hexdigest()[:12]
    out = data.root / "features" / key
    if not out.is_dir():
        compute_features(data.arrays(backbone.input_size), out, backbone)
    return out


def fit_and_score(params: Params, model: str, backbone: BackboneParams, data: Prepared,
                  work: Path) -> tuple[dict, dict]:
    """Train with the train stage, score the test split with the evaluate stage."""
    from rarespecies.modeling.evaluate import evaluate
    from rarespecies.modeling.training import train

    settings = params.model(model)
    inputs = (data.arrays(backbone.input_size) if settings.end_to_end
              else cached_features(data, backbone))
    trained = train(settings, backbone, inputs, len(data.labels), work / "model.keras",
                    work / "live", work / "checkpoint")
    metrics = evaluate(work / "model.keras", inputs, data.labels, work / "metrics.json",
                       work / "per_family.csv", work / "confusion.csv")
    return trained, metrics


def report(name: str, trained: dict, metrics: dict, baseline: float) -> None:
    """One line per model, visible with `pytest -s`."""
    print(f"\n{name}: test macro F1 {metrics['macro_f1']:.3f} vs majority baseline "
          f"{baseline:.3f} (needs > {baseline + MARGIN:.3f}; {trained['epochs']} epochs on "
          f"{trained['inputs']}, {metrics['test_images']} test images)")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """Built once: the five models train on the same arrays (and the ConvNeXt heads on the
    same features)."""
    return prepare_sample(tmp_path_factory.mktemp("sample"))


@pytest.mark.parametrize("model", MODELS)
def test_model_beats_the_majority_baseline_on_the_sample(model: str, sample: Prepared,
                                                         tmp_path: Path) -> None:
    from rarespecies.config.params import load_params
    from rarespecies.config.plan import plan

    params = behaviour_params()
    backbone = backbone_for(params, model, sample, tmp_path)
    trained, metrics = fit_and_score(params, model, backbone, sample, tmp_path)
    baseline = sample.baseline()
    report(model, trained, metrics, baseline)
    # The study's path: cached features or images, as params.yaml trains this model.
    assert trained["inputs"] == plan(load_params(ROOT / "params.yaml"))["trained"][model]["inputs"]
    assert metrics["classes_tested"] == 11 and metrics["test_images"] == 55
    assert metrics["macro_f1"] > baseline + MARGIN, (
        f"{model} barely beats always answering the largest family: test macro F1 "
        f"{metrics['macro_f1']:.4f}, baseline {baseline:.4f} + margin {MARGIN}")


def test_custom_cnn_beats_the_majority_baseline_on_real_eol_photos(tmp_path: Path) -> None:
    require_shared(EOL_SAMPLE / "metadata.csv")
    manifest = ingested(EOL_SAMPLE, tmp_path)
    sizes = manifest["label"].value_counts()
    kept = manifest[manifest["label"].isin(sizes[sizes >= EOL_MIN_IMAGES].index)]
    assert set(kept["label"]) == EOL_FAMILIES
    table = stratified_split(kept.reset_index(drop=True), test_fraction=0.2, val_fraction=0.15,
                             seed=STUDY["split"]["seed"])
    data = preprocessed(tmp_path, table, {EOL_INPUT_SIZE})
    params = behaviour_params()
    backbone = params.backbone_of("custom_cnn").model_copy(
        update={"input_size": EOL_INPUT_SIZE})
    trained, metrics = fit_and_score(params, "custom_cnn", backbone, data, tmp_path / "cnn")
    baseline = data.baseline()
    report("custom_cnn on real EOL photos", trained, metrics, baseline)
    assert metrics["classes_tested"] == len(EOL_FAMILIES)
    assert metrics["macro_f1"] > baseline + MARGIN, (
        f"custom_cnn barely beats always answering the largest family on real photos: test "
        f"macro F1 {metrics['macro_f1']:.4f}, baseline {baseline:.4f} + margin {MARGIN}")
