"""The benchmarks as MMSegmentation lays them out on disk (docs/method.md, Datasets), read without mmseg.

    <root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug, ImageSets/Segmentation}
    <root>/VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext}
    <root>/coco_stuff164k/{images, annotations}/{train2017, val2017}   (labels *_labelTrainIds.png)

The miniature world (`cascadeclip.world`) is written in the VOC 2012 layout under <root>/VOCdevkit/World, with
train.txt and val.txt only.

VOC and Context labels have 0 = background: `reduce_zero_label` maps 0 -> 255 (ignored) and v -> v - 1, so the
classes are 0..19 / 0..58 and background is never a class. COCO-Stuff labels are 0..170 already.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils import IGNORE_INDEX, UserError

DATA_ROOT_ENV = "CASCADECLIP_DATA_ROOT"


@dataclass(frozen=True)
class SplitPart:
    """Images listed in `split_file` (or every image of `image_dir` when None), labels in `label_dir`."""

    split_file: str | None
    image_dir: str
    label_dir: str


@dataclass(frozen=True)
class Layout:
    base: str  # folder under the dataset root
    num_classes: int
    reduce_zero_label: bool
    image_suffix: str
    label_suffix: str
    splits: dict[str, tuple[SplitPart, ...]]


LAYOUTS = {
    "voc": Layout(
        base="VOCdevkit/VOC2012",
        num_classes=20,
        reduce_zero_label=True,
        image_suffix=".jpg",
        label_suffix=".png",
        splits={
            # The standard "aug" training set: train.txt over SegmentationClass plus aug.txt over SegmentationClassAug.
            "train": (
                SplitPart("ImageSets/Segmentation/train.txt", "JPEGImages", "SegmentationClass"),
                SplitPart("ImageSets/Segmentation/aug.txt", "JPEGImages", "SegmentationClassAug"),
            ),
            "val": (SplitPart("ImageSets/Segmentation/val.txt", "JPEGImages", "SegmentationClass"),),
        },
    ),
    "context": Layout(
        base="VOCdevkit/VOC2010",
        num_classes=59,
        reduce_zero_label=True,
        image_suffix=".jpg",
        label_suffix=".png",
        splits={
            split: (SplitPart(f"ImageSets/SegmentationContext/{split}.txt", "JPEGImages", "SegmentationClassContext"),)
            for split in ("train", "val")
        },
    ),
    "coco": Layout(
        base="coco_stuff164k",
        num_classes=171,
        reduce_zero_label=False,
        image_suffix=".jpg",
        label_suffix="_labelTrainIds.png",
        splits={
            "train": (SplitPart(None, "images/train2017", "annotations/train2017"),),
            "val": (SplitPart(None, "images/val2017", "annotations/val2017"),),
        },
    ),
}
# The miniature world (`cascadeclip.world`): VOC 2012's folders and label convention, without the aug set, in a
# folder of its own so that a root is never taken for the other dataset.
LAYOUTS["world"] = replace(
    LAYOUTS["voc"],
    base="VOCdevkit/World",
    splits={**LAYOUTS["voc"].splits, "train": LAYOUTS["voc"].splits["train"][:1]},
)


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    label: Path


def data_root(root: str | Path | None = None) -> Path:
    """The dataset root: `root` if given, else $CASCADECLIP_DATA_ROOT, else ./datasets."""
    return Path(root or os.environ.get(DATA_ROOT_ENV) or "datasets").expanduser()


def get_layout(dataset: str) -> Layout:
    if dataset not in LAYOUTS:
        raise UserError(f"unknown dataset {dataset!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[dataset]


def _read_split_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n]


def list_samples(dataset: str, root: str | Path | None, split: str) -> list[Sample]:
    """The (image, label) pairs of a split, in split-file order (COCO: sorted file names).

    Raises UserError when the dataset folder or a split file is missing. Files listed but absent are not checked
    here; reading them raises (see `read_image`, `read_label`), and `cascade-clip check-data` lists them all.
    """
    layout = get_layout(dataset)
    base = data_root(root) / layout.base
    if not base.is_dir():
        raise UserError(
            f"dataset folder {base} not found. Point --data-root (or ${DATA_ROOT_ENV}) at the folder that contains "
            f"{layout.base}, laid out as MMSegmentation prepares it"
        )
    if split not in layout.splits:
        raise UserError(f"{dataset} has no split {split!r}; splits: {', '.join(layout.splits)}")
    samples = []
    for part in layout.splits[split]:
        image_dir, label_dir = base / part.image_dir, base / part.label_dir
        if part.split_file is None:
            if not image_dir.is_dir():
                raise UserError(f"image folder {image_dir} not found")
            names = sorted(p.name[: -len(layout.image_suffix)] for p in image_dir.glob(f"*{layout.image_suffix}"))
        else:
            split_path = base / part.split_file
            if not split_path.is_file():
                raise UserError(f"split file {split_path} not found; it lists the image ids of the {split} split")
            names = _read_split_file(split_path)
        samples += [
            Sample(n, image_dir / f"{n}{layout.image_suffix}", label_dir / f"{n}{layout.label_suffix}") for n in names
        ]
    return samples


_HINTS = {
    # kind: (what to do when the file is missing, what to do when it is unreadable)
    "image": ("it is listed in the split but missing on disk", "re-extract or re-download it"),
    "label": ("every listed image needs its label file", "re-create it with the dataset's converter"),
}


def _file_error(kind: str, path: Path, err: Exception) -> UserError:
    missing, broken = _HINTS[kind]
    if isinstance(err, FileNotFoundError):
        return UserError(f"{kind} {path} not found; {missing}")
    return UserError(f"{kind} {path} cannot be read ({err}); {broken}")


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; raises UserError naming the file if it is missing, unreadable or truncated."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise _file_error("image", path, err) from None


def read_image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header alone (cheap; a truncated body goes unnoticed); UserError as in `read_image`."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, SyntaxError, ValueError) as err:
        raise _file_error("image", path, err) from None


def read_label(path: Path, layout: Layout) -> np.ndarray:
    """(H, W) uint8 class indices in [0, num_classes) or 255, after `reduce_zero_label` for VOC and Context.

    Raises UserError naming the file when it is missing, unreadable, not single-channel, or holds values outside
    the dataset's range.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            label = np.array(image) if mode in ("L", "P", "I", "I;16") else None
    except (OSError, SyntaxError, ValueError) as err:
        raise _file_error("label", path, err) from None
    if label is None:
        raise UserError(f"label {path} has image mode {mode}; labels must be single-channel class ids")
    top = layout.num_classes + (1 if layout.reduce_zero_label else 0)  # VOC/Context: 0 = background, 1..C
    bad = ((label >= top) | (label < 0)) & (label != IGNORE_INDEX)
    if bad.any():
        values = np.unique(label[bad]).tolist()
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        raise UserError(
            f"label {path} holds values [{shown}] outside 0..{top - 1} (and 255 = ignore); was it converted with the "
            "right MMSegmentation script (e.g. *_labelTrainIds.png for COCO-Stuff)?"
        )
    label = label.astype(np.uint8)
    if layout.reduce_zero_label:
        reduced = label - np.uint8(1)  # v -> v - 1, and 0 (background) wraps around to 255 = ignore
        reduced[label == IGNORE_INDEX] = IGNORE_INDEX
        label = reduced
    return label


def check_sizes_match(image_size: tuple[int, int], label: np.ndarray, label_path: Path) -> None:
    """Raise UserError when a label's (H, W) differs from its image's."""
    if tuple(label.shape[:2]) != tuple(image_size):
        raise UserError(
            f"label {label_path} is {label.shape[1]}x{label.shape[0]} but its image is {image_size[1]}x{image_size[0]} "
            "(width x height); the label must have the size of its image"
        )
