"""Parameter counts, in this implementation and as the authors' model (and the paper) count them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import HeadConfig


@dataclass
class ParameterCounts:
    total: int
    trainable: int

    def __str__(self) -> str:
        return f"{self.total / 1e6:.2f} M total, {self.trainable / 1e6:.2f} M trainable"


def count_parameters(model: nn.Module) -> ParameterCounts:
    params = list(model.parameters())
    return ParameterCounts(sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))


def authors_unused_parameters(head: HeadConfig) -> int:
    """Parameters the authors' decoder layers register but never call: a query self-attention and its norm.

    They are trainable there, so the paper's 193.1 M total / 40.5 M trainable include them; this implementation
    does not build them (their checkpoint keys are skipped on load).
    """
    d = head.dim
    self_attention = 3 * d * d + 3 * d + d * d + d  # packed in_proj weight and bias, out_proj weight and bias
    norm1 = 2 * d
    return len(head.stages) * head.layers * (self_attention + norm1)


def authors_parameter_counts(model: nn.Module) -> ParameterCounts:
    """Counts as the authors' model reports them: this model's plus the unused decoder self-attention."""
    ours = count_parameters(model)
    extra = authors_unused_parameters(model.cfg.head)
    return ParameterCounts(ours.total + extra, ours.trainable + extra)
