"""Control: do the frozen tiny CLIP's dense features carry the classes at all?

A linear classifier (a "probe") is fitted on the CLIP's token features of training scenes and scored on the
validation scenes, one token at a time. The segmentor's mask logit at a pixel is linear in the encoder's maps, so what
a linear probe of the frozen maps cannot separate, the segmentor can hardly learn: a probe near chance locates a
failure in the CLIP (or the world), a good probe with a poor segmentor locates it in the recipe.

Tokens are labelled from the masks: a token is the class of one object covering at least `PURITY` of its pixels;
tokens of background or of several objects are left out. Colour and pattern accuracies are read off the predicted
class (right colour, right pattern). The features are the frozen CLIP's patch tokens, without the segmentor's
learnt prompts: what the segmentor starts from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ImageEncoderConfig
from ..config.class_names import WORLD_CLASSES, WORLD_PATTERNS
from ..config.dataset_file import load_dataset
from ..data.datasets import list_samples, read_image, read_label
from ..open_clip_parts import CLIP
from ..utils import IGNORE_INDEX
from .pretrain import TinyClipConfig, image_batch
from .shipped import load_archive

PURITY = 0.75


def feature_sets(encoder: ImageEncoderConfig) -> dict[str, tuple[int, ...]]:
    """The blocks whose tokens are probed: every map the cascade reads (its taps and the final block), concatenated;
    and the final block alone (the single last-layer decoder's map)."""
    last = encoder.layers - 1
    blocks = (*encoder.tap_blocks, last)
    return {f"the cascade's maps (blocks {blocks[0]}-{last})": blocks, f"final block ({last})": (last,)}


def token_labels(labels: np.ndarray, patch: int, num_classes: int) -> torch.Tensor:
    """(N, H, W) label maps (class c, or IGNORE_INDEX for background) -> (N, tokens) class per token, -1 where no
    single object covers `PURITY` of the token."""
    classes = torch.from_numpy(labels.astype(np.int64))
    classes = torch.where(classes == IGNORE_INDEX, num_classes, classes)  # background: one more class, dropped below
    onehot = F.one_hot(classes, num_classes + 1).permute(0, 3, 1, 2).float()
    shares = F.avg_pool2d(onehot, patch).flatten(2).transpose(1, 2)[..., :num_classes]  # (N, tokens, classes)
    share, cls = shares.max(-1)
    return torch.where(share >= PURITY, cls, torch.full_like(cls, -1))


@torch.no_grad()
def token_features(clip: CLIP, images: np.ndarray, blocks: tuple[int, ...], batch: int = 100) -> torch.Tensor:
    """(N, H, W, 3) uint8 images -> (N, tokens, len(blocks) * width): the CLIP's patch tokens after each block."""
    visual, parts = clip.visual.eval(), []
    for start in range(0, len(images), batch):
        x = image_batch(list(images[start : start + batch]))
        out = visual.forward_intermediates(x, indices=list(blocks), output_fmt="NLC", intermediates_only=True)
        parts.append(torch.cat(out["image_intermediates"], dim=-1))
    return torch.cat(parts)


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 300, seed: int = 0
) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features (full-batch Adam, light weight decay)."""
    generator = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=generator) * 0.01)
        probe.bias.zero_()
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(probe(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def read_split(data_root: Path, split: str, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 images and (N, H, W) label maps of the first `count` (all: None) scenes of a world split,
    as the segmentor reads them."""
    dataset = load_dataset("world")
    samples = list_samples(dataset, data_root, split)[:count]
    images = np.stack([read_image(s.image) for s in samples])
    return images, np.stack([read_label(s.label, dataset) for s in samples])


def probe_accuracies(
    clip: CLIP,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    encoder: ImageEncoderConfig,
    num_classes: int,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Fit on `train` = (images, label maps), score on `val`; for each of the `feature_sets`, the share of validation
    tokens whose class, colour and pattern the probe gets right (percentages), and the token counts."""
    patch = encoder.patch_size
    y_train, y_val = token_labels(train[1], patch, num_classes), token_labels(val[1], patch, num_classes)
    keep_train, keep_val = y_train >= 0, y_val >= 0
    patterns = len(WORLD_PATTERNS)
    results = {}
    sets = feature_sets(encoder)
    probed = sorted({b for blocks in sets.values() for b in blocks})
    all_train = token_features(clip, train[0], tuple(probed))[keep_train]
    all_val = token_features(clip, val[0], tuple(probed))[keep_val]
    width = all_train.shape[1] // len(probed)
    for name, blocks in sets.items():
        columns = torch.cat([torch.arange(width) + probed.index(b) * width for b in blocks])
        x_train, x_val = all_train[:, columns], all_val[:, columns]
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        probe = fit_linear_probe((x_train - mean) / std, y_train[keep_train], num_classes, seed=seed)
        with torch.no_grad():
            predicted = probe((x_val - mean) / std).argmax(1)
        truth = y_val[keep_val]
        results[name] = {
            "class": 100 * (predicted == truth).float().mean().item(),
            "colour": 100 * (predicted // patterns == truth // patterns).float().mean().item(),
            "pattern": 100 * (predicted % patterns == truth % patterns).float().mean().item(),
            "train_tokens": int(keep_train.sum()),
            "val_tokens": int(keep_val.sum()),
        }
    return results


def probe_control(
    clip_path: Path,
    clip_cfg: TinyClipConfig,
    encoder: ImageEncoderConfig,
    data_root: Path,
    train_images: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """The control as the demo runs it: the tiny CLIP of `clip_path` probed on the first `train_images` training
    scenes of the world dataset at `data_root`, scored on all its validation scenes."""
    clip = load_archive(clip_path, clip_cfg)
    train, val = read_split(data_root, "train", train_images), read_split(data_root, "val")
    return probe_accuracies(clip, train, val, encoder, len(WORLD_CLASSES), seed)
