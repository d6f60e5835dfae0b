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
        # Fast path (see inference.fast_path.use_fast_path): the head and the upsampling run in fp32 under autocast, and
        # the logits are upsampled and returned in channels-last layout (same values, other strides).
        self.fast_path = False

    def freeze_pretrained(self) -> None:
        """The reference's trainable set: backbone parameters whose name contains "prompt", and the whole head. CLIP's
        weights, the text tower and the per-tap `ln_layers`/`proj_layers` stay frozen (docs/method.md, What is
        trained)."""
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
        if not self.fast_path:
            return upsample(self.decode_head(maps, global_embedding, text), images.shape[-2:])
        # Mask logits are small differences between classes of larger dot products. Against fp32, a bf16 encoder
        # with a bf16 head changed the class of 0.46% of the pixels, with an fp32 head 0.15%, at 0-4% more time
        # (benchmarks/RESULTS.md and its earlier runs: random weights, 171 classes, 512x512). Channels-last
        # upsampling of hundreds of classes is 2-4x faster on the CPU.
        with torch.autocast(images.device.type, enabled=False):
            logits = self.decode_head([m.float() for m in maps], global_embedding.float(), text.float())
            return upsample(logits.contiguous(memory_format=torch.channels_last), images.shape[-2:])


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear as the reference (align_corners=False)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
