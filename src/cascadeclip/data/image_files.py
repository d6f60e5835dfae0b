"""Image files read and preprocessed in DataLoader worker processes while the model runs (`cascade-clip segment`).

As for evaluation samples (`data.eval_dataset`), a file that cannot be read is not an exception inside a worker
(PyTorch would wrap it in a traceback) but an item whose "error" names the file. Warnings (a damaged EXIF block) are
carried in the item too, for the main process to show: a worker's own stderr may go nowhere.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..utils import UserError
from .images import load_image
from .transforms import test_image_tensor


class ImageFiles(Dataset):
    """One item per image file, in the order given: a dict of

        index: the file's position in the list;
        image: (H, W, 3) uint8 tensor, the upright RGB image at its own resolution (what outputs are drawn on);
        tensor: (1, 3, h, w) normalised tensor, short side resized to `short_side` (what the model sees);
        error: None, or a one-line message naming the file (image and tensor are then None);
        warnings: the messages of the warnings raised while reading it (see `reissue_warnings`).

    With `short_side` None the files are only decoded (a check that they can be read) and image and tensor are None.
    """

    def __init__(self, paths: list[Path], short_side: int | None):
        self.paths = paths
        self.short_side = short_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"index": index, "image": None, "tensor": None, "error": None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rgb = load_image(self.paths[index])
            except UserError as err:
                item["error"] = str(err)
        item["warnings"] = [str(w.message) for w in caught]
        if item["error"] is not None:
            return item
        if self.short_side is not None:
            item["image"] = torch.from_numpy(np.asarray(rgb).copy())
            item["tensor"] = test_image_tensor(rgb, self.short_side)
        return item


def image_loader(paths: list[Path], short_side: int | None, workers: int) -> DataLoader:
    """The items of `ImageFiles`, one per step, read ahead by `workers` processes (0: in this process)."""
    return DataLoader(ImageFiles(paths, short_side), batch_size=None, shuffle=False, num_workers=workers)


def reissue_warnings(item: dict[str, Any]) -> None:
    """Show, in this process, the warnings raised while a worker read the item's file."""
    for message in item["warnings"]:
        warnings.warn(message, UserWarning, stacklevel=2)


def unreadable_images(paths: list[Path], workers: int) -> list[str]:
    """Messages naming the files among `paths` that cannot be decoded, checked by `workers` processes."""
    return [item["error"] for item in image_loader(paths, None, workers) if item["error"] is not None]
