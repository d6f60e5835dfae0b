"""The faster of PyTorch's own kernel and another one for the same operation, measured on this machine and kept.

Which kernel is faster depends on the CPU: for fp32 linear layers, oneDNN beats PyTorch's MKL call on AMD CPUs and
ties on Intel ones; attention as matrix products beats PyTorch's fused kernel on one machine and loses by 2-4x on
another (benchmarks/NOTES.md). So, like cuDNN's benchmark mode, the first call of an operation of a new kind
(operation, dtype, threads, shape class) times every candidate on its real inputs, a few rounds in turns, and the
choice holds from then on. PyTorch's own kernel (`PYTORCH`, always a candidate) is kept unless another is faster by
more than `MARGIN`, so a choice is never slower than plain PyTorch beyond the noise of the measurement.

Choices are kept per machine (CPU model, instruction sets, PyTorch version) in a JSON file of the cache folder
(`utils.cache_dir()/kernel_choices/`), written atomically after each new choice; a file that cannot be read or
belongs to another machine is ignored and replaced, and a folder that cannot be written only costs a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..profiling.machine import cpu_model_and_flags
from ..utils import atomic_write, cache_dir

PYTORCH = "pytorch"  # the name of PyTorch's own kernel among the candidates
MARGIN = 0.05  # another kernel must be this much faster (a fraction of PyTorch's time) to be chosen
ROUNDS = 3  # timed calls of each candidate, in turns, after one untimed call


def machine_key() -> dict:
    """What a choice depends on besides the operation: the CPU model and its instruction sets, PyTorch's version."""
    cpu, flags = cpu_model_and_flags()
    return {"cpu": cpu, "flags": sorted(flags), "torch": torch.__version__}


def size_class(n: int) -> int:
    """The power of two at or above `n`: sizes that differ by less than 2x share a choice."""
    return 1 << max(n - 1, 0).bit_length()


class KernelChoice:
    """The kernel choices of this machine: measured when first needed, kept in memory and in a file of `folder`
    (None: in memory only). `timer` is the clock the candidates are timed with (tests pass a fake one)."""

    def __init__(self, folder: Path | None, timer: Callable[[], float] = time.perf_counter):
        self.machine = machine_key()
        fingerprint = hashlib.sha256(json.dumps(self.machine, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(folder) / f"{fingerprint}.json" if folder is not None else None
        self.timer = timer
        self._choices: dict[str, str] | None = None  # read from `path` when first needed

    def choose(self, kind: str, candidates: dict[str, Callable[[], object]]) -> str:
        """The name of the candidate to run for operations of `kind`; measured now if `kind` is new.

        Args:
            kind: the operation, dtype, threads and shape class, e.g. "linear float32 threads=2 rows=2048 768->3072".
            candidates: name -> a call of that kernel on the operation's inputs; must include `PYTORCH`.
        """
        choices = self._load()
        if kind not in choices:
            choices[kind] = self._measure(candidates)
            self._save()
        return choices[kind]

    def _measure(self, candidates: dict[str, Callable[[], object]]) -> str:
        for run in candidates.values():  # untimed: first-call costs (memory, packed weights, code paths)
            run()
        best = dict.fromkeys(candidates, math.inf)
        for _ in range(ROUNDS):  # in turns, so that a machine whose speed drifts slows every candidate alike
            for name, run in candidates.items():
                start = self.timer()
                run()
                best[name] = min(best[name], self.timer() - start)
        fastest = min(best, key=best.get)
        return fastest if best[fastest] < (1 - MARGIN) * best[PYTORCH] else PYTORCH

    def _load(self) -> dict[str, str]:
        if self._choices is None:
            self._choices = {}
            if self.path is not None:
                self._choices = _read_choices(self.path, self.machine)
        return self._choices

    def _save(self) -> None:
        if self.path is None:
            return
        text = json.dumps({"machine": self.machine, "choices": self._choices}, indent=1, sort_keys=True)
        try:
            atomic_write(self.path, lambda tmp: tmp.write_text(text))
        except OSError as err:
            warnings.warn(f"kernel choices not saved to {self.path} ({err}); they will be measured again", stacklevel=3)
            self.path = None


def _read_choices(path: Path, machine: dict) -> dict[str, str]:
    """The choices saved in `path` for `machine`; empty if the file is missing, unreadable, malformed or not this
    machine's."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    choices = saved.get("choices") if isinstance(saved, dict) and saved.get("machine") == machine else None
    if not isinstance(choices, dict) or not all(isinstance(v, str) for v in choices.values()):
        return {}
    return choices


_process_choice: KernelChoice | None = None


def process_choice() -> KernelChoice:
    """The kernel choices this process uses (kept in the cache folder)."""
    global _process_choice
    if _process_choice is None:
        _process_choice = KernelChoice(cache_dir() / "kernel_choices")
    return _process_choice
