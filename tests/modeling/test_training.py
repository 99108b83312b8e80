"""Training: a head learns separable data, fine-tuning follows the frozen phase, the same seed
gives the same model, and an interrupted run resumes where it stopped."""

import json

import numpy as np
import pytest

from rarespecies.config.params import (
    Augmentation,
    BackboneParams,
    CnnHead,
    FullHead,
    ModelParams,
    PoolHead,
    TrainingParams,
)

PIXELS = BackboneParams(architecture="rescale", input_size=32, pooling="none")
FEATURES = BackboneParams(architecture="ConvNeXtTiny", input_size=32)

pytestmark = pytest.mark.slow


def _features(folder, rng, n_per_class=20, classes=3, width=16):
    centers = rng.normal(0, 3, (classes, width))
    for split, n in (("train", n_per_class), ("val", 6), ("test", 6)):
        y = np.repeat(np.arange(classes), n).astype(np.int32)
        x = (centers[y] + rng.normal(0, 0.5, (len(y), width))).astype(np.float32)
        np.save(folder / f"{split}_x.npy", x)
        np.save(folder / f"{split}_y.npy", y)


def test_head_learns_separable_features_and_logs_curves(tmp_path):
    from rarespecies.modeling.evaluate import evaluate, write_headline
    from rarespecies.modeling.training import train

    _features(tmp_path, np.random.default_rng(0))
    settings = ModelParams(
        backbone="features", head=FullHead(type="full", dense_units=[16], dropout=0.1),
        training=TrainingParams(optimizer="adamw", learning_rate=0.01, weight_decay=1e-4,
                                batch_size=8, epochs=8, patience=3))
    result = train(settings, FEATURES, tmp_path, 3, tmp_path / "model.keras", tmp_path / "live",
                   tmp_path / "checkpoint")
    assert result["inputs"] == "features"
    assert 1 <= result["best_epoch"] <= result["epochs"] <= 8
    assert result["val_macro_f1"] > 0.9
    curves = tmp_path / "live/plots/metrics"
    assert (curves / "eval/macro_f1.tsv").is_file() and (curves / "train/loss.tsv").is_file()
    metrics = evaluate(tmp_path / "model.keras", tmp_path, ["a_x", "b_y", "c_z"],
                       tmp_path / "m.json", tmp_path / "t.csv", tmp_path / "c.csv")
    assert metrics["macro_f1"] > 0.9
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    headline = write_headline(tmp_path / "h.json", "head", metrics, result)
    assert json.loads((tmp_path / "h.json").read_text()) == headline == {"head": {
        "f1": metrics["macro_f1"], "wf1": metrics["weighted_f1"], "acc": metrics["accuracy"],
        "top5": metrics["top5_accuracy"], "val_f1": result["val_macro_f1"]}}
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == "actual,predicted"


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

    from rarespecies.modeling.training import train

    _images(tmp_path, np.random.default_rng(2))
    settings = ModelParams(
        backbone="convnext", head=PoolHead(type="gap"),
        training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=2,
                                class_weights=True, augmentation=Augmentation(flip=True),
                                fine_tune={"layers": 3, "learning_rate": 1e-4, "epochs": 2}))
    result = train(settings, FEATURES, tmp_path, 3, tmp_path / "m.keras", tmp_path / "live",
                   tmp_path / "checkpoint")
    assert result["inputs"] == "arrays" and result["fine_tuned_layers"] == 3
    assert result["epochs"] >= 3  # the fine-tuning phase ran after the frozen one
    steps = (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    assert len(steps) == result["epochs"]
    model = keras.models.load_model(tmp_path / "m.keras")
    assert model.input.dtype == "uint8" and model.get_layer("backbone") is not None


CNN = ModelParams(
    backbone="pixels", head=CnnHead(type="cnn", filters=[4], dense_units=8),
    training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=2,
                            augmentation=Augmentation(flip=True, rotation=0.1)))
FEATURE_HEAD = ModelParams(
    backbone="features", head=FullHead(type="full", dense_units=[8]),
    training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=3))


@pytest.mark.parametrize("end_to_end", [False, True], ids=["head", "end-to-end"])
def test_same_seed_same_result(tmp_path, end_to_end):
    from rarespecies.modeling.training import train

    if end_to_end:
        _images(tmp_path, np.random.default_rng(1))
        settings, backbone = CNN, PIXELS
    else:
        _features(tmp_path, np.random.default_rng(1))
        settings, backbone = FEATURE_HEAD, FEATURES
    runs = [train(settings, backbone, tmp_path, 3, tmp_path / f"{name}.keras",
                  tmp_path / f"live_{name}", tmp_path / f"checkpoint_{name}")
            for name in ("a", "b")]
    assert runs[0] == runs[1]
    curves = [(tmp_path / f"live_{name}/plots/metrics/eval/loss.tsv").read_text()
              for name in ("a", "b")]
    assert curves[0] == curves[1]


