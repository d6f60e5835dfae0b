"""Tiny datasets in the real on-disk layouts, generated for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _scene(rng: np.random.Generator, size: int, classes: list[int], colors: np.ndarray):
    """An image with one rectangle per class in `classes` (class-specific colour) on a noisy grey background,
    and its label map (0 = background, class c stored as c + 1 as VOC does)."""
    image = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
    label = np.zeros((size, size), dtype=np.uint8)
    for c in classes:
        h, w = rng.integers(size // 4, size // 2, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        image[y : y + h, x : x + w] = colors[c]
        label[y : y + h, x : x + w] = c + 1
    label[rng.random((size, size)) < 0.01] = 255  # a few boundary pixels, as in VOC
    return image, label


def make_voc(root: Path, num_train: int = 8, num_aug: int = 4, num_val: int = 4, size: int = 96, seed: int = 0,
             classes_per_image: int = 3) -> Path:  # fmt: skip
    """VOCdevkit/VOC2012 with train.txt over SegmentationClass, aug.txt over SegmentationClassAug, val.txt."""
    rng = np.random.default_rng(seed)
    colors = np.random.default_rng(1234).integers(0, 256, (20, 3)).astype(np.uint8)
    base = Path(root) / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for split, count, label_dir in (("train", num_train, "SegmentationClass"), ("aug", num_aug, "SegmentationClassAug"),
                                    ("val", num_val, "SegmentationClass")):  # fmt: skip
        names = [f"2007_{split}{i:04d}" for i in range(count)]
        for name in names:
            image, label = _scene(rng, size, list(rng.choice(20, classes_per_image, replace=False)), colors)
            Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(base / label_dir / f"{name}.png")
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    return Path(root)
