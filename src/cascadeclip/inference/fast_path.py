"""The runtime of fast inference: faster kernels, memory reuse and autocast around a model's forward.

The model owns the computation (`CascadeCLIP.set_fast_path`: the same function with less work;
`CascadeCLIP.store_encoder_in_bf16` for bf16 inference); this module owns the context it runs in:
- `fast_inference(device, precision)`: autograd off; on the CPU, fp32 linear layers through oneDNN and attention by
  matrix products (`fast_cpu_kernels`); bf16 autocast for precision "bf16", on the CPU or CUDA.
- `keep_freed_memory()`: glibc keeps freed memory for reuse, a process-wide setting made only when a caller asks.

Why these kernels: PyTorch's fp32 CPU linear layers call MKL, which runs its AVX2 code on AMD CPUs, and attention as
cache-sized matrix products beat PyTorch's fused kernel there (measurements: benchmarks/README.md). Results differ by
float rounding only.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _FastCPUKernels(TorchFunctionMode):
    """On CPU tensors without autograd: F.linear (hence every nn.Linear) and products with a matrix (`x @ W`, W 2-D)
    in fp32 on oneDNN, and attention (F.scaled_dot_product_attention without mask or dropout) in fp32 and bf16 by
    matrix products (`_attention`). Every other call is left unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            named = dict(zip(("input", "weight", "bias"), args, strict=False))  # args may stop early | kwargs
            x, weight, bias = named["input"], named["weight"], named.get("bias")
            if x.dim() >= 2 and _plain_cpu(torch.float32, x, weight, bias):
                return _onednn_linear(x, weight, bias)
        elif func in _MATMULS and len(args) == 2 and not kwargs:
            x, matrix = args
            if x.dim() >= 2 and matrix.dim() == 2 and _plain_cpu(torch.float32, x, matrix):
                return _onednn_linear(x, matrix.T, None)
        elif func is F.scaled_dot_product_attention:
            named = (
                dict(zip(("query", "key", "value", "attn_mask", "dropout_p", "is_causal"), args, strict=False)) | kwargs
            )
            q, k, v = named["query"], named["key"], named["value"]
            options = ("dropout_p", "is_causal", "enable_gqa")
            plain = named.get("attn_mask") is None and not any(named.get(n) for n in options)
            if plain and q.dim() == 4 and q.shape[:2] == k.shape[:2] and _plain_cpu(q.dtype, q, k, v):
                return _attention(q, k, v, named.get("scale") or q.shape[-1] ** -0.5)
        return func(*args, **kwargs)


_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)  # `x @ W` arrives as Tensor.matmul


def _plain_cpu(dtype: torch.dtype, *tensors: torch.Tensor | None) -> bool:
    """Whether the tensors are dense CPU tensors of `dtype` (fp32 outside autocast, or bf16) that need no autograd."""
    tensors = [t for t in tensors if t is not None]
    return (
        (dtype == torch.bfloat16 or (dtype == torch.float32 and not torch.is_autocast_enabled("cpu")))
        and all(t.device.type == "cpu" and t.dtype == dtype and t.layout == torch.strided for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()  # compiled graphs choose their own kernels
    )


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, query_block: int = 256) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, H, L, d) queries and (B, H, S, d) keys and values -> (B, H, L, d).

    In fp32 two oneDNN products per image and head, whose (L, S) logits stay in cache; in bf16 blocks of
    `query_block` queries over all heads.
    """
    out = torch.empty(q.shape, dtype=q.dtype)
    if q.dtype == torch.float32:
        keys, values_t = k.contiguous(), v.transpose(-2, -1).contiguous()
        for b in range(q.shape[0]):
            for h in range(q.shape[1]):
                logits = _onednn_linear(q[b, h] * scale, keys[b, h], None)
                out[b, h] = _onednn_linear(logits.softmax(dim=-1), values_t[b, h], None)
        return out
    keys = k.transpose(-2, -1) * scale
    for start in range(0, q.shape[-2], query_block):
        block = slice(start, start + query_block)
        out[..., block, :] = (q[..., block, :] @ keys).softmax(dim=-1) @ v
    return out


@contextlib.contextmanager
def fast_cpu_kernels() -> Iterator[None]:
    """Within the context, CPU linear layers and attention without autograd take the faster kernels of
    `_FastCPUKernels` (no-op where oneDNN is unavailable)."""
    if not onednn_available():
        yield
        return
    with _FastCPUKernels():
        yield


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` ("cpu" or "cuda") for precision "bf16"; nothing for "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision])


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the OS; True where it could.

    By default glibc maps every block of 128 kB and more (up to 32 MB, adjusted as it goes) afresh and unmaps it when
    it is freed, and returns the top of its heap beyond 128 kB, so each forward pays the page faults of its large
    activations again. After this call every block comes from the heap, which keeps up to 1 GiB of free memory
    (measured effect: benchmarks/README.md). The setting is process-wide and lasts, so nothing here calls it on its
    own: the `cascade-clip` command does for its own process, `Segmenter(keep_freed_memory=True)` when asked.
    """
    return _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, 2**30)


def _mallopt(parameter: int, value: int) -> bool:
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(parameter, value))


@contextlib.contextmanager
def fast_inference(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """Autograd off; on the CPU faster kernels (`fast_cpu_kernels`); autocast for bf16. Changes nothing beyond the
    context (see `keep_freed_memory` for the allocator)."""
    with torch.inference_mode(), fast_cpu_kernels(), autocast(device, precision):
        yield
