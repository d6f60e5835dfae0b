"""Shared test set-up: offline, small thread count, tiny model configurations, the development data beside the
repository."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # never fetch from a hub in tests

import pytest
import torch

from cascadeclip.config import HeadConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from cascadeclip.inference import kernel_choice

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Nothing a test runs (in this process or a command it starts) writes to the user's cache folder: the session has its
# own, removed at exit; tests that need a folder of their own still set one.
_SESSION_CACHE = tempfile.TemporaryDirectory(prefix="cascadeclip-test-cache-")
os.environ["CASCADECLIP_CACHE"] = _SESSION_CACHE.name

# Kernel choices of the test session, kept in the session's cache folder, where the commands the tests start find
# them too: a run in this process and the same run in worker processes take the same kernels (and so the same numbers).
_SESSION_KERNEL_CHOICE = kernel_choice.KernelChoice(Path(_SESSION_CACHE.name) / "kernel_choices")


@pytest.fixture(autouse=True)
def _kernel_choices_in_memory(monkeypatch):
    monkeypatch.setattr(kernel_choice, "_process_choice", _SESSION_KERNEL_CHOICE)


# Development data that is not part of the repository (golden cases computed by the authors' code, real CLIP text
# embeddings) is read from ../shared beside it, or from $CASCADECLIP_SHARED_DIR. A clone on its own has none: the
# tests that need it skip, saying so, unless $CASCADECLIP_REQUIRE_SHARED=1 (CI) turns the skip into a failure.
SHARED_ENV = "CASCADECLIP_SHARED_DIR"
REQUIRE_SHARED_ENV = "CASCADECLIP_REQUIRE_SHARED"
SHARED_DIR = Path(os.environ.get(SHARED_ENV) or Path(__file__).resolve().parents[2] / "shared")


def shared_data(path: Path, what: str) -> Path:
    """`path` when it exists; otherwise skip the calling test with the reason, or fail it when the development data
    is required ($CASCADECLIP_REQUIRE_SHARED=1)."""
    if path.exists():
        return path
    reason = f"{what} not found at {path}: development data from ../shared beside the repository (or ${SHARED_ENV})"
    if os.environ.get(REQUIRE_SHARED_ENV) == "1":
        pytest.fail(f"{reason}; ${REQUIRE_SHARED_ENV}=1 requires it", pytrace=False)
    pytest.skip(reason)


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight tiny model with a text tower, in our format with the VOC class set (voc-inductive)."""
    from cascadeclip.config.presets import get_preset
    from cascadeclip.factory import save_model
    from cascadeclip.modeling.cascade_clip import CascadeCLIP

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_model(path, CascadeCLIP(tiny_model_config(with_text=True)).eval(), get_preset("voc-inductive").classes)
    return path


@pytest.fixture
def one_thread():
    """The miniature world's models are tiny: a second thread gains little, and on a busy machine it can stall
    every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
