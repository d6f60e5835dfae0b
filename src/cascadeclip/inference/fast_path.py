"""The runtime of the fast path: the faster kernels of this machine (for inference and for training steps),
autocast, and (when asked) memory reuse.

The model owns the computation (`CascadeCLIP.set_fast_path`: the same function with less work;
`CascadeCLIP.store_encoder_in_bf16` for bf16 inference); this module owns the context it runs in:
- `fast_inference(device, precision)`: autograd off; bf16 autocast for precision "bf16"; on the CPU, linear layers,
  products with a matrix, attention and bilinear resizing run on the faster of PyTorch's kernel and an alternative
  (`fast_cpu_kernels`): oneDNN's linear kernel (PyTorch's fp32 linear layers call MKL, which runs its AVX2 code on
  AMD CPUs), attention as cache-sized matrix products, resizing in channels-last layout. Which is faster differs
  between CPUs, so it is measured on this machine at first use and kept (`kernel_choice`). On CUDA, PyTorch's own
  kernels. Results differ by float rounding only.
- `keep_freed_memory()`: glibc keeps freed memory for reuse, a process-wide setting made only when a caller asks.

For bf16, PyTorch's linear layers and oneDNN's both use AMX where the CPU has it."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .kernel_choice import PYTORCH, KernelChoice, process_choice, size_class

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear kernel runs `dtype` on this CPU: fp32 on all, bf16 only on CPUs with AVX-512 (on an
    AVX2-only CPU it refuses to build the kernel)."""
    return dtype == torch.float32 or _onednn_has_bf16()


@functools.cache
def _onednn_has_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _RoutedCPUKernels(TorchFunctionMode):
    """On CPU tensors, each operation that has an alternative kernel runs on the kernel `choice` found faster for its
    kind, PyTorch's own or the alternative: linear layers with or without autograd (`_routed_linear`), and without
    autograd products with a matrix, attention and bilinear resizing (`_alternative`). Every other call is left
    unchanged.

    Every torch call made in the context passes through here, in Python, so the common case costs a few checks only:
    the kind of an operation is formatted once per shape (`_linear_kind`), candidates are built only to be measured.
    """

    def __init__(self, choice: KernelChoice):
        super().__init__()
        self.choice = choice

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return _routed_linear(self.choice, args, kwargs)
        alternative = _alternative(func, args, kwargs)
        if alternative is not None:
            kind, name, run = alternative
            if self.choice.choose(kind, lambda: {PYTORCH: lambda: func(*args, **kwargs), name: run}) == name:
                return run()
        return func(*args, **kwargs)


INFERENCE, AUTOGRAD = "inference", "autograd"  # how a call's tensors are used (`_plain_cpu_use`)
_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)  # `x @ W` arrives as Tensor.matmul
_ARGUMENTS = {  # positional parameters of the routed functions
    F.linear: ("input", "weight", "bias"),
    F.scaled_dot_product_attention: ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"),
    F.interpolate: ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"),
}


def _routed_linear(choice: KernelChoice, args: tuple, kwargs: dict) -> torch.Tensor:
    """F.linear(*args, **kwargs) with its products on the chosen kernels: without autograd the output's, under
    autograd (a training step) the output's and the input gradient's (`_LinearOnChosenKernels`), unless PyTorch's
    kernel is chosen for both: then PyTorch's F.linear with its own backward, faster than the same kernels called from
    Python (benchmarks/NOTES.md)."""
    if len(args) in (2, 3) and not kwargs:  # as nn.Linear calls it
        x, weight, bias = args[0], args[1], args[2] if len(args) == 3 else None
    else:
        named = dict(zip(_ARGUMENTS[F.linear], args, strict=False)) | kwargs
        x, weight, bias = named["input"], named["weight"], named.get("bias")
    use = _plain_cpu_use(x, weight, bias) if x.dim() >= 2 and onednn_runs(x.dtype) else None
    if use == INFERENCE:
        return _linear_on_chosen_kernel(choice, x, weight, bias)
    if use == AUTOGRAD and _routed_under_autograd(choice, x, weight, bias):
        return _LinearOnChosenKernels.apply(x, weight, bias, choice)
    return F.linear(*args, **kwargs)


