"""Training augmentation (mmseg 0.24 semantics) and the iteration-based training data stream (docs/method.md, Data
pipeline).

Pipeline per sample: random rescale -> random crop with the category-ratio rule -> horizontal flip -> photometric
distortion (unless `train.photometric_distortion` is false) -> ImageNet normalisation -> pad to the crop size (image
0, label 255).

Determinism: the stream is a sequence of positions 0, 1, 2, ...; position p reads the image at index
perm_e[p mod n] of epoch e = p // n, and augments it with a generator seeded by (seed, p). A sample therefore depends
only on its position, never on the worker that loads it or on the number of processes, so a resumed run, a run with
more workers, and a run split over several processes see exactly the same batches.

A sample that cannot be read is not an exception inside a worker process (PyTorch would show the worker's
traceback): it comes back as an `UnusableSample` naming the file, `collate_training` passes it on as the batch, and
the training loop stops with its message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from torch.utils.data import Dataset, Sampler, default_collate
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..config import TrainConfig
from ..config.dataset_file import DatasetSpec
from ..utils import IGNORE_INDEX, UserError
from .datasets import Sample, check_sizes_match, read_image, read_label
from .transforms import normalize


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio size fitting the box scale = (long, short): factor min(long / max(h, w), short / min(h, w))."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def random_rescale(image: torch.Tensor, label: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator):
    """(3, H, W) uint8 image, (H, W) label -> both rescaled to the box `cfg.scale` times a ratio in `ratio_range`."""
    ratio = rng.uniform(*cfg.ratio_range)
    box = (int(cfg.scale[0] * ratio), int(cfg.scale[1] * ratio))
    size = list(rescale_size(image.shape[1], image.shape[2], box))
    image = TF.resize(image, size, InterpolationMode.BILINEAR, antialias=False)
    label = TF.resize(label[None], size, InterpolationMode.NEAREST)[0]
    return image, label


def random_crop(image: torch.Tensor, label: torch.Tensor, crop: int, cat_max_ratio: float, rng: np.random.Generator):
    """Crop crop x crop (or less where the image is smaller); up to 10 redraws until no class covers
    `cat_max_ratio` of the labelled pixels and at least two classes are present (mmseg's RandomCrop)."""
    height, width = label.shape

    def draw():
        top = int(rng.integers(0, max(height - crop, 0) + 1))
        left = int(rng.integers(0, max(width - crop, 0) + 1))
        return top, left

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            window = label[top : top + crop, left : left + crop]
            counts = torch.bincount(window.flatten().long(), minlength=256)
            counts[IGNORE_INDEX] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    return image[:, top : top + crop, left : left + crop], label[top : top + crop, left : left + crop]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)  # truncation, as mmseg's PhotoMetricDistortion.convert


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on an (H, W, 3) uint8 RGB image: brightness +-32, contrast x[0.5, 1.5] before
    or after the HSV steps, saturation x[0.5, 1.5], hue +-18 (of 180, OpenCV's scale); each with probability 1/2."""
    if rng.integers(2):
        image = _to_uint8(image.astype(np.float32) + rng.uniform(-32, 32))
    contrast_first = bool(rng.integers(2))

    def contrast(img):
        return _to_uint8(img.astype(np.float32) * rng.uniform(0.5, 1.5)) if rng.integers(2) else img

    if contrast_first:
        image = contrast(image)
    saturation = rng.uniform(0.5, 1.5) if rng.integers(2) else 1.0
    hue_shift = int(rng.integers(-18, 19)) / 180.0 if rng.integers(2) else 0.0
    if saturation != 1.0 or hue_shift != 0.0:
        hsv = rgb_to_hsv(image.astype(np.float32) / 255.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
        hsv[..., 0] = (hsv[..., 0] + hue_shift) % 1.0
        image = _to_uint8(hsv_to_rgb(hsv) * 255.0 + 0.5)
    if not contrast_first:
        image = contrast(image)
    return image


def augment(image: np.ndarray, label: np.ndarray, cfg: TrainConfig, rng: np.random.Generator):
    """(H, W, 3) uint8 RGB and (H, W) uint8 label -> (3, S, S) normalised float image and (S, S) int64 label."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    lab = torch.from_numpy(np.ascontiguousarray(label))
    img, lab = random_rescale(img, lab, cfg, rng)
    img, lab = random_crop(img, lab, cfg.crop_size, cfg.cat_max_ratio, rng)
    if rng.random() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    if cfg.photometric_distortion:
        img = torch.from_numpy(photometric_distortion(img.permute(1, 2, 0).numpy(), rng)).permute(2, 0, 1)
    img = normalize(img.float())
    pad_bottom, pad_right = cfg.crop_size - img.shape[1], cfg.crop_size - img.shape[2]
    if pad_bottom or pad_right:
        img = TF.pad(img, [0, 0, pad_right, pad_bottom], fill=0.0)
        lab = TF.pad(lab[None], [0, 0, pad_right, pad_bottom], fill=IGNORE_INDEX)[0]
    return img, lab.long()


@dataclass(frozen=True)
class UnusableSample:
    """A training sample whose files cannot be used; `message` names the file and what is wrong."""

    message: str


def collate_training(items: list):
    """A batch of (image, label) pairs, or the first `UnusableSample` among them."""
    unusable = next((item for item in items if isinstance(item, UnusableSample)), None)
    return unusable if unusable is not None else default_collate(items)


class TrainingStream(Dataset):
    """Position p of the training stream -> (image (3, S, S), label (S, S)); see the module docstring."""

    def __init__(self, samples: list[Sample], dataset: DatasetSpec, cfg: TrainConfig):
        if not samples:
            raise ValueError("the training split is empty")
        self.samples, self.dataset, self.cfg = samples, dataset, cfg
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def sample_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.samples))
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.samples))}
        return int(self._permutations[epoch][offset])

    def __getitem__(self, position: int):
        sample = self.samples[self.sample_index(position)]
        rng = np.random.default_rng([self.cfg.seed, 1 << 32, position])
        try:
            image, label = read_image(sample.image), read_label(sample.label, self.dataset)
            check_sizes_match(image.shape[:2], label, sample.label)
        except UserError as err:
            return UnusableSample(str(err))
        return augment(image, label, self.cfg, rng)


class StreamSampler(Sampler[int]):
    """The positions one process reads, in order, from iteration `start_iter` to `iters`.

    Iteration t covers positions [t*G, (t+1)*G), G = the global batch; its accumulation step k gives process r the
    per-device batch at offset (k * world_size + r) * per_device.
    """

    def __init__(self, start_iter: int, iters: int, global_batch: int, accumulation: int, rank: int, world_size: int):
        self.start_iter, self.iters = start_iter, iters
        self.global_batch, self.accumulation = global_batch, accumulation
        self.rank, self.world_size = rank, world_size
        self.per_device = global_batch // (accumulation * world_size)

    def __iter__(self):
        for t in range(self.start_iter, self.iters):
            for k in range(self.accumulation):
                first = t * self.global_batch + (k * self.world_size + self.rank) * self.per_device
                yield from range(first, first + self.per_device)

    def __len__(self) -> int:
        return (self.iters - self.start_iter) * self.accumulation * self.per_device
