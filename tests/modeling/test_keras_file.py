"""A saved `.keras` file depends only on the model: no save time, no memory addresses."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np

from rarespecies.modeling.keras_file import ZIP_EPOCH, save_keras


def _model(seed: int) -> keras.Model:
    """A small trained model; fixed names, as one training process gives them."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(optimizer=keras.optimizers.Adam(name="adam"),
                  loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    model.fit(rng.random((4, 8, 8, 3), dtype=np.float32), np.arange(4) % 3, verbose=0)
    return model


def _shared_ids(node) -> list:
    if isinstance(node, dict):
        own = [node["shared_object_id"]] if "shared_object_id" in node else []
        return own + [i for value in node.values() for i in _shared_ids(value)]
    return [i for value in node for i in _shared_ids(value)] if isinstance(node, list) else []


def test_same_model_same_bytes(tmp_path):
    first, second = _model(0), _model(0)  # two objects, equal weights
    save_keras(first, tmp_path / "a.keras")
    save_keras(second, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    archive = zipfile.ZipFile(tmp_path / "a.keras")
    assert {info.date_time for info in archive.infolist()} == {ZIP_EPOCH}
    assert "date_saved" not in json.loads(archive.read("metadata.json"))
    ids = _shared_ids(json.loads(archive.read("config.json")))
    assert ids and set(ids) == set(range(1, len(set(ids)) + 1))  # 1, 2, ...: not addresses
    assert not list(tmp_path.glob(".*"))  # the temporary raw save is gone


def test_saved_file_loads_the_same_model(tmp_path):
    model = _model(1)
    save_keras(model, tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.optimizer.__class__ is model.optimizer.__class__


def test_a_different_model_gives_different_bytes(tmp_path):
    save_keras(_model(0), tmp_path / "a.keras")
    save_keras(_model(1), tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() != (tmp_path / "b.keras").read_bytes()
