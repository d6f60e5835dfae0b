"""The world's segmentation splits written to disk in the VOC 2012 layout (under VOCdevkit/World), so the project's
own readers, trainer and evaluator use them unchanged (the built-in dataset file `world.yaml`)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..config.dataset_file import load_dataset
from ..visualize import palette
from .scenes import render_scene, scene_rng


def write_split(root: Path, split: str, count: int, seed: int, size: int) -> None:
    """Write `count` scenes of `split` under root/VOCdevkit/World (JPEG images, palette PNG labels, id list)."""
    base = root / load_dataset("world").folder
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    colours = [0, 0, 0] + palette(20).flatten().tolist()  # index 0 = background (black), c + 1 = class c
    names = []
    for i in range(count):
        scene = render_scene(scene_rng(seed, split, i), size)
        name = f"{split}_{i:05d}"
        Image.fromarray(scene.image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
        label = Image.fromarray(scene.label, mode="P")
        label.putpalette(colours)
        label.save(base / "SegmentationClass" / f"{name}.png")
        names.append(name)
    (base / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def write_dataset(root: Path, seed: int, size: int, train_count: int, val_count: int) -> None:
    write_split(root, "train", train_count, seed, size)
    write_split(root, "val", val_count, seed, size)
