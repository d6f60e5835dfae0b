"""Test-time prediction: sigmoid scores, the inductive seen-class shift, sliding windows (docs/method.md, Prediction
and Sliding windows).

Scores are probabilities per class; in the inductive setting 0.1 is subtracted from the seen classes so that unseen
classes can win (docs/authors-code.md#the-seen-class-shift-acts-on-probabilities). Sliding-window scores are averaged
over overlapping windows after the shift.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..config import TestConfig
from ..modeling.cascade_clip import CascadeCLIP


def seen_shift_vector(num_classes: int, seen: list[int] | tuple[int, ...], shift: float) -> torch.Tensor:
    """(C,) amounts subtracted from each class's probability: `shift` on seen classes, 0 elsewhere."""
    vector = torch.zeros(num_classes)
    vector[list(seen)] = shift
    return vector


def class_scores(logits: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) logits -> sigmoid probabilities minus the per-class `shift` (C,).

    Consumes fp32 `logits` (computed in place): at full resolution each is hundreds of MB, and fresh memory of that
    size costs page faults.
    """
    scores = logits.float().sigmoid_()
    if shift is not None:
        scores.sub_(shift.to(scores.device).view(1, -1, 1, 1))
    return scores


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis: the last window is moved back to end inside the image."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(k * stride + crop, length) - crop, 0) for k in range(count)})


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of the overlapping square windows over an image, row by row."""
    return [
        (y, x, min(y + crop, height), min(x + crop, width))
        for y in window_starts(height, crop, stride)
        for x in window_starts(width, crop, stride)
    ]


class WindowAverage:
    """The scores of one image averaged over overlapping windows, added window by window.

    Each window's probabilities are added where it lies, and at the end each pixel is divided by the number of
    windows covering it.
    """

    def __init__(self, size: tuple[int, int]):
        self.size = tuple(size)
        self.total: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def add(self, box: tuple[int, int, int, int], scores: torch.Tensor) -> None:
        """Add the (C, y1 - y0, x1 - x0) probabilities of the window `box` = (y0, x0, y1, x1)."""
        if self.total is None:  # in the layout of the model's output, which resizing and argmax then run on
            channels_last = scores[None].is_contiguous(memory_format=torch.channels_last)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            self.total = torch.empty((1, scores.shape[0], *self.size), device=scores.device, memory_format=layout)
            self.total.zero_()
            self.count = scores.new_zeros((1, 1, *self.size), dtype=torch.float32)
        y0, x0, y1, x1 = box
        self.total[0, :, y0:y1, x0:x1] += scores
        self.count[0, :, y0:y1, x0:x1] += 1

    def result(self) -> torch.Tensor:
        """(1, C, *size) window-averaged scores (computed in place of the running sum)."""
        return self.total.div_(self.count)


def average_windows(
    windows: Iterable[tuple[list[tuple[int, int, int, int]], torch.Tensor]],
    size: tuple[int, int],
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1, C, *size) scores averaged over overlapping windows, from (boxes, (len(boxes), C, h, w) logits) chunks;
    the probabilities are shifted by `shift` (see `class_scores`) before averaging."""
    average = WindowAverage(size)
    for boxes, logits in windows:
        for box, window_scores in zip(boxes, class_scores(logits, shift), strict=True):
            average.add(box, window_scores)
    return average.result()


def image_windows(
    image: torch.Tensor, mode: str, patch: int, crop: int, stride: int
) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """The image and the boxes of its windows, as `predict_scores` runs them: in slide mode the image and its sliding
    windows; in whole mode the image padded to whole patches (`pad_to_patches`) and one box over all of it."""
    if mode == "whole":
        image = pad_to_patches(image, patch)
        return image, [(0, 0, *image.shape[-2:])]
    if mode == "slide":
        return image, window_boxes(*image.shape[-2:], crop, stride)
    raise ValueError(f"unknown inference mode {mode!r}; use 'slide' or 'whole'")


def pad_to_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) normalised images padded right and bottom with 0 (the mean colour) to multiples of `patch`."""
    height, width = images.shape[-2:]
    return F.pad(images, (0, -width % patch, 0, -height % patch))


@torch.no_grad()
def slide_scores(
    model: CascadeCLIP,
    image: torch.Tensor,
    text: torch.Tensor,
    shift: torch.Tensor | None = None,
    crop: int = 512,
    stride: int = 426,
    window_batch: int = 8,
) -> torch.Tensor:
    """Scores of one image from overlapping square windows, each run through the whole model.

    Args:
        image: (1, 3, H, W) normalised image.
        text: (C, D) class embeddings.
        shift: (C,) subtracted from each window's probabilities (see `seen_shift_vector`).
        window_batch: windows run through the model together, this many at a time.
    Returns:
        (1, C, H, W) window-averaged scores.
    """
    boxes = window_boxes(*image.shape[-2:], crop, stride)
    chunks = (boxes[i : i + window_batch] for i in range(0, len(boxes), window_batch))
    windows = ((chunk, model(crop_windows(image, chunk), text)) for chunk in chunks)
    return average_windows(windows, image.shape[-2:], shift)


def crop_windows(image: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """(1, 3, H, W) image -> (len(boxes), 3, h, w) windows (all boxes of one size)."""
    return torch.cat([image[:, :, y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])


@torch.no_grad()
def predict_scores(
    model: CascadeCLIP,
    images: torch.Tensor,
    text: torch.Tensor,
    shift: torch.Tensor | None = None,
    mode: str = "slide",
    crop: int = 512,
    stride: int = 426,
    window_batch: int = 8,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, C, *out_size) scores, by sliding windows or one whole-image forward.

    In whole-image mode images whose sides are not multiples of the patch size are padded at the bottom and right
    (with 0, the mean colour after normalising) and the scores cropped back. The scores are resized bilinearly to
    `out_size` (the original image size), ready for argmax over classes.
    """
    if mode == "slide":
        scores = torch.cat([slide_scores(model, img[None], text, shift, crop, stride, window_batch) for img in images])
    elif mode == "whole":
        height, width = images.shape[-2:]
        padded = pad_to_patches(images, model.cfg.image_encoder.patch_size)
        scores = class_scores(model(padded, text), shift)[..., :height, :width]
    else:
        raise ValueError(f"unknown inference mode {mode!r}; use 'slide' or 'whole'")
    if out_size is not None and tuple(out_size) != tuple(scores.shape[-2:]):
        scores = F.interpolate(scores, size=out_size, mode="bilinear", align_corners=False)
    return scores


def protocol_scores(
    model: CascadeCLIP,
    images: torch.Tensor,
    text: torch.Tensor,
    shift: torch.Tensor | None,
    test: TestConfig,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """`predict_scores` with the test protocol of a configuration: `test.mode`, window size, stride and batch."""
    return predict_scores(
        model,
        images,
        text,
        shift,
        mode=test.mode,
        crop=test.crop_size,
        stride=test.stride,
        window_batch=test.window_batch,
        out_size=out_size,
    )
