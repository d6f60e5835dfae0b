"""A dataset is a small YAML file: where its images and labels are, how label values encode classes, the class
names, which classes are unseen, and how to prompt for them.

The built-in datasets are such files, in `cascadeclip/config/datasets/` (`voc.yaml` is a commented example; the
README's "Train on your own data" writes one from scratch). Wherever a built-in name is accepted (the
configuration's `classes.dataset`, `cascade-clip check-data --dataset`), the path of such a file is too. A file is
checked in full when it is read, before any work starts: an error names the file and the key, and says what was
expected.

    folder: VOCdevkit/VOC2012               # under the data root; the paths below are under this folder
    image_suffix: .jpg
    label_suffix: .png
    splits:                                 # split -> one source, or a list of sources read one after the other
      val: {split_file: ImageSets/Segmentation/val.txt, images: JPEGImages, labels: SegmentationClass}
    reduce_zero_label: true                 # label 0 (background) is not scored; value v is class v - 1
    ignore_value: 255                       # label value of pixels that are not scored
    classes:
      names_file: voc20.txt                 # one name per line, in label order, beside this file (or `names: [...]`)
      unseen: [pottedplant, sheep, sofa, train, tvmonitor]
    prompts: {templates: single, embeddings: voc12_single.npy}

A source without `split_file` takes every image of its `images` folder (`recursive: true`: of its sub-folders too,
the sample id keeping its sub-folder, as Cityscapes' city folders). Label values are class indices, unless
`reduce_zero_label` (0 not scored, v -> v - 1) or `label_values` (stored value -> class name, for ids that are not
0..C-1) says otherwise. Labels are 8-bit or 16-bit PNG or TIFF files; above 255 classes they must be 16-bit, with
65535 as `ignore_value`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..utils import UserError
from .schema import ClassesConfig, Config, describe_yaml_error, merge

BUILTIN_DIR = Path(__file__).with_name("datasets")
# In the order `cascade-clip check-data` looks for them: the training benchmarks first.
BUILTIN_DATASETS = ("voc", "context", "coco", "world", "ade150", "ade847", "pc459", "cityscapes", "voc21", "context60")
TEMPLATE_SETS = ("single", "multi")
MAX_LABEL_VALUE = 65535  # labels are 8-bit or 16-bit images


@dataclass(frozen=True)
class SplitSource:
    """Images of a split with their labels: the ids in `split_file`, or every image of `images` when it is empty."""

    images: str = ""  # folder of the images, under the dataset folder
    labels: str = ""  # folder of the labels: label of image <id><image_suffix> is <id><label_suffix>
    split_file: str = ""  # one image id per line
    recursive: bool = False  # without a split file: also the images in sub-folders (id = "<sub-folder>/<name>")


@dataclass(frozen=True)
class ClassesSection:
    names: tuple[str, ...] = ()  # in label order
    names_file: str = ""  # or: one name per line, beside the dataset file
    unseen: tuple[str, ...] = ()  # by name; the others are seen
    background: str = ""  # a class that is evaluated but not queried (see ClassesConfig.background)


@dataclass(frozen=True)
class PromptsSection:
    templates: str | tuple[str, ...] = "multi"  # single | multi | a list of templates with "{}"
    embeddings: str = ""  # precomputed (classes, dim) .npy of the queried classes, used when found


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset file, checked. `splits` maps each split to its sources; `classes.names` is filled from the names
    file; `name` is the built-in name or the file's stem unless the file sets it."""

    folder: str = ""
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    splits: dict[str, Any] = field(default_factory=dict)  # split -> tuple[SplitSource, ...] once checked
    reduce_zero_label: bool = False
    ignore_value: int = 255
    label_values: dict[int, str] = field(default_factory=dict)  # stored value -> class name
    unlisted_values: str = "error"  # with label_values: values it does not list are an error | ignore
    classes: ClassesSection = field(default_factory=ClassesSection)
    prompts: PromptsSection = field(default_factory=PromptsSection)
    published_sizes: dict[str, int] = field(default_factory=dict)  # images in the standard splits (check-data)
    name: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes.names)

    @property
    def unseen_indices(self) -> tuple[int, ...]:
        return tuple(self.classes.names.index(n) for n in self.classes.unseen)

    def sources(self, split: str) -> tuple[SplitSource, ...]:
        return self.splits[split]


class DatasetFileError(UserError):
    def __init__(self, path: Path, message: str):
        super().__init__(f"dataset file {path}: {message}")


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading a dataset file
# ----------------------------------------------------------------------------------------------------------------


def dataset_path(dataset: str | Path) -> Path:
    """The file of a built-in dataset name, or `dataset` as a path; UserError when it is neither."""
    if str(dataset) in BUILTIN_DATASETS:
        return BUILTIN_DIR / f"{dataset}.yaml"
    path = Path(dataset).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"dataset file {path} is a folder; give the path of the dataset's YAML file")
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise UserError(f"dataset file {path} not found")
    raise UserError(
        f"unknown dataset {str(dataset)!r}; known: {', '.join(BUILTIN_DATASETS)}, or the path of a dataset YAML file"
    )


