"""Training targets and losses of the two zero-shot settings (docs/method.md, Inductive and transductive labels).

Labels arrive in the full class space (0..C_all-1, 255 = ignore).
- Inductive: queries are the seen classes only; a seen class becomes its position among the seen classes and
  every unseen pixel becomes 255 (ignored, hence a negative for all seen classes in the focal loss).
- Transductive: queries are all classes; pixels whose ground truth is an unseen class get a pseudo-label, the
  unseen class with the highest sigmoid score at that pixel in the same forward pass (no threshold, no gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils import IGNORE_INDEX
from .loss import cascade_loss


def inductive_targets(labels: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """(B, H, W) full-space labels, (S,) seen class indices -> labels in the seen-position space, unseen -> 255."""
    table = torch.full((256,), IGNORE_INDEX, dtype=torch.long, device=labels.device)
    table[seen.to(labels.device)] = torch.arange(len(seen), device=labels.device)
    return table[labels]


def transductive_targets(labels: torch.Tensor, logits: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """Replace unseen-class ground truth by pseudo-labels.

    Args:
        labels: (B, H, W) full-space labels.
        logits: (B, C_all, H, W) mask logits of all classes for the same images.
        unseen: (U,) unseen class indices.
    Returns:
        (B, H, W) labels: seen classes and 255 unchanged; every unseen pixel -> argmax over unseen classes.
    """
    unseen = unseen.to(labels.device).sort().values
    with torch.no_grad():
        # argmax of the probabilities, not the logits: large logits saturate to equal probabilities, and the
        # reference then picks the first such class.
        pseudo = unseen[logits.detach()[:, unseen].sigmoid().argmax(dim=1)]
    is_unseen = torch.isin(labels, unseen)
    return torch.where(is_unseen, pseudo, labels)


def training_losses(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    text: torch.Tensor,
    seen: list[int] | tuple[int, ...],
    unseen: list[int] | tuple[int, ...],
    setting: str,
    normaliser: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms of one batch in the given zero-shot setting.

    Args:
        model: the segmentor (or its DDP wrapper): (images, text) -> (B, C, H, W) logits.
        images: (B, 3, H, W); labels: (B, H, W) in the full class space, 255 = ignore.
        text: (C_all, D) embeddings of all classes in dataset order.
        normaliser: passed to `cascade_loss` (None: the reference's per-batch normaliser).
    Returns:
        cascade_loss's terms, plus "logits" of the query classes and "targets" used (for logging and checks).
    """
    seen_idx = torch.as_tensor(seen, dtype=torch.long)
    if setting == "inductive":
        logits = model(images, text[seen_idx.to(text.device)])
        targets = inductive_targets(labels, seen_idx)
    elif setting == "transductive":
        logits = model(images, text)
        targets = transductive_targets(labels, logits, torch.as_tensor(unseen, dtype=torch.long))
    else:
        raise ValueError(f"unknown setting {setting!r}; use 'inductive' or 'transductive'")
    return {**cascade_loss(logits, targets, normaliser), "logits": logits, "targets": targets}