def _alternative(func, args: tuple, kwargs: dict) -> tuple[str, str, Callable[[], torch.Tensor]] | None:
    """(kind, name, call) of the alternative kernel for this call of `func` (not F.linear, see `_routed_linear`),
    or None when there is none.

    The kind names the operation, dtype, thread count and shape class (sizes rounded up to a power of two) that a
    choice holds for.
    """
    if func in _MATMULS and len(args) == 2 and not kwargs:
        x, matrix = args
        if x.dim() >= 2 and matrix.dim() == 2 and _plain_cpu_use(x, matrix) == INFERENCE and onednn_runs(x.dtype):
            kind = _kind("matmul", x, rows=x.numel() // x.shape[-1], shape=f"{matrix.shape[0]}->{matrix.shape[1]}")
            return kind, "onednn", lambda: onednn_linear(x, matrix.T, None)
        return None
    if func not in _ARGUMENTS:
        return None
    named = dict(zip(_ARGUMENTS[func], args, strict=False)) | kwargs
    if func is F.scaled_dot_product_attention:
        q, k, v = named["query"], named["key"], named["value"]
        plain = named.get("attn_mask") is None and not any(
            named.get(n) for n in ("dropout_p", "is_causal", "enable_gqa")
        )
        if plain and q.dim() == 4 and q.shape[:2] == k.shape[:2] and _plain_cpu_use(q, k, v) == INFERENCE:
            queries, keys = size_class(q.shape[2]), size_class(k.shape[2])
            kind = _kind("attention", q, rows=q.shape[0] * q.shape[1], shape=f"{queries}x{keys}x{q.shape[3]}")
            return kind, "products", lambda: _attention_by_products(q, k, v, named.get("scale") or q.shape[-1] ** -0.5)
    elif func is F.interpolate:
        x, size = named["input"], named.get("size")
        if named.get("mode") == "bilinear" and x.dim() == 4 and size is not None and _plain_cpu_use(x) == INFERENCE:
            if not x.is_contiguous(memory_format=torch.channels_last):
                pixels = f"{size_class(x.shape[2] * x.shape[3])}->{size_class(math.prod(_pair(size)))}"
                kind = _kind("bilinear", x, rows=x.shape[0] * x.shape[1], shape=pixels)
                return kind, "channels_last", lambda: _channels_last_resize(named)
    return None


def _linear_kind(x: torch.Tensor, weight: torch.Tensor) -> str:
    """The kind of F.linear(x, weight): dtype, threads, rows and the weight's shape and layout (a backward pass
    multiplies by the weight's transpose)."""
    rows = x.numel() // x.shape[-1]
    return _linear_kind_of(x.dtype, rows, *weight.shape, not weight.is_contiguous(), torch.get_num_threads())


@functools.lru_cache(maxsize=4096)
def _linear_kind_of(dtype: torch.dtype, rows: int, out_features: int, in_features: int, transposed: bool, threads: int):
    layout = " transposed" if transposed else ""
    return _kind_of("linear", dtype, threads, rows, f"{in_features}->{out_features}{layout}")


def _kind(operation: str, x: torch.Tensor, rows: int, shape: str) -> str:
    return _kind_of(operation, x.dtype, torch.get_num_threads(), rows, shape)


def _kind_of(operation: str, dtype: torch.dtype, threads: int, rows: int, shape: str) -> str:
    """The name a choice is kept under: operation, dtype, threads, shape class of the rows, the rest of the shape."""
    return f"{operation} {str(dtype).removeprefix('torch.')} threads={threads} rows={size_class(rows)} {shape}"


def _pair(size: int | tuple[int, ...]) -> tuple[int, ...]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _plain_cpu_use(*tensors: torch.Tensor | None) -> str | None:
    """INFERENCE or AUTOGRAD where the tensors are dense CPU tensors of one dtype, fp32 (outside autocast, which would
    cast them) or bf16, none or some of which need gradients; None otherwise."""
    dtype = tensors[0].dtype
    if not (dtype is torch.bfloat16 or (dtype is torch.float32 and not torch.is_autocast_enabled("cpu"))):
        return None
    needs_gradient = False
    for t in tensors:
        if t is not None:
            if not t.is_cpu or t.dtype is not dtype or t.layout is not torch.strided:
                return None
            needs_gradient = needs_gradient or t.requires_grad
    if torch.compiler.is_compiling():  # compiled graphs choose their own kernels
        return None
    return AUTOGRAD if needs_gradient and torch.is_grad_enabled() else INFERENCE


def _linear_candidates(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> dict:
    return {PYTORCH: lambda: F.linear(x, weight, bias), "onednn": lambda: onednn_linear(x, weight, bias)}


def _linear_on_chosen_kernel(choice: KernelChoice, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """F.linear(x, weight, bias) on the kernel `choice` found faster for its kind: PyTorch's or oneDNN's."""
    if choice.choose(_linear_kind(x, weight), lambda: _linear_candidates(x, weight, bias)) == "onednn":
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def _routed_under_autograd(choice: KernelChoice, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Whether a product of F.linear(x, weight, bias) under autograd, the output or (when `x` needs one) the input's
    gradient, runs on another kernel than PyTorch's. A new kind of gradient is measured on a random one of its
    shape."""
    if choice.choose(_linear_kind(x, weight), lambda: _linear_candidates(x, weight, bias)) != PYTORCH:
        return True
    if not x.requires_grad:
        return False

    def gradient_candidates() -> dict:
        # drawn from a generator of its own: the global one's stream (dropout, augmentation) must not depend on
        # whether a choice was measured in this process or read from a file
        own = torch.Generator().manual_seed(0)
        gradient = torch.randn(*x.shape[:-1], weight.shape[0], dtype=x.dtype, generator=own)
        return _linear_candidates(gradient, weight.t(), None)

    rows, threads = x.numel() // x.shape[-1], torch.get_num_threads()
    # the kind of _linear_kind(gradient, weight.t()), without making the view: a contiguous weight's is transposed
    kind = _linear_kind_of(x.dtype, rows, weight.shape[1], weight.shape[0], weight.is_contiguous(), threads)
    return choice.choose(kind, gradient_candidates) != PYTORCH


class _LinearOnChosenKernels(torch.autograd.Function):
    """F.linear under autograd whose two large products, the output and the input's gradient (the gradient times the
    weight), run on the chosen kernels; the weight's and bias's gradients (needed by the trainable head only) are
    PyTorch's."""

    @staticmethod
    def forward(ctx, x, weight, bias, choice):
        ctx.save_for_backward(x, weight)
        ctx.choice = choice
        return _linear_on_chosen_kernel(choice, x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_x = _linear_on_chosen_kernel(ctx.choice, grad, weight.t(), None) if needs_x else None
        rows = grad.flatten(0, -2)
        grad_weight = rows.t() @ x.flatten(0, -2) if needs_weight else None
        grad_bias = rows.sum(0) if needs_bias else None
        return grad_x, grad_weight, grad_bias, None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN (AMX for bf16 where the CPU has it)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _attention_by_products(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, query_block: int = 256
) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, H, L, d) queries and (B, H, S, d) keys and values -> (B, H, L, d).

    In fp32 two oneDNN products per image and head, whose (L, S) logits stay in cache; in bf16 blocks of
    `query_block` queries over all heads.
    """
    out = torch.empty(q.shape, dtype=q.dtype)
    if q.dtype == torch.float32:
        keys, values_t = k.contiguous(), v.transpose(-2, -1).contiguous()
        for b in range(q.shape[0]):
            for h in range(q.shape[1]):
                logits = onednn_linear(q[b, h] * scale, keys[b, h], None)
                out[b, h] = onednn_linear(logits.softmax(dim=-1), values_t[b, h], None)
        return out
    keys = k.transpose(-2, -1) * scale
    for start in range(0, q.shape[-2], query_block):
        block = slice(start, start + query_block)
        out[..., block, :] = (q[..., block, :] @ keys).softmax(dim=-1) @ v
    return out


def _channels_last_resize(arguments: dict) -> torch.Tensor:
    """F.interpolate with these arguments, its input in channels-last layout (so is the output)."""
    x = arguments["input"].contiguous(memory_format=torch.channels_last)
    return F.interpolate(**(arguments | {"input": x}))


@contextlib.contextmanager
def fast_cpu_kernels(choice: KernelChoice | None = None) -> Iterator[None]:
    """Within the context, routed CPU operations (linear layers also under autograd, the others without) run on the
    faster of PyTorch's kernel and an alternative, as measured on this machine (`choice`, default: the process's, kept
    in the cache folder); a no-op where oneDNN is unavailable."""
    if not onednn_available():
        yield
        return
    with _RoutedCPUKernels(choice or process_choice()):
        yield


def chosen_kernels(device: torch.device | str, choice: KernelChoice | None = None) -> contextlib.AbstractContextManager:
    """On the CPU the faster kernels of this machine (`fast_cpu_kernels`), for inference and for training steps (the
    products of linear layers: the output and the input's gradient); elsewhere PyTorch's own, untouched."""
    return fast_cpu_kernels(choice) if torch.device(device).type == "cpu" else contextlib.nullcontext()


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
    (measured effect: benchmarks/NOTES.md). The setting is process-wide and lasts, so nothing here calls it on its
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
def fast_inference(
    device: torch.device | str, precision: str = "fp32", choice: KernelChoice | None = None
) -> Iterator[None]:
    """Autograd off; on the CPU the faster kernels of this machine (`fast_cpu_kernels`, with `choice`); autocast for
    bf16. Changes nothing beyond the context (see `keep_freed_memory` for the allocator)."""
    with torch.inference_mode(), chosen_kernels(device, choice), autocast(device, precision):
        yield