def load_dataset(dataset: str | Path | DatasetSpec) -> DatasetSpec:
    """The checked dataset file of a built-in name or a path (a `DatasetSpec` is returned as it is)."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    path = dataset_path(dataset)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DatasetFileError(path, f"cannot be read as YAML ({describe_yaml_error(err)})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFileError(path, f"cannot be read as YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise DatasetFileError(path, f"must hold a mapping of keys (folder, splits, classes, ...), got {data!r}")
    where = "<dataset>"  # merge's prefix for the keys it names, replaced by the file's name
    try:
        spec = merge(DatasetSpec(), data, where)
    except ValueError as err:
        message = str(err).removeprefix(f"{where}.").removeprefix(f"{where}: ")
        raise DatasetFileError(path, message) from None
    default_name = str(dataset) if str(dataset) in BUILTIN_DATASETS else path.stem
    return _checked(dataclasses.replace(spec, name=spec.name or default_name), path)


def _checked(spec: DatasetSpec, path: Path) -> DatasetSpec:
    def fail(key: str, message: str) -> DatasetFileError:
        return DatasetFileError(path, f"{key}: {message}")

    if not spec.folder:
        raise fail("folder", "missing; give the folder under the data root that holds the images and labels")
    for key in ("image_suffix", "label_suffix"):
        if not getattr(spec, key):
            raise fail(key, "must not be empty (e.g. .jpg, .png, _labelTrainIds.png)")
    splits = _checked_splits(spec.splits, fail)
    names = _class_names(spec.classes, path, fail)
    classes = dataclasses.replace(spec.classes, names=names, names_file="")
    _check_class_choices(classes, fail)
    _check_label_encoding(spec, names, fail)
    _check_templates(spec.prompts.templates, "prompts.templates", fail)
    if not isinstance(spec.published_sizes, dict):
        raise fail("published_sizes", f"expected a mapping of split to image count, got {spec.published_sizes!r}")
    for split, size in spec.published_sizes.items():
        if split not in splits or not isinstance(size, int) or size < 1:
            raise fail(f"published_sizes.{split}", f"expected a positive image count of a split in splits, got {size}")
    return dataclasses.replace(spec, splits=splits, classes=classes)


def _checked_splits(splits: Any, fail) -> dict[str, tuple[SplitSource, ...]]:
    if not isinstance(splits, dict) or not splits:
        raise fail("splits", f"expected a mapping of split names (train, val, ...) to image sources, got {splits!r}")
    checked = {}
    for split, sources in splits.items():
        key = f"splits.{split}"
        entries = [sources] if isinstance(sources, dict) else sources
        if not isinstance(entries, list) or not entries:
            raise fail(key, f"expected a source {{images: ..., labels: ...}} or a list of them, got {sources!r}")
        parts = []
        for i, entry in enumerate(entries):
            where = key if isinstance(sources, dict) else f"{key}[{i}]"
            if not isinstance(entry, dict):
                raise fail(where, f"expected a mapping with images, labels, split_file, recursive; got {entry!r}")
            try:
                part = merge(SplitSource(), entry, where)
            except ValueError as err:
                raise fail(where, str(err).removeprefix(f"{where}.").removeprefix(f"{where}: ")) from None
            for folder in ("images", "labels"):
                if not getattr(part, folder):
                    raise fail(f"{where}.{folder}", "missing; give the folder under the dataset folder")
            if part.recursive and part.split_file:
                raise fail(f"{where}.recursive", "applies to a folder listing only; remove it or the split_file")
            parts.append(part)
        checked[str(split)] = tuple(parts)
    return checked


def _class_names(classes: ClassesSection, path: Path, fail) -> tuple[str, ...]:
    if bool(classes.names) == bool(classes.names_file):
        raise fail("classes", "give the class names either inline (names: [...]) or in a file (names_file: ...)")
    if classes.names:
        names, where = [str(n).strip() for n in classes.names], "classes.names"
    else:
        names_path = path.parent / classes.names_file
        try:
            lines = names_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise fail("classes.names_file", f"cannot read {names_path} ({err})") from None
        names, where = [line.strip() for line in lines], f"classes.names_file ({names_path})"
    for i, name in enumerate(names):
        if not name:
            raise fail(where, f"class {i} (line {i + 1}) is empty; every class needs a name, one per line")
        if names.index(name) != i:
            raise fail(where, f"{name!r} is both class {names.index(name)} and class {i}; names must be unique")
    return tuple(names)


def _check_class_choices(classes: ClassesSection, fail) -> None:
    names = classes.names
    for name in classes.unseen:
        if name not in names:
            raise fail("classes.unseen", _not_a_class(name, names))
    if len(set(classes.unseen)) != len(classes.unseen):
        raise fail("classes.unseen", "lists a class twice")
    if classes.background:
        if classes.background not in names:
            raise fail("classes.background", _not_a_class(classes.background, names))
        if classes.background in classes.unseen:
            raise fail("classes.background", "is queried by no text, so it cannot be unseen; remove it from unseen")
        if len(names) < 2:
            raise fail("classes.background", "needs at least one other class")


def _not_a_class(name: str, names: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{name!r} is not one of the {len(names)} class names{hint}"


def _check_label_encoding(spec: DatasetSpec, names: tuple[str, ...], fail) -> None:
    if not 0 <= spec.ignore_value <= MAX_LABEL_VALUE:
        raise fail("ignore_value", f"expected a label value in 0..{MAX_LABEL_VALUE}, got {spec.ignore_value}")
    if not isinstance(spec.label_values, dict):
        raise fail("label_values", f"expected a mapping of label value to class name, got {spec.label_values!r}")
    if spec.unlisted_values not in ("error", "ignore"):
        raise fail("unlisted_values", f"expected error or ignore, got {spec.unlisted_values!r}")
    if not spec.label_values:
        if spec.unlisted_values != "error":
            raise fail("unlisted_values", "applies to label_values only")
        first = 1 if spec.reduce_zero_label else 0
        last = first + len(names) - 1
        if first <= spec.ignore_value <= last:
            raise fail(
                "ignore_value",
                f"{spec.ignore_value} is also the value of class {names[spec.ignore_value - first]!r} (the "
                f"{len(names)} classes are stored as {first}..{last}); labels of more than 255 classes are 16-bit "
                "with 65535 as ignore_value",
            )
        if last > MAX_LABEL_VALUE:
            raise fail("classes", f"{len(names)} classes do not fit in 16-bit labels")
        return
    if spec.reduce_zero_label:
        raise fail("reduce_zero_label", "cannot be combined with label_values; list the value of every class instead")
    for value, name in spec.label_values.items():
        if not isinstance(value, int) or not 0 <= value <= MAX_LABEL_VALUE:
            raise fail("label_values", f"keys are label values in 0..{MAX_LABEL_VALUE}, got {value!r}")
        if value == spec.ignore_value:
            raise fail(f"label_values.{value}", f"is the ignore_value; a value cannot be both ignored and {name!r}")
        if name not in names:
            raise fail(f"label_values.{value}", _not_a_class(str(name), names))


def _check_templates(templates: str | tuple[str, ...], key: str, fail) -> None:
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise fail(key, f"expected single, multi or a list of templates with {{}}; got {templates!r}")
    elif not templates or any(not isinstance(t, str) or "{}" not in t for t in templates):
        example = '["a photo of a {}."]'
        raise fail(key, f"expected templates with {{}} where the class name goes, e.g. {example}; got {templates!r}")


# ----------------------------------------------------------------------------------------------------------------
# The classes of a configuration, completed from its dataset file
# ----------------------------------------------------------------------------------------------------------------


def resolve_classes(classes: ClassesConfig) -> ClassesConfig:
    """`classes` with every field it leaves empty taken from its dataset file, and all of them checked against it.

    UserError naming the key when the configured names, unseen indices, background or templates do not fit the
    dataset (e.g. 20 names for a dataset of 150 classes).
    """
    spec = load_dataset(classes.dataset)

    def fail(key: str, message: str) -> UserError:
        return UserError(f"classes.{key}: {message} (dataset {classes.dataset})")

    names = tuple(classes.names) or spec.classes.names
    if len(names) != spec.num_classes:
        raise fail("names", f"{len(names)} names, but the dataset has {spec.num_classes} classes")
    unseen = spec.unseen_indices if classes.unseen is None else tuple(classes.unseen)
    if any(not 0 <= i < len(names) for i in unseen) or len(set(unseen)) != len(unseen):
        raise fail("unseen", f"{list(unseen)} must be distinct class indices in 0..{len(names) - 1}")
    if classes.background is None:
        spec_background = spec.classes.background
        background = names[spec.classes.names.index(spec_background)] if spec_background else ""
    else:
        background = classes.background
    if background and background not in names:
        raise fail("background", _not_a_class(background, names))
    if background and names.index(background) in unseen:
        raise fail("background", "the background class cannot be unseen")
    templates = spec.prompts.templates if classes.templates is None else classes.templates
    _check_templates(templates, "templates", fail)
    embeddings = spec.prompts.embeddings if classes.text_embeddings is None else classes.text_embeddings
    return dataclasses.replace(
        classes,
        names=names,
        unseen=unseen,
        background=background,
        templates=templates,
        text_embeddings=embeddings,
    )


def resolved(cfg: Config) -> Config:
    """`cfg` with its classes completed from its dataset file (`resolve_classes`)."""
    classes = resolve_classes(cfg.classes)
    if classes.background and not 0 < cfg.test.background_threshold < 1:
        raise UserError(
            f"test.background_threshold: expected a probability between 0 and 1, got {cfg.test.background_threshold}"
        )
    return dataclasses.replace(cfg, classes=classes)
