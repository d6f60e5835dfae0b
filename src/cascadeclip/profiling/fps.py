"""Frames per second as the authors' get_fps.py measures them: batch 1, sliding windows, the prediction resized to the
original size, argmax and the copy to the CPU timed, the first images not timed (docs/method.md, Measuring
efficiency)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.datasets import list_samples, read_image
from ..data.transforms import test_image_tensor
from ..inference.predict import protocol_scores, seen_shift_vector
from ..utils import UserError
from .timing import synchronize


def protocol_fps(
    predict: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
    images: Iterable[tuple[torch.Tensor, tuple[int, int]]],
    device: torch.device,
    warmup: int,
) -> dict:
    """Frames per second as the authors' get_fps.py measures them, batch 1.

    Args:
        predict: (1, 3, H, W) preprocessed image on `device`, original (h, w) -> (1, C, h, w) scores.
        images: (preprocessed image, original size) pairs; loading and preprocessing are not timed.
        warmup: images at the start that are run but not timed.
    Returns:
        {"images": timed images, "warmup": ..., "seconds": total timed, "fps": timed images / seconds}.
    """
    seconds, timed = 0.0, 0
    for i, (image, size) in enumerate(images):
        image = image.to(device)
        synchronize(device)
        start = time.perf_counter()
        predict(image, size).argmax(dim=1).cpu()  # prediction, resize to the original size, argmax, copy back
        synchronize(device)
        if i >= warmup:
            seconds += time.perf_counter() - start
            timed += 1
    return {"images": timed, "warmup": warmup, "seconds": seconds, "fps": timed / seconds if seconds else None}


# Generated images stand in for a dataset's validation images: the most common size (H, W) of each validation set.
TYPICAL_IMAGE_SIZE = {"voc": (375, 500), "context": (375, 500), "coco": (480, 640)}


def generated_image_size(cfg: Config, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """`image_size` if given, else the most common validation image size of the configuration's dataset."""
    return tuple(image_size) if image_size else TYPICAL_IMAGE_SIZE.get(cfg.classes.dataset, (512, 512))


def protocol_images(
    cfg: Config, count: int, data_root: str | None = None, image_size: tuple[int, int] | None = None
) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
    """`count` (preprocessed (1, 3, H, W) image, original size) pairs for `protocol_fps`.

    The configuration's validation images under `data_root` (repeated if there are fewer), else one generated
    image of `image_size` (default: the dataset's most common size) over and over.
    """
    short_side = cfg.test.short_side
    if data_root:
        samples = list_samples(cfg.classes.dataset, data_root, "val")
        if not samples:
            raise UserError(f"no validation images found under {data_root} for {cfg.classes.dataset}")
        for i in range(count):
            image = read_image(samples[i % len(samples)].image)
            yield test_image_tensor(image, short_side), image.shape[:2]
        return
    height, width = generated_image_size(cfg, image_size)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tensor = test_image_tensor(image, short_side)
    for _ in range(count):
        yield tensor, (height, width)


def slide_predictor(
    model: nn.Module, text: torch.Tensor, cfg: Config
) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    """The `predict` of `protocol_fps`: the configuration's test-time inference, scores at the original size."""
    shift = seen_shift_vector(len(text), cfg.classes.seen, cfg.classes.test_seen_shift).to(text.device)

    def predict(image: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return protocol_scores(model, image, text, shift, cfg.test, out_size)

    return predict
