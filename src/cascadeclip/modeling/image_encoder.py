"""CLIP ViT image encoder with deep visual prompt tuning and multi-level feature taps (docs/method.md, Image encoder).

Parameter names mirror the authors' `VPTCLIPVisionTransformer` (checkpoint prefix `backbone.`), whose CLIP part is
OpenAI's `visual.*` layout; the transformer blocks are open_clip's, which share that layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ImageEncoderConfig
from ..open_clip_parts import QuickGELU, Transformer
from .clip_block import block_forward


def resize_positional_grid(grid_rows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a square table of positional rows (N, W), N = g*g, to size[0]*size[1] rows."""
    n, width = grid_rows.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"positional table has {n} grid rows, which is not a square number")
    if (g, g) == tuple(size):
        return grid_rows
    grid = grid_rows.reshape(1, g, g, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(size[0] * size[1], width)


class ImageEncoder(nn.Module):
    """Frozen CLIP ViT + trainable deep prompts; returns L2-normalised dense maps and a global embedding.

    Token layout inside the transformer: [CLS, P_1..P_T, patch_1..patch_N]; the T prompt tokens are replaced before
    every block after the first by that block's projected deep prompts.

    `prompts_as_keys` (off by default, the reference's computation) runs the same function with less work: the
    prompts enter each block as keys and values only (`block_forward`'s `kv_only`), saving T / (1 + T + N) of the
    projections and MLPs (4.7% for COCO's T = 50 at 512x512). A block's outputs at the prompt positions are never
    read (the next block replaces the prompts, and after the last block only the CLS and patch tokens are used), so
    the output and the gradients are the reference's up to float rounding.
    """

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.cfg = cfg
        width, scale = cfg.width, cfg.width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, act_layer=QuickGELU, norm_layer=nn.LayerNorm)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.output_dim))
        # Per-tap LayerNorm and projection to the joint space. Not in CLIP, and frozen at their initial values in
        # the reference: checkpoints carry them, training never changes them
        # (docs/authors-code.md#frozen-random-per-tap-projections).
        self.ln_layers = nn.ModuleList(nn.LayerNorm(width) for _ in cfg.tap_blocks)
        self.proj_layers = nn.Parameter(scale * torch.randn(len(cfg.tap_blocks), width, cfg.output_dim))

        # Deep visual prompts: one shallow set plus one per later block, all through one shared projection.
        bound = math.sqrt(6.0 / (3 * cfg.patch_size**2 + width))
        self.prompt_embeddings = nn.Parameter(torch.empty(1, cfg.prompt_tokens, width).uniform_(-bound, bound))
        self.deep_prompt_embeddings = nn.Parameter(
            torch.empty(cfg.layers - 1, cfg.prompt_tokens, width).uniform_(-bound, bound)
        )
        self.prompt_proj = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
        self.prompt_norm = nn.LayerNorm(width, eps=1e-6)
        self.prompt_dropout = nn.Dropout(cfg.prompt_dropout)
        self.prompts_as_keys = False

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> CLS and patch tokens (B, 1 + h*w, width) before block 0, and the token grid (h, w)."""
        x = self.conv1(images.to(self.conv1.weight.dtype))  # the weights may be stored in bf16 for inference
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        # The CLS position row has the class embedding added once more: CLS = 2*class_embedding + pos[0]
        # (docs/authors-code.md#double-cls-embedding).
        pos = self.positional_embedding.to(x.dtype)
        cls_pos = (pos[0] + self.class_embedding.to(x.dtype)).unsqueeze(0)
        x = x + torch.cat([cls_pos, resize_positional_grid(pos[1:], grid)]).unsqueeze(0)
        return self.ln_pre(x), grid

    def _project_prompts(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        """(T, width) learnable prompts -> (B, T, width) tokens."""
        return self.prompt_dropout(self.prompt_proj(prompts).expand(batch, -1, -1))

    def _dense_map(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h*w, D) patch features -> (B, D, h, w), L2-normalised per pixel."""
        b, _, d = patches.shape
        dense = patches.transpose(1, 2).reshape(b, d, *grid)
        return F.normalize(dense, dim=1)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encode images.

        Args:
            images: (B, 3, H, W), normalised; H and W multiples of the patch size.
        Returns:
            maps: list of len(tap_blocks) + 1 tensors (B, D, H/p, W/p), unit-norm per pixel: one per tapped block,
                then the final map.
            global_embedding: (B, D), the unit-norm CLS embedding.
        """
        p = self.cfg.patch_size
        if images.shape[-1] % p or images.shape[-2] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} must be a multiple of the patch size {p}")
        x, grid = self._embed(images)  # CLS and patch tokens; the prompts are held apart
        maps = []
        for i, block in enumerate(self.transformer.resblocks):
            prompt_set = self.prompt_embeddings[0] if i == 0 else self.deep_prompt_embeddings[i - 1]
            prompts = self._project_prompts(prompt_set, x.shape[0])
            if self.prompts_as_keys:
                x = block_forward(block, x, kv_only=prompts)
            else:
                # The reference: prompts between CLS and patches; their outputs are replaced before the next block.
                x = block_forward(block, torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1))
                x = torch.cat([x[:, :1], x[:, 1 + prompts.shape[1] :]], dim=1)
            if i in self.cfg.tap_blocks:
                k = self.cfg.tap_blocks.index(i)
                # LayerNorm and projection act per token, so only the patch tokens need them.
                patches = self.ln_layers[k](self.prompt_norm(x[:, 1:])) @ self.proj_layers[k]
                maps.append(self._dense_map(patches, grid))
        # One product over all tokens: a slice of them would be a strided view, which autograd multiplies as a
        # batch of products with the matrix expanded per image instead of one product.
        x = self.ln_post(self.prompt_norm(x)) @ self.proj
        global_embedding = F.normalize(x[:, 0], dim=-1)
        maps.append(self._dense_map(x[:, 1:], grid))
        return maps, global_embedding
