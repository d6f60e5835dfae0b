"""Measuring what inference costs: FLOPs, latency, frames per second under the paper's protocol, peak memory.

Conventions (spec §5):
- FLOPs are counted by PyTorch's `FlopCounterMode`, which counts matrix products and convolutions at 2 FLOPs per
  multiply-add. fvcore, which the paper used, counts 1 per multiply-add (and adds a little for norms and
  upsampling, which PyTorch's counter leaves out), so the paper's GFLOPs compare with `flops / 2`.
- Timings synchronise the device before reading the clock.
- Peak memory: on CUDA the allocator's own peak (`max_memory_allocated`); on the CPU the growth of the process's peak
  resident set (VmHWM, reset for the measurement) over its size before the call. Python's tracemalloc cannot be used:
  it sees only Python's allocator, not the one PyTorch uses for tensors.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .config import Config
from .data.datasets import list_samples, read_image
from .errors import UserError
from .inference import predict_scores, seen_shift_vector
from .transforms import test_image_tensor

aten = torch.ops.aten


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# PyTorch's counter knows the CUDA attention kernels but not the CPU one; it gets the same formula.
_EXTRA_FLOP_FORMULAS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_flops(model: nn.Module, *inputs: object) -> int:
    """FLOPs of `model(*inputs)` as PyTorch counts them (2 per multiply-add), autograd off.

    nn.MultiheadAttention's inference fast path is one fused operation the counter does not see into (it would
    count 0), so it is switched off while counting: the same products then run as visible linear and attention ops.
    The counter's module tracker fails on parameters that require grad under no_grad, so they are frozen meanwhile.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.backends.mha.set_fastpath_enabled(False)
    model.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for param in trainable:
            param.requires_grad_(True)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds per call over `repeats` timed calls."""

    repeats: int
    median: float
    mean: float
    min: float
    max: float
    p25: float
    p75: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        q = statistics.quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else seconds * 3
        return cls(len(seconds), statistics.median(seconds), statistics.fmean(seconds), min(seconds), max(seconds),
                   q[0], q[2])  # fmt: skip

    def as_dict(self) -> dict:
        return asdict(self)


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> Timing:
    """Time `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing.of(seconds)


def protocol_fps(
    predict: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
    images: Iterable[tuple[torch.Tensor, tuple[int, int]]],
    device: torch.device,
    warmup: int,
) -> dict:
    """Frames per second as the authors' get_fps.py measures them (spec §5), batch 1.

    Args:
        predict: (1, 3, H, W) preprocessed image on `device`, original (h, w) -> (1, C, h, w) scores.
        images: (preprocessed image, original size) pairs; loading and preprocessing are not timed.
        warmup: images at the start that are run but not timed.
    Returns:
        {"images": timed images, "warmup": ..., "seconds": total timed, "fps": timed images / seconds}.
    """
    seconds, timed = 0.0, 0
    for i, (image, size) in enumerate(images):
        image = image.to(device)
        synchronize(device)
        start = time.perf_counter()
        predict(image, size).argmax(dim=1).cpu()  # prediction, resize to the original size, argmax, copy back
        synchronize(device)
        if i >= warmup:
            seconds += time.perf_counter() - start
            timed += 1
    return {"images": timed, "warmup": warmup, "seconds": seconds, "fps": timed / seconds if seconds else None}


# Generated images stand in for a dataset's validation images: the most common size (H, W) of each validation set.
TYPICAL_IMAGE_SIZE = {"voc": (375, 500), "context": (375, 500), "coco": (480, 640)}


def generated_image_size(cfg: Config, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """`image_size` if given, else the most common validation image size of the configuration's dataset."""
    return tuple(image_size) if image_size else TYPICAL_IMAGE_SIZE.get(cfg.classes.dataset, (512, 512))


def protocol_images(
    cfg: Config, count: int, data_root: str | None = None, image_size: tuple[int, int] | None = None
) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
    """`count` (preprocessed (1, 3, H, W) image, original size) pairs for `protocol_fps`.

    The configuration's validation images under `data_root` (repeated if there are fewer), else one generated
    image of `image_size` (default: the dataset's most common size) over and over.
    """
    short_side = cfg.test.short_side
    if data_root:
        samples = list_samples(cfg.classes.dataset, data_root, "val")
        if not samples:
            raise UserError(f"no validation images found under {data_root} for {cfg.classes.dataset}")
        for i in range(count):
            image = read_image(samples[i % len(samples)].image)
            yield test_image_tensor(image, short_side), image.shape[:2]
        return
    height, width = generated_image_size(cfg, image_size)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tensor = test_image_tensor(image, short_side)
    for _ in range(count):
        yield tensor, (height, width)


def slide_predictor(
    model: nn.Module, text: torch.Tensor, cfg: Config
) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    """The `predict` of `protocol_fps`: the configuration's test-time inference, scores at the original size."""
    shift = seen_shift_vector(len(text), cfg.classes.seen, cfg.classes.test_seen_shift).to(text.device)
    test = cfg.test

    def predict(image: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return predict_scores(model, image, text, shift, mode=test.mode, crop=test.crop_size, stride=test.stride,
                              window_batch=test.window_batch, out_size=out_size)  # fmt: skip

    return predict


# ----------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text()).group(1)) * 1024


def _release_free_heap() -> None:
    """Hand memory freed earlier back to the OS (glibc), so it cannot hide the next call's growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_peak_supported() -> bool:
    return platform.system() == "Linux" and _STATUS.is_file() and Path("/proc/self/clear_refs").is_file()


def peak_memory(fn: Callable[[], object], device: torch.device) -> dict:
    """Peak memory one call of `fn` adds over what is allocated before it (weights, inputs), in bytes.

    Returns {"peak_bytes": ..., "method": ...}; peak_bytes is None where it cannot be measured.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - before, "method": "cuda max_memory_allocated"}
    if not cpu_peak_supported():
        return {"peak_bytes": None, "method": "unavailable (needs Linux /proc)"}
    _release_free_heap()
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set, to the current size
    fn()
    return {"peak_bytes": _status_bytes("VmHWM") - before, "method": "growth of peak resident set (VmHWM)"}


class ActivationTracker(TorchDispatchMode):
    """Follows the tensors that the operations run inside it create: the peak of their live bytes, and the largest
    working set of a single operation (its tensor inputs and outputs, parameters excluded).

    The live peak is what an allocator without slack would need on top of the weights; the largest working set is a
    lower bound that no execution order can avoid.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        super().__init__()
        self._excluded = {_storage_key(t) for t in exclude}
        self._references: dict[int, int] = {}  # storage -> live tensors that use it
        self._sizes: dict[int, int] = {}
        self.live = self.peak = self.largest_op = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        for tensor in outputs:
            self._follow(tensor)
        working = {_storage_key(t): t.untyped_storage().nbytes() for t in tree_leaves((args, kwargs, out))
                   if isinstance(t, torch.Tensor)}  # fmt: skip
        self.largest_op = max(self.largest_op, sum(n for k, n in working.items() if k not in self._excluded))
        return out

    def _follow(self, tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        if key in self._excluded or tensor.untyped_storage().nbytes() == 0:
            return
        if key not in self._references:
            self._sizes[key] = tensor.untyped_storage().nbytes()
            self._references[key] = 0
            self.live += self._sizes[key]
            self.peak = max(self.peak, self.live)
        self._references[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self._references[key] -= 1
        if self._references[key] == 0:
            del self._references[key]
            self.live -= self._sizes.pop(key)


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ----------------------------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------------------------

CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def machine_description() -> dict:
    """CPU model and relevant instruction-set flags, threads, memory, GPU, library versions, load average."""
    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        if match := re.search(r"model name\s*:\s*(.+)", text):
            cpu = match.group(1).strip()
        if match := re.search(r"flags\s*:\s*(.+)", text):
            flags = set(match.group(1).split())
    description = {
        "cpu": cpu,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST} if flags else {},
        "logical_cpus": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": torch.backends.mkldnn.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
    if _STATUS.is_file():
        meminfo = Path("/proc/meminfo").read_text()
        description["memory_gb"] = round(int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) / 2**20, 1)
        description["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return description
