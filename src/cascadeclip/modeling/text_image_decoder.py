"""The text-image decoder of one cascade stage (docs/method.md, Decoders).

Class queries cross-attend to the stage's feature map through stacked post-norm layers (cross-attention + FFN, no
self-attention among queries). The decoder's output is the head-averaged pre-softmax attention logit of its last
layer: one mask logit per (class, pixel). Names mirror the authors' `cascade_decoders.{s}.layers.{k}` modules.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of queries over a memory with separate q/k/v projections, all with bias."""

    def __init__(self, dim: int, heads: int, attn_dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.attn_dropout = attn_dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, C, D) queries, (B, N, D) memory -> (B, C, D) attended values, projected."""
        q, k, v = (
            self._split_heads(self.q(queries)),
            self._split_heads(self.k(memory)),
            self._split_heads(self.v(memory)),
        )
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        return self.proj(out.transpose(1, 2).flatten(2))

    def mean_logits(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, C, D), (B, N, D) -> (B, C, N): the pre-softmax logits q_h.k_h * scale averaged over heads.

        The per-head dot products sum to the full-width dot product, so the mean over heads is one matmul.
        """
        return (self.q(queries) @ self.k(memory).transpose(1, 2)) * (self.scale / self.heads)


class DecoderLayer(nn.Module):
    """Post-norm layer: q <- norm2(q + CrossAttn(q, m)); q <- norm3(q + FFN(q)). ReLU FFN, dropout in branches."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.multihead_attn = CrossAttention(dim, heads, attn_dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, C, D) queries, (B, N, D) memory -> (B, C, D) updated queries."""
        q = self.norm2(queries + self.dropout2(self.multihead_attn(queries, memory)))
        return self.norm3(q + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(q))))))


class TextImageDecoder(nn.Module):
    """A stack of decoder layers whose last layer yields mask logits instead of updated queries."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, num_layers: int):
        super().__init__()
        # The reference deep-copies one layer, so the layers of a decoder start identical
        # (docs/authors-code.md#head-initialisation).
        layer = DecoderLayer(dim, heads, ffn_dim, dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Mask logits of one stage.

        Args:
            queries: (B, C, D) class queries.
            memory: (B, N, D) the stage's feature map, flattened.
        Returns:
            (B, C, N) head-averaged attention logits of the last layer. The last layer's value path, projection
            and FFN do not influence them and are not run.
        """
        for layer in self.layers[:-1]:
            queries = layer(queries, memory)
        return self.layers[-1].multihead_attn.mean_logits(queries, memory)
