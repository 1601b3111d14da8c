"""Image decoding that never crashes a batch: every failure is a typed ImageError.

JPEGs (nearly all photos) take torchvision's libjpeg-turbo decoder, about twice as
fast as PIL; anything else, or a JPEG that decoder rejects, goes through PIL.
Both paths apply EXIF orientation and yield uint8 RGB tensors (3, H, W).
"""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from grocery import storage

# Pillow's own default (about 89 megapixels); configurable per call.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS

ERROR_CODES = (
    "not_found",
    "unreadable",
    "access_denied",  # an object the store's credentials may not read
    "storage_unavailable",  # the object store did not answer
    "empty_file",
    "not_an_image",
    "truncated",
    "corrupt",
    "too_large",
)


class ImageError(Exception):
    """A file that cannot become an image; ``code`` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, or an object's (an s3:// URL)."""
    try:
        data = storage.read_bytes(str(path)) if storage.is_url(path) else Path(path).read_bytes()
    except storage.StorageError as e:
        raise ImageError(e.code, str(e)) from None
    except FileNotFoundError:
        raise ImageError("not_found", f"{path}: no such file") from None
    except OSError as e:
        raise ImageError("unreadable", f"{path}: {e.strerror or e}") from None
    if not data:
        raise ImageError("empty_file", f"{path}: file is empty (0 bytes)")
    return data


def read_many(paths: list[str]) -> list[bytes | ImageError]:
    """Each file's bytes or its ImageError, in order; objects are fetched concurrently (their
    latency, not the bytes, is what a bucket costs)."""

    def read(path: str) -> bytes | ImageError:
        try:
            return read_bytes(path)
        except ImageError as e:
            return e

    urls = [p for p in paths if storage.is_url(p)]
    if not urls:
        return [read(p) for p in paths]
    with storage.fetcher(len(urls)) as pool:
        return list(pool.map(read, paths))


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> torch.Tensor:
    """Decode encoded image bytes to a uint8 RGB tensor (3, H, W)."""
    if not data:
        raise ImageError("empty_file", f"{name}: file is empty (0 bytes)")
    image_format = _check_header(data, max_pixels, name)
    if image_format == "JPEG":
        try:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError:
            pass  # let PIL decide: it decodes some JPEGs libjpeg-turbo refuses, and names the fault
    return _decode_with_pil(data, name)


def load(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    return decode(read_bytes(path), max_pixels=max_pixels, name=str(path))


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Squash to size x size like the workshop's Resize((224, 224)), antialiased, staying uint8."""
    return F.resize(image, [size, size], antialias=True)


def load_resized(path: str | Path, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    return resize(load(path, max_pixels=max_pixels), size)


def decode_resized_on_gpu(
    blobs: list[bytes], size: int, *, names: list[str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[torch.Tensor | ImageError]:
    """Decode and resize on the GPU: upright JPEGs in one nvjpeg call, every other image (and a batch
    nvjpeg refuses) through ``decode`` on the CPU, so the errors and EXIF handling stay those of ``decode``.
    Returns, per blob, a uint8 CUDA tensor (3, size, size) or the ImageError."""
    results: list = [None] * len(blobs)
    on_gpu = []
    for i, (data, name) in enumerate(zip(blobs, names, strict=True)):
        try:
            if _check_header(data, max_pixels, name) == "JPEG" and _exif_orientation(data) == 1:
                on_gpu.append(i)
            else:
                results[i] = resize(decode(data, max_pixels=max_pixels, name=name), size).cuda()
        except ImageError as e:
            results[i] = e
    encoded = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in on_gpu]
    try:
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda") if encoded else []
    except RuntimeError:  # one file nvjpeg cannot read fails the call: decode them one by one instead
        decoded = [None] * len(on_gpu)
    for i, image in zip(on_gpu, decoded, strict=True):
        try:
            image = image if image is not None else decode(blobs[i], max_pixels=max_pixels, name=names[i]).cuda()
            results[i] = resize(image, size)
        except ImageError as e:
            results[i] = e
    return results


def _exif_orientation(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as im:
        return im.getexif().get(0x0112, 1)


def _check_header(data: bytes, max_pixels: int, name: str) -> str:
    """Identify the format and refuse oversized images before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            image_format = im.format
    except UnidentifiedImageError:
        raise ImageError("not_an_image", f"{name}: not a recognised image format") from None
    except Image.DecompressionBombError as e:  # Pillow's own guard, kept: past twice its MAX_IMAGE_PIXELS
        raise ImageError("too_large", f"{name}: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(_error_code(e), f"{name}: unreadable image header ({e})") from None
    if width * height > max_pixels:
        raise ImageError("too_large", f"{name}: {width}x{height} exceeds the pixel limit of {max_pixels}")
    return image_format


def _decode_with_pil(data: bytes, name: str) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            rgb = to_rgb(im)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(_error_code(e), f"{name}: {e}") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def _error_code(error: Exception) -> str:
    # PIL reports a short file as OSError("image file is truncated") or "Truncated File Read".
    return "truncated" if "truncated" in str(error).lower() else "corrupt"


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency is composited on white, as a shop photo background would be."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode.startswith("I;16"):
        # 16-bit greyscale: keep the high byte instead of letting convert() clip at 255.
        im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
    return im.convert("RGB")
