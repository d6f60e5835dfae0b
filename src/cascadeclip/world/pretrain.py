"""A tiny CLIP for the miniature world, pretrained contrastively on scene-caption pairs and saved as OpenAI does.

The image tower is a ViT of the ViT-B/16 family (12 blocks, so the taps after blocks 5..10 exist) at small width;
the text tower uses the real CLIP tokenizer. Captions name every object, unseen classes included: like CLIP's web
data, pretraining knows every concept, and only the segmentation training withholds the unseen classes' masks.
`cascadeclip.world.shipped` saves the result as a TorchScript archive in OpenAI's key layout, so that
`create_model(cfg, clip_weights=path)` loads it with the same code as `ViT-B-16.pt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config.class_names import WORLD_CLASSES, WORLD_UNSEEN
from ..data.transforms import normalize
from ..inference.text_embeddings import SINGLE_TEMPLATE
from ..open_clip_parts import CLIP, CLIPTextCfg, CLIPVisionCfg, tokenize
from .scenes import render_scene, scene_rng, single_object, texture


@dataclass(frozen=True)
class TinyClipConfig:
    image_size: int = 64
    patch_size: int = 8
    width: int = 64
    layers: int = 12
    head_width: int = 32  # image tower heads = width / head_width
    embed_dim: int = 64  # joint space (the segmentor's head.dim)
    text_width: int = 64  # text heads = width / 64, as OpenAI's (and `text_config_from_clip`) assume
    text_layers: int = 4
    context_length: int = 32
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50
    # What a pretraining batch shows (docs/world.md): textures (the whole image one object) and single large objects
    # tie each caption to the pixels it names; the rest are scenes of 1-4 objects. Patch dropout hides this share of
    # the image tokens at each step, so that the global embedding must be read off any few patches: every token
    # learns to carry its object's class, which is what the segmentor reads.
    texture_fraction: float = 0.3
    single_object_fraction: float = 0.35
    patch_dropout: float = 0.5
    zero_shot_images: int = 40  # single objects per class for the zero-shot accuracy
    seed: int = 0


def build_clip(cfg: TinyClipConfig) -> CLIP:
    torch.manual_seed(cfg.seed)
    return CLIP(
        cfg.embed_dim,
        CLIPVisionCfg(
            layers=cfg.layers,
            width=cfg.width,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
            head_width=cfg.head_width,
            patch_dropout=cfg.patch_dropout,  # active in training mode only
        ),
        CLIPTextCfg(
            context_length=cfg.context_length,
            vocab_size=49408,
            width=cfg.text_width,
            heads=max(1, cfg.text_width // 64),
            layers=cfg.text_layers,
        ),
        quick_gelu=True,
    )


def image_batch(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 images -> (B, 3, H, W) ImageNet-normalised, as the segmentation pipeline feeds them."""
    return normalize(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float())


def pretraining_batch(cfg: TinyClipConfig, step: int) -> tuple[torch.Tensor, list[str]]:
    images, captions = [], []
    for b in range(cfg.batch_size):
        rng = scene_rng(cfg.seed, "pretrain", step * cfg.batch_size + b)
        kind = rng.uniform()
        if kind < cfg.texture_fraction:
            scene = texture(rng, int(rng.integers(len(WORLD_CLASSES))), cfg.image_size)
        elif kind < cfg.texture_fraction + cfg.single_object_fraction:
            scene = single_object(rng, int(rng.integers(len(WORLD_CLASSES))), cfg.image_size)
        else:
            scene = render_scene(rng, cfg.image_size, num_objects=(1, 4))
        images.append(scene.image)
        captions.append(scene.caption)
    return image_batch(images), captions


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, captions: list[str]
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy, where identical captions in a batch all count as matches (a batch often holds
    several 'a photo of a red plain'; calling them negatives of each other would be false). `logit_scale` is the
    inverse temperature, already exponentiated as open_clip's CLIP returns it."""
    logits = logit_scale * image_features @ text_features.T
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    targets = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def learning_rate(cfg: TinyClipConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))


def pretrain(cfg: TinyClipConfig, progress: bool = True) -> tuple[CLIP, list[float]]:
    """Train a tiny CLIP from scratch; returns it (eval mode) and the loss of every step."""
    clip = build_clip(cfg).train()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=cfg.lr, weight_decay=0.1)
    losses = []
    bar = tqdm(range(cfg.steps), desc="pretrain tiny CLIP", disable=not progress, dynamic_ncols=True)
    for step in bar:
        images, captions = pretraining_batch(cfg, step)
        tokens = tokenize(captions, context_length=cfg.context_length)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        image_features, text_features, logit_scale = clip(images, tokens)
        loss = contrastive_loss(image_features, text_features, logit_scale, captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return clip.eval(), losses


@torch.no_grad()
def zero_shot_accuracy(clip: CLIP, cfg: TinyClipConfig, classes: tuple[int, ...]) -> float:
    """Top-1 accuracy, among all world classes, on single objects of `classes`, from the class names alone
    ('a photo of a {}', the template the segmentation queries use)."""
    prompts = [SINGLE_TEMPLATE[0].format(name) for name in WORLD_CLASSES]
    text = F.normalize(clip.encode_text(tokenize(prompts, context_length=cfg.context_length)), dim=-1)
    correct, per_class = 0, cfg.zero_shot_images
    for c in classes:
        scenes = [
            single_object(scene_rng(cfg.seed, "zero_shot", c * per_class + i), c, cfg.image_size)
            for i in range(per_class)
        ]
        features = F.normalize(clip.encode_image(image_batch([s.image for s in scenes])), dim=-1)
        correct += int(((features @ text.T).argmax(1) == c).sum())
    return correct / (per_class * len(classes))


def pretraining_facts(cfg: TinyClipConfig, progress: bool = True) -> tuple[CLIP, dict]:
    """Pretrain a tiny CLIP; returns it and its facts: the loss of every step and the zero-shot accuracies (fractions)
    on single objects of the unseen and of the seen classes."""
    clip, losses = pretrain(cfg, progress)
    seen = tuple(c for c in range(len(WORLD_CLASSES)) if c not in WORLD_UNSEEN)
    return clip, {
        "losses": losses,
        "zero_shot_accuracy_unseen": zero_shot_accuracy(clip, cfg, WORLD_UNSEEN),
        "zero_shot_accuracy_seen": zero_shot_accuracy(clip, cfg, seen),
    }
