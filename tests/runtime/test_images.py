"""Decoding: every image mode becomes RGB, big JPEGs decode downscaled, bad files are refused."""

import numpy as np
import pytest
from PIL import Image

from rarespecies.runtime.images import ImageError, open_rgb, resize_for_model


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


def test_resize_for_model_is_square_uint8():
    array = resize_for_model(Image.new("RGB", (90, 30), (1, 2, 3)), 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    assert tuple(array[5, 5]) == (1, 2, 3)
