"""Peak memory of a call, and the live activation bytes of the operations it runs.

On CUDA the allocator's own peak (`max_memory_allocated`); on the CPU the growth of the process's peak resident set
(VmHWM, reset for the measurement) over its size before the call. Python's tracemalloc cannot be used: it sees only
Python's allocator, not the one PyTorch uses for tensors.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import re
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .timing import synchronize

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
        working = {
            _storage_key(t): t.untyped_storage().nbytes()
            for t in tree_leaves((args, kwargs, out))
            if isinstance(t, torch.Tensor)
        }
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
