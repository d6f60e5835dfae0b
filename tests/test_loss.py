"""The training loss computed from labels equals its definition over one-hot targets, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cascadeclip.modeling import loss
from cascadeclip.modeling.loss import cascade_loss


def one_hot_definition(logits: torch.Tensor, labels: torch.Tensor, normaliser: float) -> tuple[torch.Tensor, ...]:
    """The reference's focal and dice terms written over dense one-hot targets (all zero on ignored pixels)."""
    num_classes = logits.shape[1]
    valid = labels != 255
    targets = (F.one_hot(torch.where(valid, labels, 0), num_classes).permute(0, 3, 1, 2) * valid.unsqueeze(1)).float()
    x, t = logits.flatten(2), targets.flatten(2)
    prob = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    focal = (alpha_t * ce * (1 - p_t) ** 2).mean(-1).sum() / normaliser
    present = t.sum(-1) > 0
    dice_rows = 1 - (2 * (prob * t).sum(-1) + 1) / (prob.sum(-1) + t.sum(-1) + 1)
    return 100 * focal, dice_rows[present].sum() / normaliser


@pytest.mark.parametrize("block_classes", [None, 2], ids=["one block", "blocks of 2 classes"])
@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["moderate logits", "saturated logits"])
def test_loss_from_labels_equals_the_one_hot_definition(scale, block_classes, monkeypatch):
    if block_classes is not None:  # the sums over every logit taken a block of classes at a time
        monkeypatch.setattr(loss, "BLOCK_ELEMENTS", block_classes * 2 * 24 * 20)
    torch.manual_seed(0)
    logits = (scale * torch.randn(2, 7, 24, 20)).requires_grad_()
    labels = torch.randint(0, 5, (2, 24, 20))  # classes 5 and 6 absent: their dice rows are left out
    labels[0, :4] = 255  # ignored pixels: negatives for every class
    losses = cascade_loss(logits, labels, normaliser=torch.tensor(3.0))
    (losses["loss_focal"] + losses["loss_dice"]).backward()
    gradient, logits.grad = logits.grad, None
    focal, dice = one_hot_definition(logits, labels, 3.0)
    (focal + dice).backward()
    assert losses["num_pairs"] == 10
    # Float rounding of sums in another order. For saturated logits the definition's 1 - sigmoid(x) cancels (the
    # loss from labels computes sigmoid(-x)), which moves the tiniest gradients by up to 1e-6 of the largest.
    torch.testing.assert_close(losses["loss_focal"], focal, rtol=1e-5, atol=0)
    torch.testing.assert_close(losses["loss_dice"], dice, rtol=1e-5, atol=0)
    torch.testing.assert_close(gradient, logits.grad, rtol=1e-4, atol=1e-6 * logits.grad.abs().max().item())


def test_softplus_from_the_sigmoid_is_within_its_stated_bound():
    x = torch.linspace(-40, 40, 200_001)
    exact = F.softplus(x.double())
    # The stated 1.2e-7 absolute, plus the float32 rounding of the result itself (relative).
    torch.testing.assert_close(loss._softplus(x, x.sigmoid()).double(), exact, atol=1.2e-7, rtol=1.2e-7)
