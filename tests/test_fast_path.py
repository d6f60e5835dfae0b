"""The fast inference path, on tiny models: the same function as the reference computation, and its runtime context.

Speed itself is measured by benchmarks/efficiency.py, not here.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cascadeclip import Segmenter
from cascadeclip.cli.main import main
from cascadeclip.inference import fast_path
from cascadeclip.inference.fast_path import fast_inference
from cascadeclip.inference.predict import predict_scores, seen_shift_vector
from cascadeclip.modeling import image_encoder
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.modeling.loss import cascade_loss

from conftest import tiny_model_config

# Float rounding of a different order of summation (and oneDNN instead of MKL) stays far below this; a change of
# function (a prompt token treated as a query, a missing block) is orders of magnitude larger.
FAST_PATH_ATOL = 1e-4


def tiny_model(prompt_tokens: int = 4, image_size: int = 64) -> CascadeCLIP:
    torch.manual_seed(0)
    return CascadeCLIP(tiny_model_config(prompt_tokens=prompt_tokens, image_size=image_size)).eval()


def text_embeddings(num_classes: int, dim: int = 32) -> torch.Tensor:
    return F.normalize(torch.randn(num_classes, dim), dim=-1)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_fast_path_logits_equal_the_reference(size):
    model = tiny_model()
    images, text = torch.randn(2, 3, *size), text_embeddings(5)
    with torch.no_grad():
        reference = model(images, text)
    with fast_inference("cpu", "fp32"):
        fast = model.set_fast_path(True)(images, text)
    assert model.backbone.prompts_as_keys
    torch.testing.assert_close(fast, reference, atol=FAST_PATH_ATOL, rtol=0)
    assert reference.abs().max() > 100 * FAST_PATH_ATOL  # the comparison is not between near-zero outputs


@pytest.mark.parametrize("stored", [False, True], ids=["autocast", "encoder stored in bf16"])
def test_fast_path_in_bf16_runs_the_encoder_in_bf16_and_the_head_in_fp32(stored):
    model = tiny_model().set_fast_path(True)
    images, text = torch.randn(2, 3, 64, 64), text_embeddings(5)
    with fast_inference("cpu", "fp32"):
        fp32 = model(images, text)
    if stored:
        model.store_encoder_in_bf16()
        assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in model.decode_head.parameters()} == {torch.float32}
    dtypes = {}
    model.backbone.register_forward_hook(lambda module, args, out: dtypes.update(encoder=out[0][0].dtype))
    model.decode_head.register_forward_hook(lambda module, args, out: dtypes.update(head=out.dtype))
    with fast_inference("cpu", "bf16"):
        bf16 = model(images, text)
    assert dtypes == {"encoder": torch.bfloat16, "head": torch.float32} and bf16.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: logits of order 1 agree to a few 1e-2, not to fp32 precision.
    torch.testing.assert_close(bf16, fp32, atol=5e-2, rtol=5e-2)


class ExpandedProducts(TorchDispatchMode):
    """Records batched matrix products of which an operand is expanded (stride 0): autograd's fallback for a matrix
    product of a strided view, with the matrix repeated per row of the batch, many times slower than one product."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.bmm.default:
            self.shapes += [tuple(t.shape) for t in args if isinstance(t, torch.Tensor) and 0 in t.stride()]
        return func(*args, **(kwargs or {}))


def training_gradients(model: CascadeCLIP, record: ExpandedProducts) -> dict[str, torch.Tensor]:
    """Gradients of one training step (inductive loss, dropout off) on fixed random inputs."""
    torch.manual_seed(1)
    images, text, labels = torch.randn(2, 3, 64, 64), text_embeddings(5), torch.randint(0, 6, (2, 64, 64))
    labels[labels == 5] = 255  # some ignored pixels
    model.zero_grad()
    with record:
        losses = cascade_loss(model(images, text), labels)
        (losses["loss_focal"] + losses["loss_dice"]).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast path"])
