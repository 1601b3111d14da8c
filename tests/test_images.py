"""Every kind of bad or unusual image file has its documented outcome."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from grocery import images


def _jpeg_bytes(size=(64, 48), colour=(200, 30, 30), **save_options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", **save_options)
    return buffer.getvalue()


def _noise_jpeg(size=256) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_jpeg_decodes_to_uint8_rgb(tmp_path):
    image = images.load(_write(tmp_path, "ok.jpg", _jpeg_bytes()))
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    assert abs(int(image[0].float().mean()) - 200) <= 2


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("empty.jpg", b"", "empty_file"),
        ("text.jpg", b"this is not an image at all\n" * 10, "not_an_image"),
        ("truncated.jpg", _noise_jpeg()[:40_000], "truncated"),
        ("cut-in-header.jpg", _noise_jpeg()[:300], "truncated"),
    ],
)
def test_bad_files_raise_typed_errors(tmp_path, name, data, code):
    with pytest.raises(images.ImageError) as error:
        images.load(_write(tmp_path, name, data))
    assert error.value.code == code
    assert name in error.value.message


def test_corrupt_jpeg_body(tmp_path):
    data = bytearray(_jpeg_bytes((128, 128), quality=95))
    data[400:] = b"\x00" * (len(data) - 400)  # header intact, entropy-coded data wiped
    with pytest.raises(images.ImageError) as error:
        images.load(_write(tmp_path, "corrupt.jpg", bytes(data)))
    assert error.value.code in ("corrupt", "truncated")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(images.ImageError) as missing:
        images.load(tmp_path / "nope.jpg")
    assert missing.value.code == "not_found"
    with pytest.raises(images.ImageError) as folder:
        images.load(tmp_path)
    assert folder.value.code == "unreadable"


def test_pixel_limit_is_configurable(tmp_path):
    path = _write(tmp_path, "big.jpg", _jpeg_bytes((300, 200)))
    with pytest.raises(images.ImageError) as error:
        images.load(path, max_pixels=300 * 200 - 1)
    assert error.value.code == "too_large" and "300x200" in error.value.message
    assert images.load(path, max_pixels=300 * 200).shape == (3, 200, 300)


def test_pillow_bomb_guard_kept(tmp_path):
    # A header claiming 30000 x 30000 pixels: refused before any pixel is decoded.
    path = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(path)
    with pytest.raises(images.ImageError) as error:
        images.load(path)
    assert error.value.code == "too_large"


def test_exif_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    path = _write(tmp_path, "rotated.jpg", _jpeg_bytes((64, 32), exif=exif.tobytes()))
    assert images.load(path).shape == (3, 64, 32)
    png = tmp_path / "rotated.png"
    Image.new("RGB", (64, 32)).save(png, exif=exif.tobytes())
    assert images.load(png).shape == (3, 64, 32)


def test_alpha_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "alpha.png")
    image = images.load(tmp_path / "alpha.png")
    assert image[:, 4, 4].tolist() == [255, 255, 255]
    assert image[:, 0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    image = Image.fromarray(np.full((10, 12), 128, dtype=np.uint8)).convert(mode if mode != "I;16" else "I")
    if mode == "I;16":
        image = Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16))
    suffix = ".jpg" if mode == "CMYK" else ".png"
    if mode == "LA":
        suffix = ".png"
    image.save(tmp_path / f"img{suffix}")
    decoded = images.load(tmp_path / f"img{suffix}")
    assert decoded.shape == (3, 10, 12) and decoded.dtype == torch.uint8


def test_resize_squashes_to_square():
    image = torch.randint(0, 256, (3, 40, 90), dtype=torch.uint8)
    assert images.resize(image, 32).shape == (3, 32, 32)
