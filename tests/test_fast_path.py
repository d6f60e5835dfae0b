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

from cascadeclip import Segmenter
from cascadeclip.cli.main import main
from cascadeclip.inference import fast_path
from cascadeclip.inference.fast_path import fast_inference
from cascadeclip.inference.predict import predict_scores, seen_shift_vector
from cascadeclip.modeling.cascade_clip import CascadeCLIP

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
