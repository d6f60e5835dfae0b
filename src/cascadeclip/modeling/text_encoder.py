"""The CLIP text tower, frozen; parameter names as in OpenAI CLIP and the authors' `text_encoder.*` (docs/method.md,
Class embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextEncoderConfig
from ..open_clip_parts import QuickGELU, Transformer
from .clip_block import block_forward


class TextEncoder(nn.Module):
    """Token ids -> unit-norm text embeddings in CLIP's joint space."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, act_layer=QuickGELU, norm_layer=nn.LayerNorm)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(cfg.width**-0.5 * torch.randn(cfg.width, cfg.output_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) int token ids with SOT/EOT (EOT has the largest id) -> (N, D) unit-norm embeddings."""
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        for block in self.transformer.resblocks:  # CLIP's causal mask: a token sees itself and those before it
            x = block_forward(block, x, causal=True)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection
        return F.normalize(x, dim=-1)
