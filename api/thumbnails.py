"""Small JPEG previews of result images for the web UI's gallery (Pillow only: the API never imports torch)."""

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from grocery import storage

MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # the workers' too_large limit


class ThumbnailError(Exception):
    pass


def thumbnail_jpeg(path: Path | str, size: int) -> bytes:
    """The image at ``path`` (or an object's URL) fitted in ``size`` x ``size``, upright (EXIF), as JPEG bytes."""
    if storage.is_url(path):
        try:
            source = io.BytesIO(storage.read_bytes(str(path)))
        except storage.StorageError as e:
            raise ThumbnailError(str(e)) from None
    elif not path.is_file():  # a FIFO put in its place would block the open below for ever
        raise ThumbnailError("it is no longer a regular file")
    else:
        source = path
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ThumbnailError(f"{image.width}x{image.height} is too large to preview")
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, far less work
            preview = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as e:
        raise ThumbnailError(f"cannot preview the file: {e}") from None
    preview.thumbnail((size, size))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
