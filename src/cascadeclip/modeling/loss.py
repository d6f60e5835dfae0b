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


def class_pixel_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, ...) labels in [0, C) or 255 -> (B, C) int64: pixels of each class in each image (ignore excluded)."""
    valid = labels != IGNORE_INDEX
    counts = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device, dtype=torch.long)
    flat = torch.where(valid, labels, num_classes).flatten(1)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts[:, :num_classes]


def pairs_per_process(total_pairs: torch.Tensor, world_size: int) -> torch.Tensor:
    """The reference's N_m from the pair count summed over all processes: divided by the world size, at least 1."""
    return (total_pairs / world_size).clamp(min=1.0)


def mask_normaliser(num_pairs: int, device: torch.device) -> torch.Tensor:
    """The reference's N_m of one batch: this process's pair count summed over processes (see `pairs_per_process`)."""
    n = all_reduce_sum(torch.tensor(float(num_pairs), device=device))
    return pairs_per_process(n, dist.get_world_size() if is_distributed() else 1)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    prob: torch.Tensor,
    labels: torch.Tensor,
    normaliser: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sum over (image, class) rows of the per-row mean focal loss against one-hot targets, divided by `normaliser`.

    Args:
        logits, prob: (B, C, P) logits and their sigmoid.
        labels: (B, P) in [0, C) or 255 (ignore: a negative for every class).
    With a binary target t the focal loss of a logit x is alpha_t * BCE(x, t) * (1 - p_t)^gamma: for t = 0,
    (1 - alpha) * softplus(x) * sigmoid(x)^gamma; for t = 1, alpha * softplus(-x) * sigmoid(-x)^gamma. So every logit
    is summed as a negative, and the one positive of each labelled pixel is then corrected. This is the sum over
    one-hot targets without building them: a few passes over the (B, C, P) logits instead of a dozen, forward and
    backward, which dominated a training step's loss.
    """
    negatives = (F.softplus(logits) * prob.pow(gamma)).sum() * (1 - alpha)
    valid = labels != IGNORE_INDEX
    index = torch.where(valid, labels, 0).unsqueeze(1)
    x, p = logits.gather(1, index).squeeze(1), prob.gather(1, index).squeeze(1)
    as_positive = alpha * F.softplus(-x) * (1 - p).pow(gamma)
    as_negative = (1 - alpha) * F.softplus(x) * p.pow(gamma)
    correction = torch.where(valid, as_positive - as_negative, 0.0).sum()
    return (negatives + correction) / logits.shape[-1] / normaliser


def dice_loss(prob: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
    """Sum over the (image, class) rows with pixels of that class of 1 - (2 sum(p t) + 1) / (sum p + sum t + 1),
    divided by `normaliser`; t the one-hot targets (all zero on ignored pixels), p = `prob` (B, C, P).

    sum(p t) gathers each labelled pixel's probability of its own class; sum t is `counts` (B, C), the pixels of each
    class (`class_pixel_counts`).
    """
    valid = labels != IGNORE_INDEX
    index = torch.where(valid, labels, 0)
    own = torch.where(valid, prob.gather(1, index.unsqueeze(1)).squeeze(1), 0.0)
    overlap = torch.zeros_like(counts, dtype=prob.dtype).scatter_add(1, index, own)
    rows = 1 - (2 * overlap + 1) / (prob.sum(-1) + counts + 1)
    return rows[counts > 0].sum() / normaliser


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
    logits, labels = logits.float().flatten(2), labels.flatten(1)
    counts = class_pixel_counts(labels, logits.shape[1])
    num_pairs = (counts > 0).sum()
    if normaliser is None:
        normaliser = mask_normaliser(int(num_pairs), logits.device)
    prob = logits.sigmoid()  # shared by both terms
    focal = sigmoid_focal_loss(logits, prob, labels, normaliser)
    dice = dice_loss(prob, labels, counts, normaliser)
    return {"loss_focal": focal_weight * focal, "loss_dice": dice_weight * dice, "num_pairs": num_pairs}
