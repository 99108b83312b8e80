"""How a split's inputs (image arrays or cached features) stream from disk into Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rarespecies.config.paths import split_file


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (memory-mapped) and class indices of one split.

    Args:
        folder: a preprocess or features output folder.
        split: "train", "val" or "test".

    Returns:
        (x, y): x is (N, ...) and stays on disk until indexed; y is (N,) int32.
    """
    return (np.load(split_file(folder, split, "x"), mmap_mode="r"),
            np.load(split_file(folder, split, "y")))


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
            seed: int = 0):
    """A tf.data pipeline that reads only the rows of each batch from `x`.

    Args:
        x: inputs, typically a memory map.
        y: class indices.
        batch_size: rows per batch.
        shuffle: reshuffle the order every epoch (seeded).
        seed: shuffling seed.

    Returns:
        A `tf.data.Dataset` of (inputs, labels) batches.
    """
    import tensorflow as tf

    def fetch(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(x[index]), y[index]

    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda i: tf.numpy_function(fetch, [i], (tf.as_dtype(x.dtype), tf.int32)))
    shape = (None, *x.shape[1:])
    ds = ds.map(lambda a, b: (tf.ensure_shape(a, shape), tf.ensure_shape(b, (None,))))
    return ds.prefetch(tf.data.AUTOTUNE)
