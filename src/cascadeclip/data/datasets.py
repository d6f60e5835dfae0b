"""Reading a dataset from disk as its dataset file describes it (`config.dataset_file`): the samples of a split,
images, and labels as class indices (docs/method.md, Datasets).

The built-in files describe the benchmarks as MMSegmentation (and, for ADE20K-847 and Pascal Context-459, the
open-vocabulary methods' detectron2-style scripts) prepare them:

    <root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug, ImageSets/Segmentation}
    <root>/VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext}
    <root>/coco_stuff164k/{images, annotations}/{train2017, val2017}   (labels *_labelTrainIds.png)
    <root>/ADEChallengeData2016/{images, annotations}/{training, validation}
    <root>/ADE20K_2021_17_01/{images_detectron2, annotations_detectron2}/validation   (16-bit TIFF labels)
    <root>/VOCdevkit/VOC2010/annotations_detectron2/pc459_val   (16-bit TIFF labels; ids in pascalcontext_val.txt)
    <root>/cityscapes/{leftImg8bit, gtFine}/{train, val}/<city>   (labels *_gtFine_labelTrainIds.png)

The miniature world (`cascadeclip.world`) is written in the VOC 2012 layout under <root>/VOCdevkit/World, with
train.txt and val.txt only.

A label becomes class indices through one lookup table per dataset: VOC and Context (and ADE20K-150) have
0 = background, which `reduce_zero_label` maps to 255 (ignored) while v -> v - 1, so background is never a class;
COCO-Stuff's labels are 0..170 already. Classes are uint8 with 255 = ignored; above 255 classes, uint16 with 65535.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config.dataset_file import DatasetSpec, SplitSource, load_dataset
from ..utils import UserError, ignore_index_for

DATA_ROOT_ENV = "CASCADECLIP_DATA_ROOT"
# Single-channel image modes as Pillow opens 8-bit (L, P) and 16-bit (I;16*, or I for some PNGs) label files
LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
LABEL_VALUES = 1 << 16  # labels are 8-bit or 16-bit images


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    label: Path


def data_root(root: str | Path | None = None) -> Path:
    """The dataset root: `root` if given, else $CASCADECLIP_DATA_ROOT, else ./datasets."""
    return Path(root or os.environ.get(DATA_ROOT_ENV) or "datasets").expanduser()


def dataset_folder(dataset: DatasetSpec, root: str | Path | None) -> Path:
    return data_root(root) / dataset.folder


def _read_split_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n]


def list_samples(dataset: str | DatasetSpec, root: str | Path | None, split: str) -> list[Sample]:
    """The (image, label) pairs of a split, in split-file order (without a split file: sorted ids).

    `dataset` is a built-in name, the path of a dataset file, or a loaded one. Raises UserError when the dataset
    folder, a split file or an image folder is missing. Files listed but absent are not checked here; reading them
    raises (see `read_image`, `read_label`), and `cascade-clip check-data` lists them all.
    """
    spec = load_dataset(dataset)
    base = dataset_folder(spec, root)
    if not base.is_dir():
        raise UserError(
            f"dataset folder {base} not found. Point --data-root (or ${DATA_ROOT_ENV}) at the folder that contains "
            f"{spec.folder}, laid out as the {spec.name} dataset file describes"
        )
    if split not in spec.splits:
        raise UserError(f"{spec.name} has no split {split!r}; splits: {', '.join(spec.splits)}")
    samples = []
    for source in spec.sources(split):
        image_dir, label_dir = base / source.images, base / source.labels
        names = _source_ids(spec, base, source, split)
        samples += [
            Sample(n, image_dir / f"{n}{spec.image_suffix}", label_dir / f"{n}{spec.label_suffix}") for n in names
        ]
    return samples


def _source_ids(spec: DatasetSpec, base: Path, source: SplitSource, split: str) -> list[str]:
    if source.split_file:
        split_path = base / source.split_file
        if not split_path.is_file():
            raise UserError(f"split file {split_path} not found; it lists the image ids of the {split} split")
        return _read_split_file(split_path)
    image_dir = base / source.images
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} not found")
    return files_with_suffix(image_dir, spec.image_suffix, source.recursive)


def files_with_suffix(folder: Path, suffix: str, recursive: bool) -> list[str]:
    """Sorted ids of the files `<id><suffix>` in `folder` (with `recursive`, ids of sub-folders' files include
    their sub-folder: "frankfurt/frankfurt_000000_000294")."""
    files = folder.rglob(f"*{suffix}") if recursive else folder.glob(f"*{suffix}")
    return sorted(p.relative_to(folder).as_posix()[: -len(suffix)] for p in files if p.is_file())


def split_present(dataset: DatasetSpec, root: str | Path | None, split: str) -> bool:
    """Whether the split is on disk under `root`, at least in part: a split file or a label folder of it exists.

    (A dataset folder alone says little: VOCdevkit/VOC2010 holds Pascal Context-59 and -459, prepared separately.)
    """
    base = dataset_folder(dataset, root)
    return any(
        (source.split_file and (base / source.split_file).is_file()) or (base / source.labels).is_dir()
        for source in dataset.sources(split)
    )


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


def read_label(path: Path, dataset: DatasetSpec) -> np.ndarray:
    """(H, W) class indices in [0, num_classes) or the ignore index (`utils.ignore_index_for`): uint8 with 255, or
    uint16 with 65535 above 255 classes. The file is an 8-bit or 16-bit single-channel PNG or TIFF whose values
    the dataset file's label settings (`ignore_value`, `reduce_zero_label`, `label_values`) turn into classes.

    Raises UserError naming the file when it is missing, unreadable, not single-channel, or holds values that are
    not a class and not `ignore_value`.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            label = np.array(image) if mode in LABEL_MODES else None
    except (OSError, SyntaxError, ValueError) as err:
        raise _file_error("label", path, err) from None
    if label is None:
        raise UserError(f"label {path} has image mode {mode}; labels must be single-channel class ids")
    table = label_table(dataset)
    inside = (label >= 0) & (label < LABEL_VALUES)  # 32-bit ("I") images may hold anything
    classes = table[np.where(inside, label, 0)]
    bad = (classes < 0) | ~inside
    if bad.any():
        values = np.unique(label[bad]).tolist()
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        raise UserError(f"label {path} holds values [{shown}] {_allowed_values(dataset)}")
    return classes.astype(np.uint8 if ignore_index_for(dataset.num_classes) <= 255 else np.uint16)


