"""The training images INT8 calibration sees: a fixed spread over the train split.

The select stage hands them over for the chosen model; `quantize_backbone@<backbone>` takes
the same ones from its backbone's arrays, so a backbone quantized once is calibrated exactly as
the whole model would be.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_IMAGES = 64  # handed over by select; quantize.calibration_images takes the first


def spread(count: int, wanted: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Indices of `wanted` rows evenly spread over `count` (fewer when `count` is smaller).

    Args:
        count: rows in the train split.
        wanted: rows to pick.

    Returns:
        Sorted, distinct indices, the first and last row included.
    """
    return np.unique(np.linspace(0, count - 1, wanted).astype(int))
