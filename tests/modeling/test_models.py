"""The study's heads and the whole models built around them."""

import typing

import numpy as np
import pytest

from rarespecies.config.params import (
    Augmentation,
    BackboneParams,
    CnnHead,
    FlattenHead,
    FullHead,
    ModelParams,
    PoolHead,
)
from rarespecies.modeling.heads import BUILDERS, build_head
from rarespecies.modeling.models import build_backbone_model, build_end_to_end, build_optimizer

PIXELS = BackboneParams(architecture="rescale", input_size=32, pooling="none")

pytestmark = pytest.mark.slow


def test_every_head_type_of_params_has_one_builder():
    union = typing.get_args(ModelParams.model_fields["head"].annotation)
    types = {typing.get_args(model.model_fields["type"].annotation)[0] for model in union}
    assert types == set(BUILDERS) == {"cnn", "gap", "flatten", "full"}


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


