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
        self.fast_path = False  # see set_fast_path

    def set_fast_path(self, enabled: bool = True) -> CascadeCLIP:
        """Compute the same function with less work (or, with False, as the reference does); returns the model.

        On the fast path the image encoder's prompts enter each block as keys and values only
        (`ImageEncoder.prompts_as_keys`), and the head and the upsampling stay in fp32 under bf16 autocast. Logits and
        gradients differ from the reference's by float rounding only (tests/test_fast_path.py). Faster kernels for the
        same operations are the runtime's business (`inference.fast_path.fast_inference`).
        """
        self.fast_path = enabled
        self.backbone.prompts_as_keys = enabled
        return self

    def store_encoder_in_bf16(self) -> CascadeCLIP:
        """Store the image encoder's weights in bf16, in place, for bf16 inference; returns the model.

        The encoder then runs in bf16 in any context, and bf16 autocast no longer casts its weights on every forward;
        they also take half the memory. The head stays in fp32. The fp32 weights are not kept.
        """
        self.backbone.to(torch.bfloat16)
        return self

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
        """Mask logits: `decode(*encode(images), text, images.shape[-2:])`.

        Args:
            images: (B, 3, H, W) normalised images, H and W multiples of the patch size.
            text: (C, D) class embeddings of the query classes.
        Returns:
            (B, C, H, W) mask logits, bilinearly upsampled from the token grid.
        """
        maps, global_embedding = self.encode(images)
        return self.decode(maps, global_embedding, text, images.shape[-2:])

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The image encoder's output, which does not depend on the class names (kept to try other names).

        Args:
            images: (B, 3, H, W) normalised images, H and W multiples of the patch size.
        Returns:
            maps: the dense maps (B, D, H/p, W/p) of the tapped blocks and the last; global_embedding: (B, D).
        """
        return self.backbone(images)

    def decode(
        self, maps: list[torch.Tensor], global_embedding: torch.Tensor, text: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Mask logits of encoded images for the classes of `text`: the head, then upsampling.

        Args:
            maps, global_embedding: as `encode` returns them.
            text: (C, D) class embeddings of the query classes.
            size: (H, W) of the encoded images.
        Returns:
            (B, C, H, W) mask logits.
        """
        if self.fast_path:
            # Mask logits are small differences between classes of larger dot products: the head keeps fp32 under
            # bf16 autocast (agreement measured in benchmarks/NOTES.md).
            with torch.autocast(global_embedding.device.type, enabled=False):
                logits = self.decode_head([m.float() for m in maps], global_embedding.float(), text.float())
                return upsample(logits, size)
        return upsample(self.decode_head(maps, global_embedding, text), size)


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear as the reference (align_corners=False)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
