"""Training loss: sigmoid focal x100 + dice x1 on the summed mask logits, as the reference computes it (docs/method.md,
Losses).

Ignored pixels (label 255) get an all-zero target row: they are negatives for every class in the focal term and
enter the dice denominator through sum(sigmoid) (docs/authors-code.md#ignored-pixels-are-negatives-in-the-focal-loss).
Both terms are divided by the number of (image, present class) pairs, all-reduced over processes and divided by the
world size, as in the reference.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..engine.distributed import all_reduce_sum, is_distributed
from ..utils import IGNORE_INDEX


def one_hot_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels in [0, C) or 255 -> (B, C, H, W) float targets, all zero on ignored pixels."""
    valid = labels != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, labels, 0), num_classes).permute(0, 3, 1, 2)
    return (onehot * valid.unsqueeze(1)).float()


def present_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, C) bool: which classes occur in each image (ignore excluded)."""
    valid = labels != IGNORE_INDEX
    counts = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device, dtype=torch.long)
    flat = torch.where(valid, labels, num_classes).flatten(1)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts[:, :num_classes] > 0


def pairs_per_process(total_pairs: torch.Tensor, world_size: int) -> torch.Tensor:
    """The reference's N_m from the pair count summed over all processes: divided by the world size, at least 1."""
    return (total_pairs / world_size).clamp(min=1.0)


def mask_normaliser(num_pairs: int, device: torch.device) -> torch.Tensor:
    """The reference's N_m of one batch: this process's pair count summed over processes (see `pairs_per_process`)."""
    n = all_reduce_sum(torch.tensor(float(num_pairs), device=device))
    return pairs_per_process(n, dist.get_world_size() if is_distributed() else 1)


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, normaliser: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """(R, P) logits and targets -> sum over rows of the per-row mean focal loss, divided by `normaliser`."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean(1).sum() / normaliser


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
    """(R, P) logits and targets -> sum over rows of 1 - (2 sum(p t) + 1) / (sum p + sum t + 1), / `normaliser`."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1) + 1
    denominator = prob.sum(-1) + targets.sum(-1) + 1
    return (1 - numerator / denominator).sum() / normaliser


def cascade_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    normaliser: torch.Tensor | None = None,
    focal_weight: float = 100.0,
    dice_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Weighted focal and dice terms.

    Args:
        logits: (B, C, H, W) mask logits of the C query classes.
        labels: (B, H, W) int64 in [0, C) or 255 (ignore), already in the query class space.
        normaliser: divides both terms; None: the reference's N_m for this batch (see `mask_normaliser`). The
            training loop passes 1 under gradient accumulation and applies the whole step's N_m afterwards.
    Returns:
        {"loss_focal", "loss_dice"} (their sum is the training loss) and "num_pairs", this batch's count of
        (image, present class) pairs.
    """
    num_classes = logits.shape[1]
    logits = logits.float().flatten(2)
    targets = one_hot_targets(labels, num_classes).flatten(2)
    present = present_classes(labels, num_classes)
    num_pairs = present.sum()
    if normaliser is None:
        normaliser = mask_normaliser(int(num_pairs), logits.device)
    focal = sigmoid_focal_loss(logits.flatten(0, 1), targets.flatten(0, 1), normaliser)
    dice = dice_loss(logits[present], targets[present], normaliser)
    return {"loss_focal": focal_weight * focal, "loss_dice": dice_weight * dice, "num_pairs": num_pairs}
