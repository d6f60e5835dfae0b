"""The Cascade-CLIP segmentor: image encoder + cascade head (+ optional frozen text tower).

Module names follow the authors' segmentor (`backbone`, `decode_head`, `text_encoder`), so their checkpoint keys
map onto this model unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .cascade_head import CascadeHead
from .image_encoder import ImageEncoder
from .text_encoder import TextEncoder


class CascadeCLIP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = ImageEncoder(cfg.image_encoder)
        self.decode_head = CascadeHead(cfg.head)
        self.text_encoder = TextEncoder(cfg.text_encoder) if cfg.text_encoder is not None else None
        self.freeze_pretrained()
        # Fast path (see acceleration.use_fast_path): upsample in channels-last layout, 2-3x faster on the CPU for
        # hundreds of classes; the logits are then returned in that layout (same values, other strides).
        self.channels_last_upsampling = False

    def freeze_pretrained(self) -> None:
        """The reference's trainable set (spec §2.1): backbone parameters whose name contains "prompt", and the
        whole head. CLIP's weights, the text tower and the per-tap `ln_layers`/`proj_layers` stay frozen."""
        for name, param in self.backbone.named_parameters():
            param.requires_grad_("prompt" in name)
        for param in self.decode_head.parameters():
            param.requires_grad_(True)
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(False)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Mask logits.

        Args:
            images: (B, 3, H, W) normalised images, H and W multiples of the patch size.
            text: (C, D) class embeddings of the query classes.
        Returns:
            (B, C, H, W) mask logits, bilinearly upsampled from the token grid.
        """
        maps, global_embedding = self.backbone(images)
        logits = self.decode_head(maps, global_embedding, text)
        if self.channels_last_upsampling:
            logits = logits.contiguous(memory_format=torch.channels_last)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
