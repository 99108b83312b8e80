"""Stage `features@<model>`: the frozen backbone runs once; its pooled features are cached.

Heads then train on these vectors in seconds, and a head-parameter change never reruns the
backbone. The backbone's weights are saved beside the features, so evaluation and export use
exactly the network that produced them (also when `weights: null` draws them at random).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.data import load_split
from stages.io import atomic_path
from stages.params import BackboneParams
from stages.split import SPLITS

BACKBONE_WEIGHTS = "backbone.weights.h5"


def load_backbone(params: BackboneParams, input_size: int, weights_file: Path | None = None):
    """Build the frozen, depthwise-rewritten backbone.

    Args:
        params: backbone settings (name, weights, seed).
        input_size: square input side.
        weights_file: a `backbone.weights.h5` saved by this stage; overrides `params.weights`.

    Returns:
        A Keras model mapping float RGB pixels (0..255) to pooled features.
    """
    import keras

    from stages.backbones import build_backbone

    keras.utils.set_random_seed(params.seed)
    weights = None if weights_file is not None else params.weights
    backbone = build_backbone(params.name, input_size, weights)
    if weights_file is not None:
        backbone.load_weights(weights_file)
    return backbone


def extract(backbone, images: np.ndarray, batch_size: int, desc: str = "features",
            progress: bool = True) -> np.ndarray:
    """Pooled features of uint8 images, computed batch by batch.

    Args:
        backbone: model from `load_backbone`.
        images: (N, S, S, 3) uint8, possibly memory-mapped.
        batch_size: images per forward pass.
        desc: progress bar label.
        progress: show a progress bar.

    Returns:
        (N, F) float32 features.
    """
    import tensorflow as tf
    from tqdm import tqdm

    forward = tf.function(lambda x: backbone(tf.cast(x, tf.float32), training=False),
                          reduce_retracing=True)
    width = backbone.output_shape[-1]
    out = np.zeros((len(images), width), dtype=np.float32)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch",
                      disable=not progress):
        out[start:start + batch_size] = forward(np.asarray(images[start:start + batch_size]))
    return out


def compute_features(arrays_dir: Path, out_dir: Path, params: BackboneParams,
                     input_size: int) -> dict[str, int]:
    """Write `<split>_x.npy` features, `<split>_y.npy` labels and the backbone's weights.

    Args:
        arrays_dir: output of the preprocess stage for this model.
        out_dir: output folder.
        params: backbone settings.
        input_size: square input side.

    Returns:
        Number of feature vectors per split.
    """
    backbone = load_backbone(params, input_size)
    counts = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split in SPLITS:
            images, labels = load_split(arrays_dir, split)
            np.save(tmp / f"{split}_x.npy",
                    extract(backbone, images, params.batch_size, desc=f"features {split}"))
            np.save(tmp / f"{split}_y.npy", labels)
            counts[split] = len(images)
        backbone.save_weights(tmp / BACKBONE_WEIGHTS)
    return counts


def main() -> None:
    """Run the stage with `models.<model>.input_size` and `models.<model>.backbone`."""
    from stages.cli_util import stage_main
    from stages.params import load_params

    def work(model: str) -> str:
        settings = load_params().model(model)
        if settings.backbone is None:
            raise ValueError(f"model '{model}' has no backbone: it trains on images")
        counts = compute_features(Path(f"artifacts/arrays/{model}"),
                                  Path(f"artifacts/features/{model}"), settings.backbone,
                                  settings.input_size)
        return f"{settings.backbone.name} features for {counts}"

    stage_main("features", work, with_model=True)


if __name__ == "__main__":
    main()
