"""The world's segmentation splits written to disk in the VOC 2012 layout (under VOCdevkit/World), so the project's
own readers, trainer and evaluator use them unchanged (the built-in dataset file `world.yaml`).

Three splits: `train` (the segmentor is trained on it), `heldout` (more scenes of the training distribution, drawn
after the training ones from the same random stream and never trained on: the demo tunes its seen-class shift there)
and `val` (what the demo reports)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..config.dataset_file import load_dataset
from ..visualize import palette
from .scenes import render_scene, scene_rng


def write_split(root: Path, split: str, count: int, seed: int, size: int, stream: str = "", first: int = 0) -> None:
    """Write `count` scenes under root/VOCdevkit/World (JPEG images, palette PNG labels) and list them in the split
    file of `split`: scenes `first`, `first` + 1, ... of the random stream `stream` (default: the split's name)."""
    stream = stream or split
    base = root / load_dataset("world").folder
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    colours = [0, 0, 0] + palette(20).flatten().tolist()  # index 0 = background (black), c + 1 = class c
    names = []
    for i in range(first, first + count):
        scene = render_scene(scene_rng(seed, stream, i), size)
        name = f"{stream}_{i:05d}"
        Image.fromarray(scene.image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
        label = Image.fromarray(scene.label, mode="P")
        label.putpalette(colours)
        label.save(base / "SegmentationClass" / f"{name}.png")
        names.append(name)
    (base / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def write_dataset(root: Path, seed: int, size: int, train_count: int, val_count: int, heldout_count: int = 0) -> None:
    write_split(root, "train", train_count, seed, size)
    write_split(root, "heldout", heldout_count, seed, size, stream="train", first=train_count)
    write_split(root, "val", val_count, seed, size)
