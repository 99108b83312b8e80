"""Models and training: architectures as the study built them; a head learns separable data."""

import json

import numpy as np
import pytest

from stages.models import build_backbone_model, build_end_to_end, build_head, build_optimizer
from stages.params import (
    Augmentation,
    BackboneParams,
    CnnHead,
    FlattenHead,
    FullHead,
    ModelParams,
    PoolHead,
    TrainingParams,
)

PIXELS = BackboneParams(architecture="rescale", input_size=32, pooling="none")
FEATURES = BackboneParams(architecture="ConvNeXtTiny", input_size=32)

pytestmark = pytest.mark.slow


def test_full_head_matches_the_study():
    import keras

    head = build_head(FullHead(type="full", dense_units=[1024, 512], l2=0.002, dropout=0.5),
                      (1024,), classes=7)
    kinds = [type(layer).__name__ for layer in head.layers[1:]]
    assert kinds == ["Dense", "BatchNormalization", "Dropout"] * 2 + ["Dense"]
    dense = head.layers[1]
    assert dense.units == 1024 and dense.activation is keras.activations.gelu
    assert dense.kernel_regularizer.l2 == pytest.approx(0.002)
    assert head.output_shape == (None, 7)


def test_cnn_takes_uint8_pixels_and_rescales_them():
    backbone = build_backbone_model(PIXELS)
    head = build_head(CnnHead(type="cnn", filters=[4, 8], dense_units=8), (32, 32, 3), 3)
    cnn = build_end_to_end(backbone, head, Augmentation(), seed=0)
    white = np.full((2, 32, 32, 3), 255, np.uint8)
    np.testing.assert_allclose(backbone(white.astype(np.float32)).numpy(), 1.0)
    out = cnn(white).numpy()
    assert out.shape == (2, 3) and np.allclose(out.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize(("head", "shape", "kinds"), [
    (PoolHead(type="gap", dropout=0.5), (2, 2, 8), ["GlobalAveragePooling2D", "Dropout", "Dense"]),
    (PoolHead(type="gap"), (8,), ["Dense"]),
    (FlattenHead(type="flatten", dropout=0.4), (2, 2, 8), ["Flatten", "Dropout", "Dense"]),
])
def test_study_heads(head, shape, kinds):
    model = build_head(head, shape, classes=5)
    assert [type(layer).__name__ for layer in model.layers[1:]] == kinds
    assert model.output_shape == (None, 5)


def test_augmentation_acts_only_while_training():
    head = build_head(FlattenHead(type="flatten", dropout=0.0), (32, 32, 3), 3)
    model = build_end_to_end(build_backbone_model(PIXELS), head,
                             Augmentation(flip=True, rotation=0.2, zoom=0.1, contrast=0.05,
                                          brightness=0.05), seed=0)
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), np.uint8)
    np.testing.assert_array_equal(model(images, training=False), model(images, training=False))
    assert not np.allclose(model(images, training=True), model(images, training=False))


def test_adamw_keeps_its_weight_decay():
    opt = build_optimizer("adamw", 1e-4, 3e-4)
    assert type(opt).__name__ == "AdamW" and opt.weight_decay == pytest.approx(3e-4)
    assert build_optimizer("adam", 1e-3, 0.0).weight_decay is None


def _features(folder, rng, n_per_class=20, classes=3, width=16):
    centers = rng.normal(0, 3, (classes, width))
    for split, n in (("train", n_per_class), ("val", 6), ("test", 6)):
        y = np.repeat(np.arange(classes), n).astype(np.int32)
        x = (centers[y] + rng.normal(0, 0.5, (len(y), width))).astype(np.float32)
        np.save(folder / f"{split}_x.npy", x)
        np.save(folder / f"{split}_y.npy", y)


def test_head_learns_separable_features_and_logs_curves(tmp_path):
    from stages.evaluate import evaluate
    from stages.train import train

    _features(tmp_path, np.random.default_rng(0))
    settings = ModelParams(
        backbone="features", head=FullHead(type="full", dense_units=[16], dropout=0.1),
        training=TrainingParams(optimizer="adamw", learning_rate=0.01, weight_decay=1e-4,
                                batch_size=8, epochs=8, patience=3))
    result = train(settings, FEATURES, tmp_path, 3, tmp_path / "model.keras", tmp_path / "live")
    assert result["inputs"] == "features"
    assert 1 <= result["best_epoch"] <= result["epochs"] <= 8
    assert result["val_macro_f1"] > 0.9
    curves = tmp_path / "live/plots/metrics"
    assert (curves / "eval/macro_f1.tsv").is_file() and (curves / "train/loss.tsv").is_file()
    metrics = evaluate(tmp_path / "model.keras", tmp_path, ["a_x", "b_y", "c_z"],
                       tmp_path / "m.json", tmp_path / "t.csv", tmp_path / "c.csv")
    assert metrics["macro_f1"] > 0.9
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == "actual,predicted"


def test_same_seed_same_result(tmp_path):
    from stages.train import train

    _features(tmp_path, np.random.default_rng(1))
    settings = ModelParams(
        backbone="features", head=FullHead(type="full", dense_units=[8]),
        training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=3))
    first = train(settings, FEATURES, tmp_path, 3, tmp_path / "a.keras", tmp_path / "la")
    second = train(settings, FEATURES, tmp_path, 3, tmp_path / "b.keras", tmp_path / "lb")
    assert first == second


def _images(folder, rng, classes=3, size=32):
    """Each class a solid colour plus noise: learnable by a tiny CNN in a few epochs."""
    colours = rng.integers(0, 255, (classes, 3))
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        y = np.repeat(np.arange(classes), n).astype(np.int32)
        noise = rng.integers(-20, 20, (len(y), size, size, 3))
        x = np.clip(colours[y][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        np.save(folder / f"{split}_x.npy", x)
        np.save(folder / f"{split}_y.npy", y)


def test_fine_tuning_unfreezes_the_backbone_after_the_frozen_phase(tmp_path):
    import keras

    from stages.train import train

    _images(tmp_path, np.random.default_rng(2))
    settings = ModelParams(
        backbone="convnext", head=PoolHead(type="gap"),
        training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=2,
                                class_weights=True, augmentation=Augmentation(flip=True),
                                fine_tune={"layers": 3, "learning_rate": 1e-4, "epochs": 2}))
    result = train(settings, FEATURES, tmp_path, 3, tmp_path / "m.keras", tmp_path / "live")
    assert result["inputs"] == "arrays" and result["fine_tuned_layers"] == 3
    assert result["epochs"] >= 3  # the fine-tuning phase ran after the frozen one
    steps = (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    assert len(steps) == result["epochs"]
    model = keras.models.load_model(tmp_path / "m.keras")
    assert model.input.dtype == "uint8" and model.get_layer("backbone") is not None


def test_class_weights_balance_the_loss():
    from stages.train import class_weights

    weights = class_weights(np.array([0, 0, 0, 1], np.int32), classes=3)
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}  # class 2 has no image
