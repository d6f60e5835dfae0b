"""Dataset-level IoU with MMSegmentation's semantics, split into seen and unseen classes (docs/method.md, Evaluation
protocol).

Per class, intersections and unions are summed over the whole split before dividing (not averaged per image).
Pixels whose ground truth is 255 are left out, so predictions there never count. A class with zero union (absent
from both ground truth and prediction) has IoU NaN and is left out of every mean.

    mIoU(S) = mean IoU over seen classes, mIoU(U) = over unseen classes, hIoU = 2 S U / (S + U),
    mIoU = over all classes, aAcc = correctly labelled pixels / labelled pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..distributed import all_reduce_sum
from ..utils import IGNORE_INDEX


class IoUAccumulator:
    """Per-class pixel counts summed over images and, with `all_reduce`, over processes.

    Counts are int64 on `device` (put them on the GPU when the process group uses NCCL). Two accumulators merged
    with `merge` hold exactly the counts of one that saw both sets of images.
    """

    def __init__(self, num_classes: int, device: str | torch.device = "cpu", ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # rows: intersection, union, predicted area, labelled area
        self.counts = torch.zeros(4, num_classes, dtype=torch.int64, device=device)
        self.images = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image, (H, W) integer class maps, or a batch of them, (B, H, W)."""
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
        device = self.counts.device
        self.images += label.shape[0] if label.dim() == 3 else 1
        prediction, label = prediction.to(device).long(), label.to(device).long()
        keep = label != self.ignore_index
        prediction, label = prediction[keep], label[keep]
        # Values outside the class range are not counted for that side, as mmseg's histogram does.
        hit = prediction[prediction == label]
        intersection = self._histogram(hit)
        predicted, labelled = self._histogram(prediction), self._histogram(label)
        self.counts += torch.stack([intersection, predicted + labelled - intersection, predicted, labelled])

    def _histogram(self, values: torch.Tensor) -> torch.Tensor:
        values = values[(values >= 0) & (values < self.num_classes)]
        return torch.bincount(values, minlength=self.num_classes)

    def merge(self, other: IoUAccumulator) -> IoUAccumulator:
        """Add the counts of `other` (e.g. another shard of the images) to these; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge counts of {other.num_classes} classes into {self.num_classes}")
        self.counts += other.counts.to(self.counts.device)
        self.images += other.images.to(self.images.device)
        return self

    def all_reduce(self) -> IoUAccumulator:
        """Sum the counts of every process in place (no-op without a process group); returns self."""
        all_reduce_sum(self.counts)
        all_reduce_sum(self.images)
        return self

    def results(self, names: list[str] | tuple[str, ...], unseen: list[int] | tuple[int, ...] = ()) -> dict:
        """The metrics as a JSON-ready dict, percentages; None where a mean has no class to average."""
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        intersection, union, predicted, labelled = self.counts.double().cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = intersection / union  # NaN when the union is zero
            accuracy = intersection / labelled
        unseen_set = set(unseen)
        seen = [i for i in range(self.num_classes) if i not in unseen_set]
        seen_miou, unseen_miou = _nanmean(iou[seen]), _nanmean(iou[sorted(unseen_set)])
        harmonic = None
        if seen_miou is not None and unseen_miou is not None:
            total = seen_miou + unseen_miou
            harmonic = 2 * seen_miou * unseen_miou / total if total > 0 else 0.0
        labelled_pixels = labelled.sum()
        return {
            "mIoU_seen": seen_miou,
            "mIoU_unseen": unseen_miou,
            "hIoU": harmonic,
            "mIoU": _nanmean(iou),
            "aAcc": 100 * float(intersection.sum() / labelled_pixels) if labelled_pixels > 0 else None,
            "images": int(self.images.item()),
            "per_class": [
                {
                    "index": i,
                    "name": names[i],
                    "split": "unseen" if i in unseen_set else "seen",
                    "IoU": _percent(iou[i]),
                    "Acc": _percent(accuracy[i]),
                    "pixels": int(labelled[i]),
                }
                for i in range(self.num_classes)
            ],
        }


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100 * float(value)


def _nanmean(values: np.ndarray) -> float | None:
    """Mean of the non-NaN values, in percent; None when there are none (e.g. no unseen classes)."""
    present = values[~np.isnan(values)]
    return 100 * float(present.mean()) if present.size else None
