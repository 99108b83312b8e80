"""Image decoding and resizing shared by ingest, preprocess and prediction.

Only Pillow and NumPy: `rarespecies predict` imports this module without TensorFlow, so an
image is resized for the exported model exactly as it was for training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Written into the ONNX metadata so downstream tools can reproduce the training input.
RESIZE_METHOD = ("RGB, EXIF-rotated, longest side at most {max_side} px (JPEG draft decode, then "
                 "LANCZOS thumbnail); then PIL.Image.resize(({size}, {size}), BILINEAR), "
                 "aspect ratio not kept")


# File suffixes treated as images when scanning folders (ingest, predict).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """An image cannot be decoded or is out of bounds."""


def open_rgb(path: str | Path, max_side: int,
             max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image as RGB with its longest side at most `max_side`.

    Large JPEGs are decoded downscaled by libjpeg (Pillow's draft mode), which is several times
    faster than a full decode followed by a resize. EXIF orientation is applied.

    Args:
        path: image file.
        max_side: longest side of the returned image.
        max_pixels: larger sources are refused (decompression bombs).

    Returns:
        The RGB image and the source's (width, height).

    Raises:
        ImageError: the file is not a decodable image or is too large.
    """
    try:
        with Image.open(path) as img:
            source_size = img.size
            if source_size[0] * source_size[1] > max_pixels:
                width, height = source_size
                raise ImageError(f"{width}x{height} exceeds max_pixels {max_pixels}")
            if img.format == "JPEG":
                # draft() picks a DCT scale (1/2, 1/4, 1/8) that stays at least this large.
                img.draft("RGB", (max_side, max_side))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"not a decodable image ({error})") from None
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img, source_size


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels are composited on white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        peak = array.max() or 1.0
        return Image.fromarray((array / peak * 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def resize_for_model(img: Image.Image, size: int) -> np.ndarray:
    """Resize an RGB image to the model's square input, as uint8 [size, size, 3].

    Args:
        img: RGB image.
        size: model input side.

    Returns:
        The pixel array.
    """
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
