"""Evaluation samples for a DataLoader: the test-time image with its label at the original size (docs/method.md,
Test-time preprocessing).

A sample that cannot be read is not an exception inside a worker process (PyTorch would wrap it in a traceback):
it comes back as an item whose "error" says which file and what is wrong, and the evaluation loop decides to stop
or to count it (`evaluation.evaluate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config.dataset_file import DatasetSpec, load_dataset
from ..utils import UserError
from .datasets import Sample, check_sizes_match, data_root, list_samples, read_image, read_label
from .transforms import test_image_tensor


class EvalDataset(Dataset):
    """(image, label, name) items of one split, in split order.

    Each item is a dict:
        image: (3, H', W') float tensor, short side resized to `short_side`, ImageNet-normalised;
        label: (H, W) tensor at the original size, class indices or the ignore index: uint8 with 255, or int32
            with 65535 for more than 255 classes (`utils.ignore_index_for`);
        name: the sample's id; image_path: str;
        error: None, or a one-line message naming the file that could not be used (image and label are then None).
    """

    def __init__(self, samples: list[Sample], dataset: DatasetSpec, short_side: int = 512):
        self.samples = samples
        self.dataset = dataset
        self.short_side = short_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        item = {"name": sample.name, "image_path": str(sample.image), "image": None, "label": None, "error": None}
        try:
            image = read_image(sample.image)
            label = read_label(sample.label, self.dataset)
            check_sizes_match(image.shape[:2], label, sample.label)
        except UserError as err:
            item["error"] = str(err)
            return item
        item["image"] = test_image_tensor(image, self.short_side)[0]
        item["label"] = torch.from_numpy(label if label.dtype == np.uint8 else label.astype(np.int32))
        return item


def eval_dataset(
    dataset: str | DatasetSpec,
    root: str | Path | None,
    split: str = "val",
    short_side: int = 512,
    rank: int = 0,
    world_size: int = 1,
) -> EvalDataset:
    """The evaluation samples of `dataset`/`split`; with several processes, this rank's share.

    Ranks take every `world_size`-th image starting at `rank`, so each image is evaluated exactly once (no padding
    with repeated images, unlike DistributedSampler) and the summed counts equal a single-process run's.
    """
    spec = load_dataset(dataset)
    samples = list_samples(spec, root, split)
    if not samples:
        raise UserError(f"the {spec.name} {split} split under {data_root(root)} has no images; check the folder")
    missing = sorted(str(folder) for folder in {s.label.parent for s in samples} if not folder.is_dir())
    if missing:  # told before a model is loaded, not at the first image
        raise UserError(
            f"the {spec.name} {split} split's label folder {missing[0]} does not exist"
            + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; put the labels there, or check --data-root (`cascade-clip check-data` lists every problem)"
        )
    return EvalDataset(samples[rank::world_size], spec, short_side)


def eval_loader(dataset: Dataset, workers: int = 4, pin_memory: bool = False) -> DataLoader:
    """One sample per step (the protocol's test batch size is 1), read ahead by `workers` processes."""
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory)
