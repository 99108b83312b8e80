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
    import keras

    from rarespecies.modeling.training import train

    _images(tmp_path, np.random.default_rng(3))
    settings = ModelParams(
        backbone="convnext", head=PoolHead(type="gap"),
        training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=3,
                                patience=10, augmentation=Augmentation(flip=True, rotation=0.1),
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

    # Resuming is exact: the same weights as a run that was never interrupted (same shuffles,
    # augmentation draws, optimizer state), and the same curves.
    whole = (tmp_path / "w.keras", tmp_path / "live_w", tmp_path / "checkpoint_w")
    assert train(settings, FEATURES, tmp_path, 3, *whole) == result
    for resumed, uninterrupted in zip(keras.models.load_model(paths[0]).get_weights(),
                                      keras.models.load_model(whole[0]).get_weights(),
                                      strict=True):
        np.testing.assert_array_equal(resumed, uninterrupted)
    assert _curve(whole[1]) == curve and _curve(whole[1], "eval/loss") == _curve(paths[1],
                                                                                 "eval/loss")


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


def _compiled_head(features: np.ndarray, classes: int = 3):
    """The study's full head (L2 on its Dense, BatchNorm, Dropout), compiled as train does."""
    import keras

    from rarespecies.modeling.heads import build_head

    keras.utils.set_random_seed(0)
    model = build_head(FullHead(type="full", dense_units=[16], l2=0.01, dropout=0.2),
                       features.shape[1:], classes)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_one_validation_pass_gives_what_keras_evaluate_gives(tmp_path):
    from rarespecies.modeling.datasets import batches, load_split
    from rarespecies.modeling.training import ValidationPass
    from rarespecies.runtime.metrics import macro_f1

    _features(tmp_path, np.random.default_rng(5))
    x, y = load_split(tmp_path, "train")
    x_val, y_val = load_split(tmp_path, "val")  # 18 images: batches of 8, 8 and 2
    model = _compiled_head(x)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, class_weight={0: 3.0, 1: 1.0, 2: 1.0})
    val = batches(x_val, y_val, 8)
    validation = ValidationPass(val, y_val)
    validation.set_model(model)
    logs = {"loss": 1.0}
    validation.on_epoch_end(0, logs)

    keras_figures = model.evaluate(val, verbose=0, return_dict=True)
    assert logs["val_loss"] == pytest.approx(keras_figures["loss"], abs=1e-5)
    assert logs["val_accuracy"] == pytest.approx(keras_figures["accuracy"], abs=1e-5)
    predicted = np.argmax(model.predict(val, verbose=0), axis=1)
    assert logs["val_macro_f1"] == macro_f1(y_val, predicted) and logs["loss"] == 1.0
    # Not vacuous: the head's L2 is part of Keras' val_loss, and accuracy is not trivial.
    assert float(sum(model.losses)) > 1e-3


def test_early_stopping_restores_the_best_epoch_and_dvclive_keeps_its_names(tmp_path, capsys):
    import keras

    from rarespecies.modeling.datasets import batches, load_split
    from rarespecies.modeling.training import ValidationPass, train

    _features(tmp_path, np.random.default_rng(6))
    noisy = np.random.default_rng(7)
    for split in ("train", "val"):  # labels half noise: validation loss turns up early
        y = np.load(tmp_path / f"{split}_y.npy")
        flip = noisy.random(len(y)) < 0.5
        y[flip] = noisy.integers(0, 3, flip.sum())
        np.save(tmp_path / f"{split}_y.npy", y.astype(np.int32))
    settings = ModelParams(
        backbone="features", head=FullHead(type="full", dense_units=[64], l2=0.0, dropout=0.0),
        training=TrainingParams(optimizer="adam", learning_rate=0.05, batch_size=8, epochs=30,
                                patience=2))
    result = train(settings, FEATURES, tmp_path, 3, tmp_path / "m.keras", tmp_path / "live",
                   tmp_path / "checkpoint", label="train@noisy")
    assert result["best_epoch"] < result["epochs"] < 30  # it stopped, after its best epoch
    losses = _curve(tmp_path / "live", "eval/loss")
    assert len(losses) == result["epochs"] and min(losses) == pytest.approx(result["val_loss"])
    # The saved model is the best epoch's: its validation loss is that epoch's.
    model = keras.models.load_model(tmp_path / "m.keras")
    x_val, y_val = load_split(tmp_path, "val")
    validation = ValidationPass(batches(x_val, y_val, 8), y_val)
    validation.set_model(model)
    assert validation.evaluate()["val_loss"] == pytest.approx(result["val_loss"], abs=1e-5)
    # dvc.yaml plots the whole folder: the same curve names as Keras' own validation gave.
    curves = tmp_path / "live/plots/metrics"
    assert {p.relative_to(curves).as_posix() for p in curves.rglob("*.tsv")} == {
        "train/loss.tsv", "train/accuracy.tsv", "eval/loss.tsv", "eval/accuracy.tsv",
        "eval/macro_f1.tsv"}
    # One progress line per epoch, no Keras per-batch lines when stdout is not a terminal.
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("train@noisy: epoch ")]
    assert len(lines) == result["epochs"] and not any("step" in line for line in out)
    assert lines[0].startswith("train@noisy: epoch 1/30 (frozen) loss ")
    assert "at most" in lines[0] and lines[-1].endswith("phase done")


