"""Image decoding and resizing shared by ingest, preprocess and prediction.

Only Pillow and NumPy: `rarespecies predict` imports this module without TensorFlow, so an
image is resized for the exported model exactly as it was for training.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from rarespecies.core.files import UnreadableFile, open_regular

# Written into the ONNX metadata so downstream tools can reproduce the training input.
RESIZE_METHOD = ("RGB, EXIF-rotated, longest side at most {max_side} px (JPEG draft decode, then "
                 "LANCZOS thumbnail); then PIL.Image.resize(({size}, {size}), BILINEAR), "
                 "aspect ratio not kept")


# File suffixes treated as images when scanning folders (ingest, predict).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


# One limit on source pixels, checked on the header before any decoding: ingest takes it from
# params.yaml (ingest.max_pixels, same default) and `rarespecies predict` uses this value. It
# admits every real EOL image (the largest is 5792x8688, 50.3 MP) and keeps a decode within
# about 8 bytes per source pixel (benchmarks/image_memory.py measures it).
MAX_PIXELS = 100_000_000

# Rows converted at a time: conversions that make copies (alpha compositing, 16-bit scaling)
# then cost one RGB copy of the image plus a strip this size, not several full-size copies.
STRIP_PIXELS = 4_000_000

# Pillow's own bomb check reads a module-wide setting; it is set per decode, under this lock.
_PILLOW_LIMIT = threading.Lock()


class ImageError(ValueError):
    """An image cannot be decoded or is out of bounds."""


def open_rgb(source: str | Path | BinaryIO, max_side: int,
             max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image as RGB with its longest side at most `max_side`.

    The size is read from the header and checked before any pixel is decoded. Large JPEGs are
    decoded downscaled by libjpeg (Pillow's draft mode), which is several times faster than a
    full decode followed by a resize. EXIF orientation is applied.

    Args:
        source: image file, or a binary file object open on it.
        max_side: longest side of the returned image.
        max_pixels: larger sources are refused (decompression bombs); also Pillow's own limit
            for this call, so its warning never shows and its error never speaks instead.

    Returns:
        The RGB image and the source's (width, height).

    Raises:
        ImageError: the file is not a readable regular file, not a decodable image, or is
            too large.
    """
    try:
        with ExitStack() as stack:
            handle = (stack.enter_context(open_regular(source))
                      if isinstance(source, str | Path) else source)
            stack.enter_context(_PILLOW_LIMIT)
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # checked just below
            stack.callback(setattr, Image, "MAX_IMAGE_PIXELS", saved)
            img = stack.enter_context(Image.open(handle))
            source_size = img.size
            if source_size[0] * source_size[1] > max_pixels:
                width, height = source_size
                raise ImageError(f"{width}x{height} exceeds max_pixels {max_pixels}")
            # Pillow raises above twice its setting: frames and tiles are held to our limit too.
            Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2
            if img.format == "JPEG":
                # draft() picks a DCT scale (1/2, 1/4, 1/8) that stays at least this large.
                img.draft("RGB", (max_side, max_side))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img)
        # The source is closed (its pixels freed) before the RGB copy is resized.
    except ImageError:
        raise
    except UnreadableFile as error:
        raise ImageError(str(error)) from None
    except Image.DecompressionBombError:
        raise ImageError(f"not a decodable image (a frame or tile exceeds max_pixels "
                         f"{max_pixels})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"not a decodable image ({error})") from None
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb, source_size


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels are composited on white.

    Conversions that need intermediate copies run one strip of rows at a time into the RGB
    result: every step is per pixel, so the pixels are those of a whole-image conversion.
    """
    width, height = img.size
    rows = max(1, STRIP_PIXELS // max(1, width))
    boxes = [(0, top, width, min(height, top + rows)) for top in range(0, height, rows)]
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        def convert(part: Image.Image) -> Image.Image:
            rgba = part.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's getextrema() does not take every 16-bit layout; NumPy does, a strip at a time.
        peak = float(max(np.asarray(img.crop(box)).max() for box in boxes)) or 1.0

        def convert(part: Image.Image) -> Image.Image:
            array = np.asarray(part, dtype=np.float64)
            return Image.fromarray((array / peak * 255).astype(np.uint8)).convert("RGB")
    else:
        return img.convert("RGB")
    rgb = Image.new("RGB", img.size)
    for box in boxes:
        rgb.paste(convert(img.crop(box)), box)
    return rgb


def resize_for_model(img: Image.Image, size: int) -> np.ndarray:
    """Resize an RGB image to the model's square input, as uint8 [size, size, 3].

    Args:
        img: RGB image.
        size: model input side.

    Returns:
        The pixel array.
    """
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
