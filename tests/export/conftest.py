"""A small ConvNeXt exported the way the pipeline exports ConvNeXtBase, for the export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MINI_SIZE, MINI_CLASSES = 32, 5


@pytest.fixture(scope="session")
def mini_convnext_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ConvNeXt with one block per stage and 8-64 channels, through `convert_to_onnx`.

    Same op kinds as the shipped ConvNeXtBase export (uint8 input and its Cast, the NHWC to
    NCHW Transpose, depthwise Conv, LayerNorm as ReduceMean arithmetic, Dense on 4-D tensors
    as tf2onnx's Tensordot shape arithmetic, GELU via Erf, Softmax), a few hundred kB, and
    converted in seconds instead of ConvNeXtTiny's minute.
    """
    import keras
    from keras.src.applications import convnext as keras_convnext

    from rarespecies.export.convert import convert_to_onnx, inference_model
    from rarespecies.modeling.backbones import to_depthwise

    keras.utils.set_random_seed(7)
    backbone = to_depthwise(keras_convnext.ConvNeXt(
        depths=[1, 1, 1, 1], projection_dims=[8, 16, 32, 64], include_top=False, pooling="avg",
        input_shape=(MINI_SIZE, MINI_SIZE, 3), weights=None, name="mini_convnext"))
    head = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="gelu"),
                             keras.layers.Dense(MINI_CLASSES, activation="softmax")])
    path = tmp_path_factory.mktemp("mini_convnext") / "model.onnx"
    return convert_to_onnx(inference_model(backbone, head, MINI_SIZE), path, 17,
                           {"labels": '["a", "b", "c", "d", "e"]'})


@pytest.fixture(scope="session")
def mini_pixels() -> np.ndarray:
    """Twelve random uint8 images at the mini model's size."""
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (12, MINI_SIZE, MINI_SIZE, 3), dtype=np.uint8)
