"""The training checkpoint: the whole model once per phase, each epoch only what changes, and a
resume that puts back exactly the weights, optimizer state and best weights of that epoch."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _model(augmentation):
    """uint8 16 px -> frozen backbone (conv + BatchNorm with measured-looking statistics) ->
    the study's full head (Dense + L2, BatchNorm, Dropout)."""
    import keras

    from rarespecies.config.params import FullHead
    from rarespecies.modeling.heads import build_head
    from rarespecies.modeling.models import build_end_to_end

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    bn = backbone.get_layer("bn")
    bn.moving_mean.assign(np.full(4, 3.0, np.float32))
    bn.moving_variance.assign(np.full(4, 2.0, np.float32))
    backbone.trainable = False
    head = build_head(FullHead(type="full", dense_units=[8], dropout=0.1), (4,), 3)
    return build_end_to_end(backbone, head, augmentation, 0)


def _data(n=12):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, 16, 16, 3), np.uint8),
            np.arange(n, dtype=np.int32) % 3)


def _compile(model, rate=0.01):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def _optimizer(model):
    return [np.array(v) for v in model.optimizer.variables]


def _same(a, b):
    assert len(a) == len(b)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)


def test_resume_restores_the_epoch_exactly_and_training_goes_on_identically(tmp_path):
    from rarespecies.config.params import Augmentation
    from rarespecies.modeling.checkpoint import (
        Checkpoint,
        TrainingState,
        changing_variables,
        changing_weights,
    )
    from rarespecies.modeling.training import seed_everything

    seed_everything(0)
    x, y = _data()
    model = _model(Augmentation(flip=True))
    backbone = model.get_layer("backbone")
    frozen_before = backbone.get_weights()
    _compile(model)
    checkpoint = Checkpoint(tmp_path / "ck", "fingerprint")
    checkpoint.start_phase(model, "frozen")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    best = model.get_weights()
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    state = TrainingState(epoch=2, history={"val_loss": [1.0, 1.5]})
    checkpoint.save(model, state, best)

    # The epoch file holds every weight but the frozen backbone's (its BatchNorm statistics
    # included: they do not change, the backbone runs in inference mode).
    _same(backbone.get_weights(), frozen_before)
    changing = changing_weights(model)
    assert len(changing) == len(model.weights) - len(backbone.weights) > 0
    variables = changing_variables(model)
    seeds = [v for v in variables if "seed_generator" in v.path]
    assert len(seeds) == 2  # the flip's and the dropout's random state
    assert not {id(v) for v in backbone.weights} & {id(v) for v in variables}
    with np.load(tmp_path / "ck/epoch-0002.npz") as stored:
        names = stored.files
    assert sum(name.startswith("best_") for name in names) == len(changing)
    assert sum(name.startswith("variable_") for name in names) == (
        len(variables) + len(model.optimizer.variables))
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"frozen.keras", "epoch-0002.npz",
                                                           "state.json"}

    resumed = Checkpoint(tmp_path / "ck", "fingerprint").resume()
    assert resumed.state == state and resumed.frozen_weights is None
    _same(resumed.model.get_weights(), model.get_weights())
    _same(resumed.best_weights, best)
    _same(_optimizer(resumed.model), _optimizer(model))
    assert int(np.array(model.optimizer.iterations)) == 6  # not a fresh optimizer's 0

    # Same weights, optimizer and random state: the next epoch is the same, bit for bit.
    for net in (model, resumed.model):
        net.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    _same(resumed.model.get_weights(), model.get_weights())


def test_fine_tuning_phase_writes_its_model_once_and_keeps_the_frozen_weights(tmp_path):
    from rarespecies.config.params import Augmentation
    from rarespecies.modeling.backbones import unfreeze_last
    from rarespecies.modeling.checkpoint import Checkpoint, TrainingState

    x, y = _data()
    model = _model(Augmentation(flip=True))
    _compile(model)
    checkpoint = Checkpoint(tmp_path / "ck", "fingerprint")
    checkpoint.start_phase(model, "frozen")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    state = TrainingState(epoch=1)
    checkpoint.save(model, state, None)

    assert unfreeze_last(model.get_layer("backbone"), 2) == 1  # the conv; BatchNorm stays
    frozen = model.get_weights()
    _compile(model, 1e-4)
    checkpoint.start_phase(model, "fine_tune")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    state.phase, state.epoch, state.start = "fine_tune", 2, 1
    checkpoint.save(model, state, model.get_weights())
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"fine_tune.keras",
                                                           "epoch-0002.npz", "state.json"}

    resumed = Checkpoint(tmp_path / "ck", "fingerprint").resume()
    _same(resumed.frozen_weights, frozen)
    _same(resumed.model.get_weights(), model.get_weights())
    _same(_optimizer(resumed.model), _optimizer(model))
    layers = resumed.model.get_layer("backbone")
    assert layers.get_layer("conv").trainable and not layers.get_layer("bn").trainable
    # The unfrozen conv changed during fine-tuning, so it is in the epoch file.
    assert not np.array_equal(model.get_layer("backbone").get_layer("conv").get_weights()[0],
                              frozen[0])


def test_a_crash_before_the_state_is_written_resumes_the_previous_epoch(tmp_path, monkeypatch):
    from rarespecies.config.params import Augmentation
    from rarespecies.modeling import checkpoint as module
    from rarespecies.modeling.checkpoint import Checkpoint, TrainingState

    x, y = _data()
    model = _model(Augmentation())
    _compile(model)
    checkpoint = Checkpoint(tmp_path / "ck", "fingerprint")
    checkpoint.start_phase(model, "frozen")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    first = model.get_weights()
    checkpoint.save(model, TrainingState(epoch=1), None)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)

    real = module.atomic_path

    def fail_on_state(target):
        if target.name == module.STATE:
            raise OSError("disk full")
        return real(target)

    monkeypatch.setattr(module, "atomic_path", fail_on_state)
    with pytest.raises(OSError):
        checkpoint.save(model, TrainingState(epoch=2), None)
    monkeypatch.undo()
    resumed = Checkpoint(tmp_path / "ck", "fingerprint").resume()
    assert resumed.state.epoch == 1
    _same(resumed.model.get_weights(), first)
