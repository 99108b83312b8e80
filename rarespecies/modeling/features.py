"""A frozen backbone runs once (features@<backbone>); its features are cached.

Every head on that backbone then trains on them in seconds, and a head-parameter change never
reruns the backbone. The backbone's weights are saved beside the features, so export uses
exactly the network that produced them (also when `weights: null` draws them at random).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rarespecies.config.params import BackboneParams
from rarespecies.config.paths import BACKBONE_WEIGHTS, SPLITS, split_file
from rarespecies.core.files import atomic_path
from rarespecies.core.progress import bar
from rarespecies.modeling.datasets import load_split
from rarespecies.modeling.models import build_backbone_model, calibrate_random_backbone


def load_backbone(params: BackboneParams, weights_file: Path | None = None):
    """Build the frozen backbone (preprocessing inside, ConvNeXt rewritten depthwise).

    Args:
        params: backbone settings (architecture, input size, weights, pooling, seed).
        weights_file: a `backbone.weights.h5` saved by this stage; overrides `params.weights`.

    Returns:
        A Keras model mapping float RGB pixels (0..255) to features.
    """
    import keras

    keras.utils.set_random_seed(params.seed)
    if weights_file is not None:
        params = params.model_copy(update={"weights": None})
    backbone = build_backbone_model(params)
    if weights_file is not None:
        backbone.load_weights(weights_file)
    return backbone


def extract(backbone, images: np.ndarray, out: np.ndarray, batch_size: int,
            desc: str = "features", progress: bool = True) -> np.ndarray:
    """Features of uint8 images, computed batch by batch into `out`.

    Args:
        backbone: model from `load_backbone`.
        images: (N, S, S, 3) uint8, possibly memory-mapped.
        out: (N, *backbone output shape) float32, typically a memory map: memory stays flat
            whatever N, also for unpooled feature maps.
        batch_size: images per forward pass.
        desc: progress bar label.
        progress: show a progress bar.

    Returns:
        `out`, filled.
    """
    import tensorflow as tf
    from tqdm import tqdm

    forward = tf.function(lambda x: backbone(tf.cast(x, tf.float32), training=False),
                          reduce_retracing=True)
    # Counted in images, not batches: the last batch is smaller, and images are what a user
    # compares with the split's size.
    with bar(tqdm, desc=desc, total=len(images), unit="img", enabled=progress) as shown:
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start:start + batch_size])
            out[start:start + batch_size] = forward(batch)
            shown.update(len(batch))
    return out


def compute_features(arrays_dir: Path, out_dir: Path, params: BackboneParams) -> dict[str, int]:
    """Write `<split>_x.npy` features, `<split>_y.npy` labels and the backbone's weights.

    With `weights: null`, the backbone's BatchNormalization statistics are first measured on
    the training images (`calibrate_random_backbone`).

    Args:
        arrays_dir: output of the preprocess stage for this model.
        out_dir: output folder.
        params: backbone settings.

    Returns:
        Number of feature vectors per split.
    """
    backbone = load_backbone(params)
    # A random backbone's BatchNormalization statistics are measured on the training images
    # first (saved with its weights below, so export rebuilds the same network).
    calibrate_random_backbone(backbone, params, load_split(arrays_dir, "train")[0])
    counts = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split in SPLITS:
            images, labels = load_split(arrays_dir, split)
            out = np.lib.format.open_memmap(
                split_file(tmp, split, "x"), mode="w+", dtype=np.float32,
                shape=(len(images), *backbone.output_shape[1:]))
            extract(backbone, images, out, params.batch_size, desc=f"features {split}")
            out.flush()
            del out
            np.save(split_file(tmp, split, "y"), labels)
            counts[split] = len(images)
        backbone.save_weights(tmp / BACKBONE_WEIGHTS)
    return counts