def test_a_training_step_has_the_gradients_of_open_clips_blocks_without_expanded_products(fast, monkeypatch):
    model = tiny_model().train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with monkeypatch.context() as patch:  # the blocks through open_clip's own module (nn.MultiheadAttention)
        patch.setattr(image_encoder, "block_forward", lambda block, tokens: block(tokens))
        module_record = ExpandedProducts()
        expected = training_gradients(model, module_record)
    record = ExpandedProducts()
    gradients = training_gradients(model.set_fast_path(fast), record)
    assert module_record.shapes  # the check below can fail: the module's layout takes the slow fallback
    assert record.shapes == []
    assert gradients.keys() == expected.keys() and "backbone.prompt_embeddings" in gradients
    # Float rounding of sums in another order. Some gradients are zero in exact arithmetic (a key bias before a
    # softmax shifts all logits of a query alike) and are rounding noise: the absolute tolerance is relative to the
    # largest gradient of the model.
    scale = max(g.abs().max().item() for g in expected.values())
    for name, gradient in gradients.items():
        torch.testing.assert_close(
            gradient, expected[name], rtol=1e-4, atol=1e-5 * scale, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_fast_path_slide_scores_equal_the_reference():
    model = tiny_model()
    image, text = torch.randn(1, 3, 80, 112), text_embeddings(5)
    shift = seen_shift_vector(5, [0, 2, 3], 0.1)
    args = dict(crop=64, stride=48, window_batch=2, out_size=(75, 105))
    reference = predict_scores(model, image, text, shift, **args)
    with fast_inference("cpu", "fp32"):
        fast = predict_scores(model.set_fast_path(True), image, text, shift, **args)
    torch.testing.assert_close(fast, reference, atol=FAST_PATH_ATOL, rtol=0)
    assert torch.equal(fast.argmax(dim=1), reference.argmax(dim=1))


def test_glibc_keeps_freed_memory():
    # mallopt returns 0 for a value out of its range, so this fails if a threshold is set beyond glibc's limits.
    assert fast_path.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_the_segmenter_changes_the_process_only_when_asked(monkeypatch, tmp_path):
    mallopt_calls = []
    monkeypatch.setattr(fast_path, "_mallopt", lambda *args: mallopt_calls.append(args) or True)
    environment, threads = dict(os.environ), torch.get_num_threads()
    for asked in (False, True):
        with pytest.warns(UserWarning, match="RANDOM weights"):
            segmenter = Segmenter.with_random_weights(
                tiny_model_config(with_text=True), device="cpu", cache_dir=tmp_path, keep_freed_memory=asked
            )
        segmenter.predict(np.zeros((40, 50, 3), dtype=np.uint8), ["a", "b"])
        assert dict(os.environ) == environment and torch.get_num_threads() == threads
        assert bool(mallopt_calls) is asked  # the allocator is changed when asked for, and only then


def test_importing_the_library_leaves_the_environment_and_warning_filters_as_they_were():
    # In a fresh interpreter: open_clip, which the library builds on, sets variables and a filter when first imported.
    probe = (
        "import os, warnings, torch; environment, filters = dict(os.environ), list(warnings.filters); "
        "import cascadeclip.segmenter, cascadeclip.world.shipped; "
        "print(dict(os.environ) == environment, warnings.filters == filters)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"], result.stdout + result.stderr


def test_the_command_line_tunes_its_own_process_and_loads_pytorch_after_choosing_huge_pages(monkeypatch):
    # PyTorch reads THP_MEM_ALLOC_ENABLE once, when it loads: importing the entry point must not load it.
    probe = "import sys, cascadeclip.cli.main; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"
    mallopt_calls = []
    monkeypatch.setattr(fast_path, "_mallopt", lambda *args: mallopt_calls.append(args) or True)
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    main(["bench", "voc-inductive", "--images", "5", "--warmup", "5"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1" and mallopt_calls
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # the user's choice wins
    main(["bench", "voc-inductive", "--images", "5", "--warmup", "5"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
