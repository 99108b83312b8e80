"""Keras model builders: backbones, the study's heads, augmentation, the end-to-end model.

Every model is a backbone (which holds its preprocessing) followed by a head, so one shape
serves all five: the custom CNN is a conv-stack head on the `rescale` backbone. Nested models
are named "backbone" and "head", which is how export finds them in a trained model.
"""

from __future__ import annotations

import keras

from stages.params import (
    Augmentation,
    BackboneParams,
    CnnHead,
    FlattenHead,
    FullHead,
    PoolHead,
)

BACKBONE, HEAD = "backbone", "head"


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
        from stages.backbones import build_backbone

        model = build_backbone(params.architecture, size, params.weights, params.pooling)
    model.name = BACKBONE
    model.trainable = False
    return model


def build_head(head: CnnHead | PoolHead | FlattenHead | FullHead, input_shape: tuple[int, ...],
               classes: int) -> keras.Model:
    """The trainable part on top of the backbone's output.

    Args:
        head: the head's settings; its `type` picks the architecture.
        input_shape: the backbone's output shape without the batch axis: (channels,) for
            pooled features, (h, w, channels) for a feature map or rescaled pixels.
        classes: number of families.

    Returns:
        An uncompiled model named "head" ending in a softmax named "probabilities".
    """
    inputs = keras.Input(tuple(input_shape), name="features")
    x = inputs
    if head.type == "cnn":
        x = _conv_stack(x, head.filters)
    elif head.type == "flatten":
        x = keras.layers.Flatten()(x)
    elif len(input_shape) == 3:
        x = keras.layers.GlobalAveragePooling2D()(x)
    if head.type == "full":
        for units in head.dense_units:
            x = keras.layers.Dense(units, activation="gelu",
                                   kernel_regularizer=keras.regularizers.L2(head.l2))(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Dropout(head.dropout)(x)
    else:
        x = keras.layers.Dropout(head.dropout)(x) if head.dropout else x
        if head.type == "cnn":
            x = keras.layers.Dense(head.dense_units, activation="relu")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=HEAD)


def _conv_stack(x, filters: list[int]):
    for i, width in enumerate(filters):
        # The first block strides to keep the cost per image low at 224 px on CPU.
        x = keras.layers.Conv2D(width, 3, strides=2 if i == 0 else 1, padding="same",
                                use_bias=False)(x)
        # A fast-moving average: a few hundred images give few steps per epoch, and the
        # default momentum (0.99) leaves validation-time statistics far from the data.
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.layers.GlobalAveragePooling2D()(x)


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
