"""Check a dataset split on disk before a run: files present, labels readable and within the class range.

`cascade-clip check-data` prints these reports. Every label is read in full (values, size); images are checked
from their headers (existence, format, size), or decoded in full with `decode_images` to find truncated files.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from tqdm import tqdm

from ..config.dataset_file import DatasetSpec, load_dataset
from ..utils import UserError
from .datasets import (
    Sample,
    check_sizes_match,
    dataset_folder,
    files_with_suffix,
    list_samples,
    read_image,
    read_image_size,
    read_label,
)


@dataclass
class SplitReport:
    dataset: str
    split: str
    listed: int = 0  # names in the split files (COCO: image files)
    images: int = 0  # listed names whose image exists
    labels: int = 0  # listed names whose label exists
    missing_images: list[str] = field(default_factory=list)  # names
    missing_labels: list[str] = field(default_factory=list)  # names
    unmatched_labels: list[str] = field(default_factory=list)  # label files without an image (COCO)
    bad_files: list[str] = field(default_factory=list)  # one message per unreadable / out-of-range / mis-sized file
    error: str | None = None  # the split itself could not be listed (missing folder or split file)

    @property
    def ok(self) -> bool:
        return not (self.error or self.missing_images or self.missing_labels or self.unmatched_labels or self.bad_files)


def check_sample(sample: Sample, dataset: DatasetSpec, decode_images: bool = False) -> tuple[bool, bool, str | None]:
    """(image exists, label exists, message of the first problem found in the files that exist, or None)."""
    has_image, has_label = sample.image.is_file(), sample.label.is_file()
    try:
        size = None
        if has_image:
            size = read_image(sample.image).shape[:2] if decode_images else read_image_size(sample.image)
        if has_label:
            label = read_label(sample.label, dataset)
            if size is not None:
                check_sizes_match(size, label, sample.label)
    except UserError as err:
        return has_image, has_label, str(err)
    return has_image, has_label, None


def check_split(
    dataset: str | DatasetSpec,
    root: str | None,
    split: str,
    decode_images: bool = False,
    workers: int = 0,
    progress: bool = False,
) -> SplitReport:
    """Check every sample of `dataset`/`split` under `root`, in `workers` processes (0: this one)."""
    spec = load_dataset(dataset)
    report = SplitReport(spec.name, split)
    try:
        samples = list_samples(spec, root, split)
    except UserError as err:
        report.error = str(err)
        return report
    if not samples:
        report.error = _empty_split_message(spec, root, split)
        return report
    report.listed = len(samples)
    check = partial(check_sample, dataset=spec, decode_images=decode_images)
    bar = partial(tqdm, total=len(samples), desc=f"{spec.name} {split}", unit="file", leave=False, disable=not progress)
    if workers > 0:
        with ProcessPoolExecutor(workers) as pool:
            outcomes = list(bar(pool.map(check, samples, chunksize=64)))
    else:
        outcomes = [check(sample) for sample in bar(samples)]
    for sample, (has_image, has_label, problem) in zip(samples, outcomes, strict=True):
        report.images += has_image
        report.labels += has_label
        if not has_image:
            report.missing_images.append(sample.name)
        if not has_label:
            report.missing_labels.append(sample.name)
        if problem:
            report.bad_files.append(problem)
    report.unmatched_labels = _labels_without_images(spec, root, split, samples)
    return report


def _labels_without_images(dataset: DatasetSpec, root: str | None, split: str, samples: list[Sample]) -> list[str]:
    """Label files of a folder-listed split (COCO) whose image is absent; split-file layouts share label folders
    across splits, so a label outside the list is normal there."""
    base = dataset_folder(dataset, root)
    listed = {sample.name for sample in samples}
    unmatched = []
    for source in dataset.sources(split):
        label_dir = base / source.labels
        if not source.split_file and label_dir.is_dir():
            names = files_with_suffix(label_dir, dataset.label_suffix, source.recursive)
            unmatched += sorted(str(label_dir / f"{n}{dataset.label_suffix}") for n in names if n not in listed)
    return unmatched


def _empty_split_message(dataset: DatasetSpec, root: str | None, split: str) -> str:
    """Why `split` has no samples, naming where its image ids come from: training or testing on it would fail."""
    base = dataset_folder(dataset, root)
    places = [
        f"split file {base / source.split_file} lists no image ids (write them there, one per line)"
        if source.split_file
        else f"image folder {base / source.images} holds no *{dataset.image_suffix} files (put the images there)"
        for source in dataset.sources(split)
    ]
    return f"the {split} split is empty: {'; '.join(places)}; or check only the other splits with --split"
