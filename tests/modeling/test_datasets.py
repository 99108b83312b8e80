"""Input pipelines: every row once per epoch, and a training epoch's order set by the epoch."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _rows(dataset) -> list[list[int]]:
    return [[int(v) for v in x[:, 0]] for x, _ in dataset]


def test_each_epochs_order_depends_on_the_epoch_alone():
    from rarespecies.modeling.datasets import epoch_batches, steps_per_epoch

    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10, dtype=np.int32) % 3
    steps = steps_per_epoch(len(x), 4)
    assert steps == 3
    batches = _rows(epoch_batches(x, y, 4, seed=5, first_epoch=0, epochs=3))
    assert [len(b) for b in batches] == [4, 4, 2] * 3  # no batch crosses an epoch
    epochs = [[row for batch in batches[e * steps:(e + 1) * steps] for row in batch]
              for e in range(3)]
    assert all(sorted(order) == list(range(10)) for order in epochs)
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
    # Starting at epoch 1 (a resumed run) gives epochs 1 and 2 exactly, however many
    # iterators were made before.
    later = epoch_batches(x, y, 4, seed=5, first_epoch=1, epochs=3)
    for _ in range(3):
        iter(later)
    assert _rows(later) == batches[steps:]
    assert _rows(epoch_batches(x, y, 4, seed=6, first_epoch=0, epochs=1)) != batches[:steps]
    labels = [int(v) for _, b in epoch_batches(x, y, 4, seed=5, first_epoch=0, epochs=1)
              for v in b]
    assert labels == [int(y[i]) for i in epochs[0]]  # labels follow their rows


def test_plain_batches_keep_the_split_order():
    from rarespecies.modeling.datasets import batches

    x = np.arange(5, dtype=np.float32).reshape(5, 1)
    assert _rows(batches(x, np.zeros(5, np.int32), 2)) == [[0, 1], [2, 3], [4]]
