"""Preprocessing presets shared by training, evaluation and prediction.

Images are decoded and resized once to uint8 (see grocery.images); the float
conversion and normalisation happen per batch in one fused step. Prediction must
use the preprocessing the model was trained with (swapping the resize method
flipped 3.4% of predictions), so the preset is recorded in every artifact.
"""

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes model input: recorded in artifacts, rebuilt from them."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash-bilinear-antialias"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            resize=d.get("resize", cls.resize),
        )


def normalize(batch: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 (N, 3, H, W) to normalised float32, as (x / 255 - mean) / std in one pass."""
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1) * 255.0
    return (batch.to(torch.float32) - mean) / std


def train_augmentation(input_size: int, white_balance: float = 0.0) -> v2.Compose:
    """Augmentation on uint8 images already resized (to input_size or larger), giving input_size crops.

    Validation photos differ from training ones in framing and light more than
    in content, so crops and colour shifts are generous. ``white_balance`` > 0 also scales each
    colour channel by its own random gain in [1 - w, 1 + w]: the tint of another store's light.
    """
    steps = [
        v2.RandomResizedCrop(input_size, scale=(0.25, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),  # no hue: it alone cost ~8 ms an image here
    ]
    if white_balance > 0:
        steps.append(WhiteBalance(white_balance))
    return v2.Compose(steps)


class WhiteBalance(torch.nn.Module):
    """Each colour channel of a uint8 (3, H, W) image times a random gain in [1 - strength, 1 + strength]."""

    def __init__(self, strength: float):
        super().__init__()
        self.strength = strength

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        gains = 1 + (torch.rand(3, 1, 1) * 2 - 1) * self.strength
        return (image.to(torch.float32) * gains).clamp_(0, 255).to(torch.uint8)
