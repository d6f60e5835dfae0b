"""Test-time image preprocessing: short side to exactly 512, long side uncapped, ImageNet statistics (docs/method.md,
Test-time preprocessing).

The reference normalises with ImageNet's mean and std, not CLIP's; its checkpoints expect that
(docs/authors-code.md#imagenet-normalisation-statistics).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, on the 0..255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) scaled so that the short side is `short_side`, each side rounded half up as mmcv does."""
    scale = short_side / min(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float RGB on 0..255 -> ImageNet-normalised."""
    mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (images - mean) / std


def resize_uint8(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, *size) float on 0..255, bilinear (half-pixel centres), rounded like an 8-bit resize."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return resized.round().clamp(0, 255)


def test_image_tensor(image: Image.Image | np.ndarray, short_side: int = 512) -> torch.Tensor:
    """An RGB image -> (1, 3, H', W') normalised tensor with its short side resized to `short_side`."""
    array = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    size = short_side_size(tensor.shape[1], tensor.shape[2], short_side)
    return normalize(resize_uint8(tensor, size))[None]
