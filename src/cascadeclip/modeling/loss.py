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

from ..distributed import all_reduce_sum, is_distributed
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


FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
BLOCK_ELEMENTS = 1 << 19  # logits per block of `EveryLogitSums`: its intermediates stay in the CPU's cache


class EveryLogitSums(torch.autograd.Function):
    """The two sums of the losses over every (image, class, pixel) logit x, with p = sigmoid(x):

    - sum of softplus(x) * p^gamma: the focal loss of every logit taken as a negative (unscaled by 1 - alpha);
    - per (image, class), sum of p: the dice term's sum of probabilities.

    Written out by hand, a block of classes at a time, so that no (B, C, P) intermediate is kept and each block's stay
    in cache: the losses otherwise make some twenty passes over the full-resolution logits, forward and backward.
    Gradient: d/dx softplus(x) p^g = p^g (p + g softplus(x) (1 - p)); d/dx p = p (1 - p).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, P) logits -> (scalar negatives sum, (B, C) probability sums)."""
        ctx.save_for_backward(logits)
        ctx.gamma = gamma
        negatives = logits.new_zeros(())
        prob_sums = logits.new_empty(logits.shape[:2])
        for block in _class_blocks(logits):
            x = logits[:, block]
            p = x.sigmoid()
            prob_sums[:, block] = p.sum(-1)
            negatives += _softplus(x, p).mul_(p.pow(gamma)).sum()
        return negatives, prob_sums

    @staticmethod
    def backward(ctx, grad_negatives: torch.Tensor, grad_prob_sums: torch.Tensor) -> tuple[torch.Tensor, None]:
        (logits,) = ctx.saved_tensors
        gamma = ctx.gamma
        grad = torch.empty_like(logits)
        for block in _class_blocks(logits):
            x = logits[:, block]
            p = x.sigmoid()
            slope = p * (1 - p)
            focal = _softplus(x, p).mul_(gamma).mul_(1 - p).add_(p).mul_(p.pow(gamma)).mul_(grad_negatives)
            grad[:, block] = focal.addcmul_(slope, grad_prob_sums[:, block, None])
        return grad, None


def _softplus(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """softplus(x) = max(x, 0) - log(sigmoid(|x|)) from x and p = sigmoid(x), sigmoid(|x|) being p or 1 - p: one
    logarithm where F.softplus takes an exponential and a logarithm (twice as fast). sigmoid(|x|) lies in [0.5, 1],
    so the result is within 1.2e-7 of softplus(x) absolutely (the float spacing near 1, doubled by the logarithm)."""
    return torch.where(x > 0, p, 1 - p).log_().neg_().add_(x.clamp(min=0))


def _class_blocks(logits: torch.Tensor) -> list[slice]:
    """Slices of the class axis of (B, C, P) `logits`, each of about BLOCK_ELEMENTS logits."""
    per_block = max(1, BLOCK_ELEMENTS // (logits.shape[0] * logits.shape[2]))
    return [slice(c, c + per_block) for c in range(0, logits.shape[1], per_block)]


def sigmoid_focal_loss(
    negatives: torch.Tensor, own: torch.Tensor, valid: torch.Tensor, pixels: int, normaliser: torch.Tensor
) -> torch.Tensor:
    """Sum over (image, class) rows of the per-row mean focal loss against one-hot targets, divided by `normaliser`.

    Args:
        negatives: the sum over every logit of its focal loss as a negative (`EveryLogitSums`).
        own: (B, P) each pixel's logit of its labelled class; valid: (B, P) False where the label is ignored.
        pixels: P, the pixels of a row.
    With a binary target t the focal loss of a logit x is alpha_t * BCE(x, t) * (1 - p_t)^gamma: for t = 0,
    (1 - alpha) * softplus(x) * sigmoid(x)^gamma; for t = 1, alpha * softplus(-x) * sigmoid(-x)^gamma. So every logit
    is summed as a negative, and the one positive of each labelled pixel is then corrected: the sum over one-hot
    targets without building them.
    """
    alpha, gamma = FOCAL_ALPHA, FOCAL_GAMMA
    p = own.sigmoid()
    as_positive = alpha * F.softplus(-own) * (1 - p).pow(gamma)
    as_negative = (1 - alpha) * F.softplus(own) * p.pow(gamma)
    correction = torch.where(valid, as_positive - as_negative, 0.0).sum()
    return ((1 - alpha) * negatives + correction) / pixels / normaliser


def dice_loss(
    prob_sums: torch.Tensor,
    own: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    counts: torch.Tensor,
    normaliser: torch.Tensor,
) -> torch.Tensor:
    """Sum over the (image, class) rows with pixels of that class of 1 - (2 sum(p t) + 1) / (sum p + sum t + 1),
    divided by `normaliser`; t the one-hot targets (all zero on ignored pixels), p the probabilities.

    Args:
        prob_sums: (B, C) sum p of each row (`EveryLogitSums`).
        own, index, valid: (B, P) each pixel's logit of its labelled class, that class (0 where ignored), and False
            where the label is ignored: sum(p t) adds up the probabilities of the labelled pixels per class.
        counts: (B, C) sum t, the pixels of each class (`class_pixel_counts`).
    """
    own_prob = torch.where(valid, own.sigmoid(), 0.0)
    overlap = torch.zeros_like(counts, dtype=own_prob.dtype).scatter_add(1, index, own_prob)
    rows = 1 - (2 * overlap + 1) / (prob_sums + counts + 1)
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
    valid = labels != IGNORE_INDEX
    index = torch.where(valid, labels, 0)
    own = logits.gather(1, index.unsqueeze(1)).squeeze(1)  # (B, P) each pixel's logit of its labelled class
    negatives, prob_sums = EveryLogitSums.apply(logits, FOCAL_GAMMA)
    focal = sigmoid_focal_loss(negatives, own, valid, logits.shape[-1], normaliser)
    dice = dice_loss(prob_sums, own, index, valid, counts, normaliser)
    return {"loss_focal": focal_weight * focal, "loss_dice": dice_weight * dice, "num_pairs": num_pairs}
