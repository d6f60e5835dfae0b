"""An image encoded once, segmented into many sets of class names: the image encoder's output kept for the head.

The image encoder does not see the class names; only the head does. So `encode_image` runs the encoder once (per
sliding window) and keeps its dense maps and global embedding, and `decode_scores` turns them into the scores of
any class embeddings by running the head alone. Together they compute `predict_scores` of the same image: the same
operations on the same windows, grouped into other batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..modeling.cascade_clip import CascadeCLIP
from .predict import average_windows, crop_windows, image_windows

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1)


@dataclass
class EncodedWindows:
    """The encoder's output for a batch of equally sized windows of one image."""

    boxes: list[Box]
    maps: list[torch.Tensor]  # each (len(boxes), D, h, w)
    global_embedding: torch.Tensor  # (len(boxes), D)


@dataclass
class EncodedImage:
    """An image's encoder output at inference resolution, window by window.

    `size` is the (H, W) of the image given to `encode_image`; `padded_size` the area the windows cover (larger in
    whole-image mode, which pads to whole patches).
    """

    size: tuple[int, int]
    padded_size: tuple[int, int]
    windows: list[EncodedWindows]


@torch.no_grad()
def encode_image(
    model: CascadeCLIP,
    image: torch.Tensor,
    mode: str = "slide",
    crop: int = 512,
    stride: int = 426,
    window_batch: int = 8,
) -> EncodedImage:
    """Run the image encoder over one image as `predict_scores` would (windows, or the whole image padded to
    whole patches) and keep its output.

    Args:
        image: (1, 3, H, W) normalised image.
        mode, crop, stride, window_batch: as for `predict_scores`.
    """
    size = tuple(image.shape[-2:])
    image, boxes = image_windows(image, mode, model.cfg.image_encoder.patch_size, crop, stride)
    chunks = [boxes[i : i + window_batch] for i in range(0, len(boxes), window_batch)]
    windows = [EncodedWindows(chunk, *model.encode(crop_windows(image, chunk))) for chunk in chunks]
    return EncodedImage(size, tuple(image.shape[-2:]), windows)


@torch.no_grad()
def decode_scores(model: CascadeCLIP, encoded: EncodedImage, text: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) scores of the encoded image for the classes of `text` (C, D), by the head alone."""
    logits = ((w.boxes, model.decode(w.maps, w.global_embedding, text, _box_size(w.boxes[0]))) for w in encoded.windows)
    scores = average_windows(logits, encoded.padded_size)
    return scores[..., : encoded.size[0], : encoded.size[1]]


def _box_size(box: Box) -> tuple[int, int]:
    y0, x0, y1, x1 = box
    return y1 - y0, x1 - x0
