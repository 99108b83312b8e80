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

    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return _read(ds.batch(batch_size), x, y)


def epoch_batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int,
                  first_epoch: int, epochs: int):
    """Shuffled training batches of epochs `first_epoch`..`epochs - 1`, in one dataset.

    Each epoch's order is a permutation drawn from `(seed, epoch)` alone, not from how many
    iterators were made before (Keras makes two per epoch from a finite dataset), so a run
    resumed at epoch k sees the batches an uninterrupted run saw. Fit it with
    `steps_per_epoch=steps_per_epoch(len(x), batch_size)`: the batches never cross an epoch.

    Args:
        x: inputs, typically a memory map.
        y: class indices.
        batch_size: rows per batch (an epoch's last batch holds the rest).
        seed: shuffling seed.
        first_epoch: the first epoch to yield (0-based).
        epochs: the epoch to stop before.

    Returns:
        A `tf.data.Dataset` of (inputs, labels) batches.
    """
    import tensorflow as tf

    orders = np.array([np.random.default_rng([seed, epoch]).permutation(len(x))
                       for epoch in range(first_epoch, epochs)], np.int64).reshape(-1, len(x))
    ds = tf.data.Dataset.from_tensor_slices(orders).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
    return _read(ds, x, y)


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Batches in one epoch of `rows` rows."""
    return -(-rows // batch_size)


def _read(indices, x: np.ndarray, y: np.ndarray):
    """Batches of (inputs, labels) read from `x` and `y` at each batch of row indices."""
    import tensorflow as tf

    def fetch(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(x[index]), y[index]

    ds = indices.map(
        lambda i: tf.numpy_function(fetch, [i], (tf.as_dtype(x.dtype), tf.int32)))
    shape = (None, *x.shape[1:])
    ds = ds.map(lambda a, b: (tf.ensure_shape(a, shape), tf.ensure_shape(b, (None,))))
    return ds.prefetch(tf.data.AUTOTUNE)
