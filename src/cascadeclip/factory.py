"""Build a Cascade-CLIP model and load weights into it, whatever the file: ours, the authors', or OpenAI CLIP."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import torch

from .checkpoints import (
    CheckpointError,
    LoadReport,
    clip_to_cascade_state,
    load_clip_weights,
    load_state,
    read_authors_checkpoint,
    read_model_file,
    read_openai_clip,
    text_config_from_clip,
)
from .config import ClassesConfig, ModelConfig
from .modeling.cascade_clip import CascadeCLIP
from .modeling.text_encoder import TextEncoder


def model_config_from_authors_state(
    state: dict[str, torch.Tensor], base: ModelConfig | None = None, with_text_encoder: bool = True
) -> ModelConfig:
    """Sizes read off an authors' state dict; what shapes cannot tell (head counts, tap blocks) comes from `base`.

    Without `base`, head counts are width / 64 as in ViT-B/16 and its 512-wide decoders. The text tower is
    included when asked for and present in the file.
    """
    base = base or ModelConfig()
    try:
        conv = state["backbone.conv1.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        layers = len({k.split(".")[3] for k in state if k.startswith("backbone.transformer.resblocks.")})
        grid = math.isqrt(state["backbone.positional_embedding"].shape[0] - 1)
        dim = state["decode_head.q_projs.0.weight"].shape[0]
        decoders = len({k.split(".")[2] for k in state if k.startswith("decode_head.cascade_decoders.")})
        decoder_layers = len(
            {k.split(".")[4] for k in state if k.startswith("decode_head.cascade_decoders.0.layers.")}
        )
        taps = state["backbone.proj_layers"].shape[0]
        encoder = dataclasses.replace(
            base.image_encoder,
            image_size=grid * patch,
            patch_size=patch,
            width=width,
            layers=layers,
            heads=base.image_encoder.heads if base.image_encoder.width == width else max(1, width // 64),
            output_dim=state["backbone.proj"].shape[1],
            prompt_tokens=state["backbone.prompt_embeddings"].shape[1],
        )
        head = dataclasses.replace(
            base.head,
            dim=dim,
            heads=base.head.heads if base.head.dim == dim else max(1, dim // 64),
            layers=decoder_layers,
            ffn_dim=state["decode_head.cascade_decoders.0.layers.0.linear1.weight"].shape[0],
        )
    except KeyError as err:
        raise CheckpointError(f"not a Cascade-CLIP state dict: key {err} is missing") from err
    if taps != len(encoder.tap_blocks):
        raise CheckpointError(
            f"the checkpoint has {taps} tapped blocks but the configuration taps {encoder.tap_blocks}; "
            "set model.image_encoder.tap_blocks to the blocks it was trained with"
        )
    if decoders != len(head.stages):
        raise CheckpointError(
            f"the checkpoint has {decoders} decoders but the configuration has stages {head.stages}; "
            "set model.head.stages to the grouping it was trained with"
        )
    has_text = with_text_encoder and "text_encoder.ln_final.weight" in state
    text = text_config_from_clip(state, prefix="text_encoder.") if has_text else None
    return ModelConfig(image_encoder=encoder, head=head, text_encoder=text)


def load_checkpoint(
    path: str | Path, base: ModelConfig | None = None, with_text_encoder: bool = True
) -> tuple[CascadeCLIP, ClassesConfig | None, LoadReport]:
    """Build the model stored in `path` and load it.

    Args:
        path: one of our `.safetensors` files, or an authors' `.pth` (unpickled: trusted files only).
        base: configuration for what an authors' file cannot tell (head counts, taps); the presets' defaults if None.
        with_text_encoder: keep the CLIP text tower when the file has one (needed to embed new class names).
    Returns:
        (model in eval mode, the class set stored with the weights or None, what was loaded and skipped).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        cfg, classes, info, tensors = read_model_file(path)
        if not with_text_encoder and cfg.text_encoder is not None:
            cfg = dataclasses.replace(cfg, text_encoder=None)
            tensors = {k: v for k, v in tensors.items() if not k.startswith("text_encoder.")}
        model = CascadeCLIP(cfg)
        report = load_state(model, tensors, str(path))
        return model.eval(), classes, report
    state, _ = read_authors_checkpoint(path)
    model, report = model_from_authors_state(state, str(path), base, with_text_encoder)
    return model, None, report


def model_from_authors_state(
    state: dict[str, torch.Tensor], source: str, base: ModelConfig | None = None, with_text_encoder: bool = True
) -> tuple[CascadeCLIP, LoadReport]:
    """Build the model an authors' state dict describes (see `model_config_from_authors_state`) and load it."""
    cfg = model_config_from_authors_state(state, base, with_text_encoder)
    model = CascadeCLIP(cfg)
    return model.eval(), load_state(model, state, source)


def create_model(cfg: ModelConfig, clip_weights: str | Path | None = None) -> tuple[CascadeCLIP, LoadReport | None]:
    """A new model, its CLIP parts initialised from OpenAI weights when given, else random (with a warning)."""
    if clip_weights is not None:
        clip_state = read_openai_clip(clip_weights)
        if cfg.text_encoder is None:
            cfg = dataclasses.replace(cfg, text_encoder=text_config_from_clip(clip_state))
        model = CascadeCLIP(cfg)
        return model, load_clip_weights(model, clip_state, clip_weights)
    warnings.warn("no CLIP weights given: the model has random weights and its predictions are meaningless",
                  stacklevel=2)  # fmt: skip
    return CascadeCLIP(cfg), None


def load_text_encoder(clip_weights: str | Path) -> TextEncoder:
    """The CLIP text tower alone, from OpenAI CLIP weights: embeds class names for a model saved without one."""
    clip_state = read_openai_clip(clip_weights)
    cfg = ModelConfig(text_encoder=text_config_from_clip(clip_state))
    text_only = {k: v for k, v in clip_state.items() if not k.startswith("visual.")}
    state = {k.removeprefix("text_encoder."): v for k, v in clip_to_cascade_state(text_only, cfg).items()}
    encoder = TextEncoder(cfg.text_encoder)
    result = encoder.load_state_dict(state, strict=False)  # sizes come from the file, so only names can differ
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{clip_weights}: not a complete CLIP text tower (missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}); give OpenAI's ViT-B-16.pt"
        )
    return encoder.eval()
