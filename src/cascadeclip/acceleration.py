"""The fast inference path: the same function as the reference computation, with less work and faster kernels.

- `use_fast_path(model)`: the image encoder's prompts enter each block as keys and values only
  (`ImageEncoder.prompts_as_keys`), and the mask logits are upsampled in channels-last layout
  (`CascadeCLIP.channels_last_upsampling`). The head already skips what its output does not use (the last decoder layer's
  value path and FFN; the query self-attention is not built) and attention everywhere is PyTorch's fused
  scaled-dot-product attention.
- `fast_inference(device, precision)`: autograd off; fp32 linear layers on the CPU through oneDNN (`onednn_linears`);
  bf16 autocast for precision "bf16", on the CPU or CUDA.

Why oneDNN: for fp32, PyTorch's CPU linear layers call MKL, which runs its AVX2 code on AMD CPUs. On the ViT's
MLP shape (1075x768 @ 768x3072, one thread, AMD EPYC Zen 5, torch 2.14.1) MKL reached 40 GFLOP/s and oneDNN 137.
On Intel CPUs the two are on par. Results differ by float rounding only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .modeling.cascade_clip import CascadeCLIP

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def use_fast_path(model: CascadeCLIP, enabled: bool = True) -> CascadeCLIP:
    """Switch `model` (in place) to the fast computation, or back to the reference's; returns it."""
    model.backbone.prompts_as_keys = enabled
    model.channels_last_upsampling = enabled
    return model


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _OneDNNLinears(TorchFunctionMode):
    """Sends F.linear (hence every nn.Linear) on fp32 CPU tensors without autograd to oneDNN; the rest unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            named = dict(zip(("input", "weight", "bias"), args)) | kwargs
            x, weight, bias = named["input"], named["weight"], named.get("bias")
            if _routable(x, weight, bias):
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return func(*args, **kwargs)


def _routable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    tensors = [t for t in (x, weight, bias) if t is not None]
    return (
        x.dim() >= 2
        and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.layout == torch.strided for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # compiled graphs choose their own kernels
    )


@contextlib.contextmanager
def onednn_linears() -> Iterator[None]:
    """Within the context, fp32 CPU linear layers without autograd run on oneDNN (no-op where it is unavailable)."""
    if not onednn_available():
        yield
        return
    with _OneDNNLinears():
        yield


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` ("cpu" or "cuda") for precision "bf16"; nothing for "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision])


@contextlib.contextmanager
def fast_inference(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """Autograd off, oneDNN linear layers on the CPU, and autocast for bf16."""
    with torch.inference_mode(), onednn_linears(), autocast(device, precision):
        yield
