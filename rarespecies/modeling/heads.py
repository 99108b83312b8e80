"""The study's heads, one builder per `head.type` of params.yaml.

A head maps the backbone's output to family probabilities: a model named "head" whose last
layer is the softmax "probabilities". Each builder returns the tensor the softmax reads.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from rarespecies.config.params import CnnHead, FlattenHead, FullHead, PoolHead

HEAD = "head"  # the nested model's name, which export looks for in an end-to-end model
Head = CnnHead | PoolHead | FlattenHead | FullHead


def cnn_head(head: CnnHead, x):
    """The custom CNN: a conv stack on rescaled pixels, dropout, one dense ReLU layer."""
    for i, width in enumerate(head.filters):
        # The first block strides to keep the cost per image low at 224 px on CPU.
        x = keras.layers.Conv2D(width, 3, strides=2 if i == 0 else 1, padding="same",
                                use_bias=False)(x)
        # A fast-moving average: a few hundred images give few steps per epoch, and the
        # default momentum (0.99) leaves validation-time statistics far from the data.
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = _dropout(x, head.dropout)
    return keras.layers.Dense(head.dense_units, activation="relu")(x)


def gap_head(head: PoolHead, x):
    """Global average pooling (unless the features are pooled already), then dropout:
    ConvNeXt "Mini" (no dropout) and DenseNet121."""
    return _dropout(_pooled(x), head.dropout)


def flatten_head(head: FlattenHead, x):
    """The feature map flattened, then dropout: the study's InceptionResNetV2 head."""
    return _dropout(keras.layers.Flatten()(x), head.dropout)


def full_head(head: FullHead, x):
    """The study's ConvNeXtFull head: [Dense gelu + L2, BatchNorm, Dropout] per width."""
    x = _pooled(x)
    for units in head.dense_units:
        x = keras.layers.Dense(units, activation="gelu",
                               kernel_regularizer=keras.regularizers.L2(head.l2))(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Dropout(head.dropout)(x)
    return x


BUILDERS: dict[str, Callable] = {"cnn": cnn_head, "gap": gap_head, "flatten": flatten_head,
                                 "full": full_head}


def build_head(head: Head, input_shape: tuple[int, ...], classes: int) -> keras.Model:
    """The trainable part on top of the backbone's output.

    Args:
        head: the head's settings; its `type` picks the builder.
        input_shape: the backbone's output shape without the batch axis: (channels,) for
            pooled features, (h, w, channels) for a feature map or rescaled pixels.
        classes: number of families.

    Returns:
        An uncompiled model named "head" ending in a softmax named "probabilities".
    """
    inputs = keras.Input(tuple(input_shape), name="features")
    x = BUILDERS[head.type](head, inputs)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=HEAD)


def _pooled(x):
    return keras.layers.GlobalAveragePooling2D()(x) if len(x.shape) == 4 else x


def _dropout(x, rate: float):
    return keras.layers.Dropout(rate)(x) if rate else x
