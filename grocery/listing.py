"""Finding the images of a bulk job: a streaming, repeatable walk that never leaves its folder.

Torch-free, so the listing can run anywhere without loading a model.
"""

import fnmatch
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def name_matcher(pattern: str | None):
    """A test on file names: the glob ``pattern`` (case-insensitive), or by default the image extensions."""
    if pattern is None:
        return lambda name: os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    regex = re.compile(fnmatch.translate(pattern.lower()))
    return lambda name: regex.match(name.lower()) is not None


def walk_files(root: str | Path, *, recursive: bool = True, pattern: str | None = None) -> Iterator[str]:
    """Matching files under ``root``, one at a time: a folder's files in name order, then its
    subfolders depth-first. Symlinked folders are not entered (no cycles, no escapes); symlinked
    files are listed, and prediction refuses those that resolve outside ``root``."""
    matches = name_matcher(pattern)
    folders = [str(root)]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            continue  # a folder that vanished or cannot be read holds no files we could classify
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
            elif matches(entry.name):
                yield entry.path
        if recursive:
            folders.extend(reversed(subfolders))


def chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def inside(path: str | Path, roots: Iterable[str | Path]) -> bool:
    """Whether the real path (symlinks and '..' resolved) lies inside one of ``roots``."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)
