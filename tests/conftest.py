"""Shared test set-up: offline, small thread count, tiny model configurations."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never fetch from a hub in tests

import pytest
import torch

from cascadeclip.config import HeadConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_model_config(prompt_tokens: int = 4, image_size: int = 64, with_text: bool = False) -> ModelConfig:
    """ViT with 12 blocks (so the reference taps 5..10 exist), width 64, patch 16, 32-d joint space."""
    return ModelConfig(
        image_encoder=ImageEncoderConfig(
            image_size=image_size, width=64, heads=4, output_dim=32, prompt_tokens=prompt_tokens
        ),
        head=HeadConfig(dim=32, heads=4, ffn_dim=64),
        text_encoder=TextEncoderConfig(width=32, heads=2, layers=2, output_dim=32) if with_text else None,
    )


@pytest.fixture
def tiny_config() -> ModelConfig:
    return tiny_model_config()