def test_progress_line_counts_the_epochs_that_may_still_run():
    from rarespecies.modeling.training import duration, progress_line

    assert [duration(s) for s in (41.4, 707, 3725)] == ["41 s", "11m 47s", "1h 02m"]
    line = progress_line("train@densenet121", 3, 20, "frozen",
                         {"loss": 2.31041, "val_loss": 2.287, "val_macro_f1": 0.0512,
                          "accuracy": 0.5}, 41.0, 17, 5)
    assert line == ("train@densenet121: epoch 3/20 (frozen) loss 2.3104, val_loss 2.2870, "
                    "val_macro_f1 0.0512; 41 s/epoch, at most 11m 37s left, then up to 5 "
                    "fine-tuning epochs (early stopping may end sooner)")
    assert progress_line("t", 20, 20, "frozen", {}, 41.0, 0, 5).endswith(
        "; 41 s/epoch, then up to 5 fine-tuning epochs (early stopping may end sooner)")
    assert progress_line("t", 25, 25, "fine_tune", {}, 60.0, 0) == (
        "t: epoch 25/25 (fine-tune) ; 60 s/epoch, phase done")


def test_progress_lines_of_both_phases_estimate_what_is_left(tmp_path, capsys):
    from rarespecies.modeling.training import train

    _images(tmp_path, np.random.default_rng(8))
    settings = ModelParams(
        backbone="convnext", head=PoolHead(type="gap"),
        training=TrainingParams(optimizer="adam", learning_rate=0.01, batch_size=8, epochs=2,
                                patience=10,
                                fine_tune={"layers": 3, "learning_rate": 1e-4, "epochs": 2}))
    train(settings, FEATURES, tmp_path, 3, tmp_path / "m.keras", tmp_path / "live",
          tmp_path / "checkpoint", label="train@tiny")
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("train@tiny: epoch ")]
    heads = [line.split(" loss ")[0] for line in lines]
    assert heads == ["train@tiny: epoch 1/2 (frozen)", "train@tiny: epoch 2/2 (frozen)",
                     "train@tiny: epoch 3/4 (fine-tune)", "train@tiny: epoch 4/4 (fine-tune)"]
    assert "s/epoch, at most " in lines[0] and "then up to 2 fine-tuning epochs" in lines[0]
    assert "s/epoch, then up to 2 fine-tuning epochs (early" in lines[1]
    assert "s/epoch, at most " in lines[2] and "fine-tuning" not in lines[2]
    assert lines[3].endswith("s/epoch, phase done")


def test_the_estimate_leaves_out_the_tracing_epoch_and_stops_with_early_stopping():
    from types import SimpleNamespace

    from rarespecies.modeling.training import EpochProgress

    ticks = iter([0.0, 10.0, 10.0, 14.0, 14.0, 20.0])  # epochs of 10 s (traced), 4 s, 6 s
    progress = EpochProgress("t", "frozen", end=4, later=2, clock=lambda: next(ticks))
    model = SimpleNamespace(stop_training=False)
    progress.set_model(model)
    lines = []
    for epoch in range(3):
        model.stop_training = epoch == 2  # early stopping ends the phase after epoch 3
        progress.on_epoch_begin(epoch)
        progress.on_epoch_end(epoch, {})
        lines.append(progress.last_line)
    later = "then up to 2 fine-tuning epochs (early stopping may end sooner)"
    assert [line.split("; ")[1] for line in lines] == [
        f"10 s/epoch, at most 30 s left, {later}",  # 3 epochs left at the first's 10 s
        f"4 s/epoch, at most 8 s left, {later}",  # 2 left at 4 s: the traced one left out
        f"5 s/epoch, {later}"]  # early stopping ended the phase: only the later epochs
