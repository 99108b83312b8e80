"""Images resized to a backbone's input size, as uint8 arrays (preprocess@<backbone>).

Per split: `<split>_x.npy` (N, S, S, 3) uint8 and `<split>_y.npy` (N,) class indices in the
order of `labels.json`. Arrays are written through a memory map, so memory stays flat
whatever the dataset size, and training can stream them back the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rarespecies.config.paths import SPLITS, split_file
from rarespecies.core.files import atomic_path
from rarespecies.core.progress import bar
from rarespecies.runtime.images import resize_for_model


def preprocess(split_csv: Path, labels: list[str], out_dir: Path, *, size: int,
               progress: bool = True) -> dict[str, int]:
    """Resize every image of every split into `out_dir`.

    Args:
        split_csv: output of the split stage (id, label, split, image_path).
        labels: class names; a label's index is its position here.
        out_dir: folder to write `<split>_x.npy` and `<split>_y.npy` into.
        size: square input side of the model.
        progress: show a progress bar.

    Returns:
        Number of images per split.
    """
    from tqdm import tqdm

    table = pd.read_csv(split_csv, dtype={"id": str})
    index = {label: i for i, label in enumerate(labels)}
    counts = {}
    with atomic_path(out_dir) as tmp, bar(tqdm, total=len(table), desc=f"preprocess {size}px",
                                          unit="img", enabled=progress) as shown:
        tmp.mkdir()
        for split in SPLITS:
            rows = table[table["split"] == split]
            x = np.lib.format.open_memmap(split_file(tmp, split, "x"), mode="w+", dtype=np.uint8,
                                          shape=(len(rows), size, size, 3))
            for i, path in enumerate(rows["image_path"]):
                with Image.open(path) as img:
                    x[i] = resize_for_model(img.convert("RGB"), size)
                shown.update()
            x.flush()
            del x
            np.save(split_file(tmp, split, "y"), rows["label"].map(index).to_numpy(np.int32))
            counts[split] = len(rows)
    return counts
