"""Whole Keras models: the frozen backbone, augmentation, the end-to-end model, optimizers.

Every model is a backbone (which holds its preprocessing) followed by a head (`heads.py`), so
one shape serves all five: the custom CNN is a conv-stack head on the `rescale` backbone.
Nested models are named "backbone" and "head", which is how export finds them in a trained
model.
"""

from __future__ import annotations

import keras
import numpy as np

from rarespecies.config.params import Augmentation, BackboneParams
from rarespecies.modeling.backbones import build_backbone, calibrate_batch_norm

BACKBONE = "backbone"


def build_backbone_model(params: BackboneParams) -> keras.Model:
    """The frozen backbone: float RGB pixels in 0..255 to features, preprocessing inside.

    Args:
        params: architecture, input size, weights, pooling. Seed Keras first for weights null.

    Returns:
        A model named "backbone" with `trainable = False`.
    """
    size = params.input_size
    if params.architecture == "rescale":
        inputs = keras.Input((size, size, 3), name="rgb")
        model = keras.Model(inputs, keras.layers.Rescaling(1 / 255)(inputs))
    else:
        model = build_backbone(params.architecture, size, params.weights, params.pooling)
    model.name = BACKBONE
    model.trainable = False
    return model


def calibrate_random_backbone(backbone: keras.Model, params: BackboneParams,
                              images: np.ndarray) -> int:
    """Measure a randomly initialised backbone's BatchNormalization statistics on `images`.

    Only for `weights: null`: pretrained weights (ImageNet or a file) come with their own
    statistics, which stay frozen as in the study. A backbone without BatchNormalization
    (ConvNeXt, the 'rescale' one) is left untouched.

    Args:
        backbone: from `build_backbone_model` (changed in place).
        params: its settings (`weights`, `bn_calibration_images`, `seed`).
        images: the training images, (N, S, S, 3) uint8 (possibly memory-mapped).

    Returns:
        The number of BatchNormalization layers calibrated.
    """
    if params.weights is not None:
        return 0
    return calibrate_batch_norm(backbone, images, params.bn_calibration_images, params.seed)


def build_augmentation(params: Augmentation, seed: int) -> list[keras.layers.Layer]:
    """Keras random layers for the switched-on transforms; they only act while training."""
    layers: list[keras.layers.Layer] = []
    if params.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if params.rotation:
        layers.append(keras.layers.RandomRotation(params.rotation, seed=seed + 1))
    if params.zoom:
        layers.append(keras.layers.RandomZoom(params.zoom, seed=seed + 2))
    if params.contrast:
        layers.append(keras.layers.RandomContrast(params.contrast, seed=seed + 3))
    if params.brightness:
        layers.append(keras.layers.RandomBrightness(params.brightness, seed=seed + 4))
    return layers


def build_end_to_end(backbone: keras.Model, head: keras.Model, augmentation: Augmentation,
                     seed: int) -> keras.Model:
    """uint8 pixels -> augmentation -> backbone -> head, trained on images.

    The backbone always runs in inference mode, so its BatchNormalization statistics stay
    those of pretraining even when its last layers are unfrozen for fine-tuning.

    Args:
        backbone: from `build_backbone_model`.
        head: from `build_head` on the backbone's output shape.
        augmentation: which random transforms to apply while training.
        seed: seed of the random transforms.

    Returns:
        An uncompiled model taking `[N, S, S, 3]` uint8 and returning probabilities.
    """
    size = backbone.input_shape[1]
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    x = keras.ops.cast(pixels, "float32")
    for layer in build_augmentation(augmentation, seed):
        x = layer(x)
    outputs = head(backbone(x, training=False))
    return keras.Model(pixels, outputs, name="end_to_end")


def build_optimizer(kind: str, learning_rate: float,
                    weight_decay: float) -> keras.optimizers.Optimizer:
    """An optimizer by name ("adam", "adamw", "rmsprop")."""
    kinds = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
             "rmsprop": keras.optimizers.RMSprop}
    # Keras treats weight_decay=None as "no decay"; AdamW needs a number.
    decay = weight_decay if kind == "adamw" else weight_decay or None
    return kinds[kind](learning_rate, weight_decay=decay)
