"""Keras model builders: the custom CNN, the heads trained on frozen features, optimizers."""

from __future__ import annotations

import keras

from stages.params import CnnHead, FullHead, TrainingParams


def build_cnn(head: CnnHead, input_size: int, classes: int) -> keras.Model:
    """The custom CNN: rescaling inside, conv blocks, global pooling, dense, softmax.

    Args:
        head: architecture settings.
        input_size: square input side.
        classes: number of families.

    Returns:
        An uncompiled model taking RGB pixels in 0..255.
    """
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for i, filters in enumerate(head.filters):
        # The first block strides to keep the cost per image low at 224 px on CPU.
        x = keras.layers.Conv2D(filters, 3, strides=2 if i == 0 else 1, padding="same",
                                use_bias=False)(x)
        # A fast-moving average: a few hundred images give few steps per epoch, and the
        # default momentum (0.99) leaves validation-time statistics far from the data.
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(head.dropout)(x)
    x = keras.layers.Dense(head.dense_units, activation="relu")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


def build_head(head: FullHead, features: int, classes: int) -> keras.Model:
    """The study's "Full" head on pooled backbone features.

    Args:
        head: layer sizes, L2 factor and dropout.
        features: width of the pooled features.
        classes: number of families.

    Returns:
        An uncompiled model mapping features to probabilities.
    """
    inputs = keras.Input((features,), name="features")
    x = inputs
    for units in head.dense_units:
        x = keras.layers.Dense(units, activation="gelu",
                               kernel_regularizer=keras.regularizers.L2(head.l2))(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Dropout(head.dropout)(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="head")


def build_optimizer(training: TrainingParams) -> keras.optimizers.Optimizer:
    """The optimizer named in the training settings."""
    kinds = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
             "rmsprop": keras.optimizers.RMSprop}
    # Keras treats weight_decay=None as "no decay"; AdamW needs a number.
    decay = training.weight_decay or None
    if training.optimizer == "adamw":
        decay = training.weight_decay
    return kinds[training.optimizer](training.learning_rate, weight_decay=decay)
