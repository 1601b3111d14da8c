"""Torch datasets over a split index, with an optional decode-once cache.

Decoding and resizing a JPEG costs more than a MobileNet training step on it, so
training decodes each image once per run into a uint8 tensor (379 MiB for the
2,640 training images at 224 px) and augments from there.
"""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset

from grocery import images
from grocery.index import DatasetError, Sample


def decode_all(
    paths: Sequence[Path], size: int, *, threads: int = 2, max_pixels: int = images.DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Decode and resize every image into one uint8 tensor (N, 3, size, size).

    Training data must be clean: a bad file fails the run, naming every bad file.
    """
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    failures = []

    def fill(i: int) -> None:
        try:
            out[i] = images.load_resized(paths[i], size, max_pixels=max_pixels)
        except images.ImageError as e:
            failures.append(e.message)

    # libjpeg and the resize kernel release the GIL, so threads overlap real work.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(fill, range(len(paths))))
    if failures:
        raise DatasetError(f"{len(failures)} unreadable training images: " + "; ".join(failures[:5]))
    return out


class GroceryDataset(Dataset):
    """(uint8 image, label) pairs; decodes from disk per item unless given a cache."""

    def __init__(
        self,
        samples: Sequence[Sample],
        input_size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: torch.Tensor | None = None,
    ):
        if cache is not None and len(cache) != len(samples):
            raise ValueError(f"cache holds {len(cache)} images for {len(samples)} samples")
        self.samples = list(samples)
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.long)
        self.input_size = input_size
        self.transform = transform
        self.cache = cache

    @classmethod
    def cached(cls, samples: Sequence[Sample], input_size: int, transform=None, threads: int = 2) -> "GroceryDataset":
        cache = decode_all([s.path for s in samples], input_size, threads=threads)
        return cls(samples, input_size, transform, cache)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.cache[i] if self.cache is not None else images.load_resized(self.samples[i].path, self.input_size)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])