def _interrupt_after(monkeypatch, epoch: int) -> None:
    """Make training die (like Ctrl-C) right after the checkpoint of `epoch` (0-based)."""
    from rarespecies.modeling.checkpoint import SaveEachEpoch

    save = SaveEachEpoch.on_epoch_end

    def save_then_die(self, done, logs=None):
        save(self, done, logs)
        if done == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(SaveEachEpoch, "on_epoch_end", save_then_die)


def _curve(live, name="train/loss"):
    rows = (live / f"plots/metrics/{name}.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[-1]) for row in rows]


@pytest.mark.parametrize("stop", [1, 3], ids=["frozen-phase", "fine-tune-phase"])
def test_interrupted_training_resumes_from_its_last_epoch(tmp_path, monkeypatch, capsys, stop):
    from rarespecies.modeling.training import train

    _images(tmp_path, np.random.default_rng(3))
    settings = ModelParams(
        backbone="convnext", head=PoolHead(type="gap"),
        training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=3,
                                patience=10,
                                fine_tune={"layers": 3, "learning_rate": 1e-4, "epochs": 2}))
    paths = (tmp_path / "m.keras", tmp_path / "live", tmp_path / "checkpoint")
    with monkeypatch.context() as patched:
        _interrupt_after(patched, stop)
        with pytest.raises(KeyboardInterrupt):
            train(settings, FEATURES, tmp_path, 3, *paths)
    state = json.loads((tmp_path / "checkpoint/state.json").read_text())
    assert state["epoch"] == stop + 1 and not paths[0].exists()
    before = state["history"]["loss"]

    result = train(settings, FEATURES, tmp_path, 3, *paths)
    assert f"Resuming from {paths[2]}: {stop + 1} epochs done" in capsys.readouterr().out
    assert result["epochs"] == 5 and result["fine_tuned_layers"] == 3
    curve = _curve(paths[1])
    assert len(curve) == 5 and curve[:stop + 1] == pytest.approx(before)
    assert paths[0].is_file() and not paths[2].exists()  # a finished run leaves no checkpoint


def test_a_checkpoint_of_other_params_is_not_resumed(tmp_path, monkeypatch, capsys):
    from rarespecies.modeling.training import train

    _features(tmp_path, np.random.default_rng(4))
    paths = (tmp_path / "m.keras", tmp_path / "live", tmp_path / "checkpoint")
    with monkeypatch.context() as patched:
        _interrupt_after(patched, 0)
        with pytest.raises(KeyboardInterrupt):
            train(FEATURE_HEAD, FEATURES, tmp_path, 3, *paths)
    changed = FEATURE_HEAD.model_copy(update={"training": FEATURE_HEAD.training.model_copy(
        update={"learning_rate": 0.001})})
    result = train(changed, FEATURES, tmp_path, 3, *paths)
    out = capsys.readouterr().out
    assert "saved with other params or inputs" in out and "Resuming" not in out
    assert result["epochs"] == 3 and len(_curve(paths[1])) == 3


def test_class_weights_balance_the_loss():
    from rarespecies.modeling.training import class_weights

    weights = class_weights(np.array([0, 0, 0, 1], np.int32), classes=3)
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}  # class 2 has no image


def _batchnorm_stats(model) -> list[np.ndarray]:
    import keras

    return [w.numpy() for layer in model.get_layer("backbone").layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)]


def test_end_to_end_random_backbone_measures_batchnorm_a_weights_file_keeps_its_own(tmp_path):
    """weights null: the backbone's BatchNorm statistics are measured on x_train before
    training; a weights file's statistics are kept exactly (the study's frozen BatchNorm)."""
    import keras

    from rarespecies.modeling.backbones import build_backbone
    from rarespecies.modeling.training import build_model

    settings = ModelParams(
        backbone="densenet", head=PoolHead(type="gap"),
        training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=4, epochs=1,
                                augmentation=Augmentation(flip=True)))
    x_train = np.random.default_rng(4).integers(0, 256, (10, 32, 32, 3), np.uint8)
    random = BackboneParams(architecture="DenseNet121", input_size=32, seed=2)
    model = build_model(settings, random, x_train, 3)
    measured = _batchnorm_stats(model)
    assert len(measured) == 2 * 121
    # Fresh statistics would be exactly zeros and ones.
    assert not np.allclose(measured[0], 0) and not np.allclose(measured[-1], 1)
    uncalibrated = build_model(settings, random.model_copy(update={"bn_calibration_images": 0}),
                               x_train, 3)
    assert np.array_equal(_batchnorm_stats(uncalibrated)[-1], np.ones_like(measured[-1]))

    file = tmp_path / "backbone.weights.h5"
    keras.utils.set_random_seed(8)
    build_backbone("DenseNet121", 32, None).save_weights(file)  # fresh statistics: 0 and 1
    loaded = build_model(settings, random.model_copy(update={"weights": str(file)}), x_train, 3)
    for stats in _batchnorm_stats(loaded)[::2]:
        assert np.array_equal(stats, np.zeros_like(stats))
    for stats in _batchnorm_stats(loaded)[1::2]:
        assert np.array_equal(stats, np.ones_like(stats))