def _allowed_values(dataset: DatasetSpec) -> str:
    """What a label may hold, and where that is set, for the message about a label with other values."""
    ignore = f"(and {dataset.ignore_value} = ignore)"
    where = f"check how the labels were made, and the label settings of the {dataset.name} dataset file"
    if dataset.label_values:
        return f"that label_values does not list {ignore}; {where}"
    top = dataset.num_classes + (1 if dataset.reduce_zero_label else 0)
    return (
        f"outside 0..{top - 1} {ignore}; was it converted with the right script (e.g. *_labelTrainIds.png for "
        f"COCO-Stuff)? Otherwise {where}"
    )


def label_table(dataset: DatasetSpec) -> np.ndarray:
    """(65536,) int32: the class index (or the ignore index) of each stored label value, -1 where it is not allowed."""
    values = tuple((v, dataset.classes.names.index(name)) for v, name in sorted(dataset.label_values.items()))
    return _label_table(
        dataset.num_classes, dataset.ignore_value, dataset.reduce_zero_label, values, dataset.unlisted_values
    )


@functools.lru_cache(maxsize=16)
def _label_table(
    num_classes: int, ignore_value: int, reduce_zero_label: bool, values: tuple[tuple[int, int], ...], unlisted: str
) -> np.ndarray:
    ignore = ignore_index_for(num_classes)
    table = np.full(LABEL_VALUES, ignore if values and unlisted == "ignore" else -1, dtype=np.int32)
    if values:
        for value, index in values:
            table[value] = index
    elif reduce_zero_label:  # 0 = background, not scored; value v is class v - 1
        table[0] = ignore
        table[1 : num_classes + 1] = np.arange(num_classes)
    else:
        table[:num_classes] = np.arange(num_classes)
    table[ignore_value] = ignore
    table.setflags(write=False)
    return table


def check_sizes_match(image_size: tuple[int, int], label: np.ndarray, label_path: Path) -> None:
    """Raise UserError when a label's (H, W) differs from its image's."""
    if tuple(label.shape[:2]) != tuple(image_size):
        raise UserError(
            f"label {label_path} is {label.shape[1]}x{label.shape[0]} but its image is {image_size[1]}x{image_size[0]} "
            "(width x height); the label must have the size of its image"
        )
