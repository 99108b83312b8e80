"""Decoding: every image mode becomes RGB, big JPEGs decode downscaled, bad files are refused,
one limit on pixels is checked on the header before decoding and governs Pillow's own."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps

from rarespecies.config.params import IngestParams
from rarespecies.runtime import images
from rarespecies.runtime.images import MAX_PIXELS, ImageError, open_rgb, resize_for_model

from conftest import ROOT


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"img.{'png' if mode in ('I;16', 'LA', 'RGBA', 'P') else 'jpg'}"
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8))
    image = base.convert("I;16") if mode == "I;16" else base.convert(mode)
    image.save(path)
    rgb, size = open_rgb(path, max_side=512, max_pixels=10**8)
    assert rgb.mode == "RGB" and size == (60, 40) and rgb.size == (60, 40)


def test_large_jpeg_is_decoded_downscaled(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(path)
    rgb, size = open_rgb(path, max_side=256, max_pixels=10**8)
    assert size == (4000, 3000)
    assert max(rgb.size) == 256 and rgb.size == (256, 192)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.new("RGB", (80, 40)).save(path, exif=exif)
    rgb, _ = open_rgb(path, max_side=512, max_pixels=10**8)
    assert rgb.size == (40, 80)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"0" * 50])
def test_undecodable_files_raise_image_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="not a decodable image"):
        open_rgb(path, max_side=512, max_pixels=10**8)


def test_truncated_jpeg_is_refused(tmp_path):
    path = tmp_path / "cut.jpg"
    noise = np.random.default_rng(1).integers(0, 255, (300, 300, 3), np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageError):
        open_rgb(path, max_side=512, max_pixels=10**8)


def test_pixel_bomb_is_refused(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(ImageError, match="exceeds max_pixels"):
        open_rgb(path, max_side=512, max_pixels=1_000_000)


def png_header(path, width, height, bit_depth=8, colour_type=0):
    """A PNG that declares a size and holds no pixels: enough for a header check."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)) + chunk(
        b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height", "bit_depth", "colour_type"), [
    (12500, 12500, 16, 6),  # the 16-bit RGBA: above Pillow's warning threshold
    (15000, 15000, 8, 0),  # above twice it, where Pillow raises in its own words
])
def test_a_bomb_is_refused_from_its_header_in_our_words(tmp_path, recwarn, width, height,
                                                        bit_depth, colour_type):
    path = png_header(tmp_path / "bomb.png", width, height, bit_depth, colour_type)
    with pytest.raises(ImageError) as refused:
        open_rgb(path, 512, MAX_PIXELS)
    assert str(refused.value) == f"{width}x{height} exceeds max_pixels {MAX_PIXELS}"
    assert not recwarn.list  # no DecompressionBombWarning reaches the user


def test_our_limit_governs_pillows_for_the_call_only(tmp_path, monkeypatch, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # Pillow's, far below ours
    path = tmp_path / "wide.png"
    Image.new("RGBA", (600, 400), (10, 20, 30, 128)).save(path)  # 240,000 pixels
    rgb, size = open_rgb(path, 64, max_pixels=240_000)  # exactly at the limit: admitted
    assert size == (600, 400) and rgb.size == (64, 43)
    with pytest.raises(ImageError, match=r"^600x400 exceeds max_pixels 239999$"):
        open_rgb(path, 64, max_pixels=239_999)
    assert not recwarn.list
    assert Image.MAX_IMAGE_PIXELS == 50_000  # restored for every other caller


def test_the_default_limit_is_the_params_default():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["ingest"]["max_pixels"] == IngestParams().max_pixels == MAX_PIXELS
    assert MAX_PIXELS >= 5792 * 8688  # the largest real EOL photo


def whole_image_rgb(img):
    """The conversion as it was, on the whole image at once (several full-size copies)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        return Image.fromarray((array / (array.max() or 1.0) * 255).astype(np.uint8)).convert(
            "RGB")
    return img.convert("RGB")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P transparency", "I;16", "I;16B", "I", "RGB",
                                  "JPEG rotated"])
def test_conversion_in_strips_gives_the_pixels_of_a_whole_image_conversion(
        tmp_path, monkeypatch, mode):
    monkeypatch.setattr(images, "STRIP_PIXELS", 700)  # many strips, a partial last one
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 255, (45, 70, 4), np.uint8)
    rgba = Image.fromarray(pixels, "RGBA")
    path = tmp_path / {"JPEG rotated": "img.jpg", "I": "img.tif", "I;16B": "img.tif"}.get(
        mode, "img.png")
    if mode == "JPEG rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        rgba.convert("RGB").save(path, quality=90, exif=exif)
    elif mode == "P transparency":
        rgba.convert("RGB").quantize(16).save(path, transparency=3)
    elif mode.startswith("I"):
        dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
        values = rng.integers(0, 5000, (45, 70)).astype(dtype)
        Image.frombytes(mode, (70, 45), values.tobytes()).save(path)
    else:
        rgba.convert(mode).save(path)
    rgb, _ = open_rgb(path, 64)
    with Image.open(path) as img:  # the former decode, step by step
        if img.format == "JPEG":
            img.draft("RGB", (64, 64))
        img.load()
        assert img.mode == mode.split()[0] or img.format == "JPEG"
        expected = whole_image_rgb(ImageOps.exif_transpose(img))
    expected.thumbnail((64, 64), Image.Resampling.LANCZOS)
    assert rgb.tobytes() == expected.tobytes() and rgb.size == expected.size


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    # In a child process, bounded in time: opening a FIFO for reading waits for a writer.
    code = ("import sys\nfrom rarespecies.runtime.images import ImageError, open_rgb\n"
            "try:\n    open_rgb(sys.argv[1], 64)\nexcept ImageError as error:\n    print(error)")
    out = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == "FIFO, not a regular file"


def test_an_unreadable_file_is_refused_with_its_reason(tmp_path, deny_reading):
    path = tmp_path / "locked.jpg"
    Image.new("RGB", (20, 20)).save(path)
    deny_reading(path)
    with pytest.raises(ImageError, match=r"^permission denied$"):
        open_rgb(path, 64)


def test_resize_for_model_is_square_uint8():
    array = resize_for_model(Image.new("RGB", (90, 30), (1, 2, 3)), 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    assert tuple(array[5, 5]) == (1, 2, 3)
