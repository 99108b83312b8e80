"""Models and training: architectures as the study built them; a head learns separable data."""

import json

import numpy as np
import pytest

from stages.models import build_cnn, build_head, build_optimizer
from stages.params import CnnHead, FullHead, ModelParams, TrainingParams

pytestmark = pytest.mark.slow


def test_full_head_matches_the_study():
    import keras

    head = build_head(FullHead(type="full", dense_units=[1024, 512], l2=0.002, dropout=0.5),
                      features=1024, classes=7)
    kinds = [type(layer).__name__ for layer in head.layers[1:]]
    assert kinds == ["Dense", "BatchNormalization", "Dropout"] * 2 + ["Dense"]
    dense = head.layers[1]
    assert dense.units == 1024 and dense.activation is keras.activations.gelu
    assert dense.kernel_regularizer.l2 == pytest.approx(0.002)
    assert head.output_shape == (None, 7)


def test_cnn_takes_raw_pixels():
    cnn = build_cnn(CnnHead(type="cnn", filters=[4, 8], dense_units=8), 32, classes=3)
    out = cnn(np.full((2, 32, 32, 3), 255, np.float32)).numpy()
    assert out.shape == (2, 3) and np.allclose(out.sum(axis=1), 1, atol=1e-5)


def test_adamw_keeps_its_weight_decay():
    opt = build_optimizer(TrainingParams(optimizer="adamw", learning_rate=1e-4,
                                         weight_decay=3e-4, batch_size=8, epochs=1))
    assert type(opt).__name__ == "AdamW" and opt.weight_decay == pytest.approx(3e-4)


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
        input_size=32, backbone={"name": "ConvNeXtTiny"},
        head=FullHead(type="full", dense_units=[16], dropout=0.1),
        training=TrainingParams(optimizer="adamw", learning_rate=0.01, weight_decay=1e-4,
                                batch_size=8, epochs=8, patience=3))
    result = train(settings, tmp_path, 3, tmp_path / "model.keras", tmp_path / "live")
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
        input_size=32, backbone={"name": "ConvNeXtTiny"},
        head=FullHead(type="full", dense_units=[8]),
        training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=3))
    first = train(settings, tmp_path, 3, tmp_path / "a.keras", tmp_path / "la")
    second = train(settings, tmp_path, 3, tmp_path / "b.keras", tmp_path / "lb")
    assert first == second
