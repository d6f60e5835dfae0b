"""The cascade: one text-image decoder per stage of encoder depth, mask logits summed (docs/method.md).

Read top to bottom, `CascadeHead.forward` is the method of the paper:
  1. relationship descriptor  T^ = [T * g, T]                      (per image, per class)
  2. per stage s: queries     Q_s = q_projs[s](T^)                 (independent projections)
  3. per stage s: memory      Z_s = sum_j w_sj * H_sj              (Neighbourhood Gaussian Aggregation, raw weights)
  4. per stage s: mask logits M_s = decoder_s(Q_s, Z_s)
  5. output                   M = M_1 + ... + M_S                  (plain, unweighted sum over the S stages)
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import HeadConfig, gaussian_stage_weights
from .text_image_decoder import TextImageDecoder


def relationship_descriptor(text: torch.Tensor, global_embedding: torch.Tensor) -> torch.Tensor:
    """(C, D) class embeddings, (B, D) image embedding -> (B, C, 2D): [text * image, text] (ZegCLIP's descriptor)."""
    text = text.unsqueeze(0).expand(global_embedding.shape[0], -1, -1)
    return torch.cat([text * global_embedding.unsqueeze(1), text], dim=-1)


class CascadeHead(nn.Module):
    """Stage-wise decoders over groups of encoder maps. Names mirror the authors' `decode_head.*` keys."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.q_projs = nn.ModuleList(nn.Linear(2 * cfg.dim, cfg.dim) for _ in cfg.stages)
        self.cascade_decoders = nn.ModuleList(
            TextImageDecoder(cfg.dim, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.layers) for _ in cfg.stages
        )
        # NGA weights exist for stages of several maps, named weights_s1, weights_s2, ... after the stage number
        # as in the reference, where the single-map last stage has none.
        for s, stage in enumerate(cfg.stages):
            if len(stage) > 1:
                self.register_parameter(
                    f"weights_s{s + 1}", nn.Parameter(torch.tensor(gaussian_stage_weights(len(stage))))
                )

    def stage_memory(self, s: int, maps: list[torch.Tensor]) -> torch.Tensor:
        """Aggregate the maps of stage s: list of (B, D, h, w) -> (B, h*w, D)."""
        stage = self.cfg.stages[s]
        if len(stage) == 1:
            aggregated = maps[stage[0]]
        else:
            weights = getattr(self, f"weights_s{s + 1}")
            aggregated = sum(weights[j] * maps[m] for j, m in enumerate(stage))
        return aggregated.flatten(2).transpose(1, 2)

    def forward(self, maps: list[torch.Tensor], global_embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Mask logits at token resolution.

        Args:
            maps: the encoder's dense maps, each (B, D, h, w), unit-norm per pixel.
            global_embedding: (B, D) unit-norm image embedding of the same images (or crops).
            text: (C, D) class embeddings, one row per query class.
        Returns:
            (B, C, h, w) summed mask logits of all stages.
        """
        batch, _, h, w = maps[-1].shape
        descriptor = relationship_descriptor(text.to(global_embedding.dtype), global_embedding)
        logits = 0
        for s, (q_proj, decoder) in enumerate(zip(self.q_projs, self.cascade_decoders, strict=True)):
            logits = logits + decoder(q_proj(descriptor), self.stage_memory(s, maps))
        return logits.reshape(batch, -1, h, w)
