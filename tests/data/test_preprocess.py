"""Preprocess: every split resized to the model's input, labels in labels.json order."""

import numpy as np
import pandas as pd
from PIL import Image

from rarespecies.data.preprocess import preprocess
from rarespecies.modeling.datasets import load_split


def test_arrays_per_split_with_label_indices(tmp_path):
    rows = []
    for i, (label, split) in enumerate([("b_y", "train"), ("a_x", "train"), ("a_x", "val"),
                                        ("b_y", "test"), ("a_x", "test")]):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (40 + 10 * i, 30), (10 * i, 0, 0)).save(path)
        rows.append({"id": f"id{i}", "label": label, "split": split, "image_path": str(path)})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    counts = preprocess(tmp_path / "split.csv", ["a_x", "b_y"], tmp_path / "out", size=16,
                        progress=False)
    assert counts == {"train": 2, "val": 1, "test": 2}
    x, y = load_split(tmp_path / "out", "train")
    assert x.shape == (2, 16, 16, 3) and x.dtype == np.uint8
    assert y.tolist() == [1, 0]  # b_y, a_x in split.csv order
    test_x, test_y = load_split(tmp_path / "out", "test")
    assert test_y.tolist() == [1, 0] and abs(int(test_x[1, 8, 8, 0]) - 40) <= 1
