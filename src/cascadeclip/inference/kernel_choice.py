"""The faster of PyTorch's own kernel and another one for the same operation, measured on this machine and kept.

Which kernel is faster depends on the CPU: for fp32 linear layers, oneDNN beats PyTorch's MKL call on AMD CPUs and
ties on Intel ones; attention as matrix products beats PyTorch's fused kernel on one machine and loses by 2-4x on
another (benchmarks/NOTES.md). So, like cuDNN's benchmark mode, the first call of an operation of a new kind
(operation, dtype, threads, shape class) times every candidate on its real inputs (a linear layer's input gradient,
chosen at its forward, on a random one of its shape), a few rounds in turns, and the choice holds from then on.
PyTorch's own kernel (`PYTORCH`, always a candidate) is kept unless another is faster by more than `MARGIN`, so a
choice is never slower than plain PyTorch beyond the noise of the measurement.

Choices are kept per machine (CPU model, instruction sets, PyTorch version) in a JSON file of the cache folder
(`utils.cache_dir()/kernel_choices/`), written atomically after each new choice; a file that cannot be read or
belongs to another machine is ignored and replaced, and a folder that cannot be written only costs a warning.
A training run also records the choices it was given in its own folder (`run_choice`): resumed, it keeps them, even
where the machine's file has gone or another machine measured otherwise.

Processes of one machine share the file (the demo trains in several at once): a process about to measure a new kind
first takes the file's lock and reads what the others have measured meanwhile, so that each kind is measured once
and every process runs it on the same kernel; what it measures is added to the file, not written over it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows has none: there processes measure without waiting for each other
    fcntl = None

from ..profiling.machine import cpu_model_and_flags
from ..utils import UserError, atomic_write, cache_dir

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
    (None: in memory only). `timer` is the clock the candidates are timed with (tests pass a fake one).

    `record` (optional): a file of the choices this object has given. Its choices, read first, hold over the
    machine's; each kind given for the first time is added to it.
    """

    def __init__(self, folder: Path | None, timer: Callable[[], float] = time.perf_counter, record: Path | None = None):
        self.machine = machine_key()
        fingerprint = hashlib.sha256(json.dumps(self.machine, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(folder) / f"{fingerprint}.json" if folder is not None else None
        self.timer = timer
        self._choices: dict[str, str] | None = None  # read from `path` when first needed
        self.record = Path(record) if record is not None else None
        self._given = _read_choices(self.record) if self.record is not None else {}

    def choose(self, kind: str, candidates: Callable[[], dict[str, Callable[[], object]]]) -> str:
        """The name of the candidate to run for operations of `kind`; measured now if `kind` is new.

        Args:
            kind: the operation, dtype, threads and shape class, e.g. "linear float32 threads=2 rows=2048 768->3072".
            candidates: makes name -> a call of that kernel on the operation's inputs, which must include `PYTORCH`;
                called only to measure (most calls find their kind known).
        """
        if kind in self._given:
            return self._given[kind]
        choices = self._load()
        if kind not in choices:
            with _locked(self.path):
                for known, name in _read_choices(self.path, self.machine).items() if self.path else ():
                    choices.setdefault(known, name)  # another process's, unless this one has already run its own
                if kind not in choices:
                    with torch.no_grad():  # timing a kernel needs no autograd graph
                        choices[kind] = self._measure(candidates())
                    self.path = _saved(self.path, self.machine, choices)
        if self.record is not None:
            self._given[kind] = choices[kind]
            self.record = _saved(self.record, self.machine, self._given)
        return choices[kind]

    def recorded_in(self, record: Path) -> KernelChoice:
        """These choices (shared: what either measures, both know) given through a file `record`, which keeps the
        ones given and, read first, holds over the machine's."""
        view = KernelChoice(None, self.timer, record)
        view.machine, view.path, view._choices = self.machine, self.path, self._load()
        return view

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


@contextlib.contextmanager
def _locked(path: Path | None) -> Iterator[None]:
    """Hold the lock of the choices file `path` (a lock file beside it): other processes about to measure wait.
    Nothing to hold without a file, where the folder cannot be written, or without fcntl."""
    if path is None or fcntl is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_suffix(".lock").open("a")
    except OSError:  # the saving that follows warns
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _saved(path: Path | None, machine: dict, choices: dict[str, str]) -> Path | None:
    """Write `choices` (made on `machine`) to `path`; returns `path`, or None (no more writing) after a warning
    where it cannot be written."""
    if path is None:
        return None
    text = json.dumps({"machine": machine, "choices": choices}, indent=1, sort_keys=True)
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except (OSError, UserError) as err:  # a full disk or a folder not ours is not worth stopping for
        warnings.warn(f"kernel choices not saved to {path} ({err}); going on without that file", stacklevel=4)
        return None
    return path


def _read_choices(path: Path, machine: dict | None = None) -> dict[str, str]:
    """The choices saved in `path` (for `machine`, if given); empty if the file is missing, unreadable, malformed or
    another machine's."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    mine = isinstance(saved, dict) and (machine is None or saved.get("machine") == machine)
    choices = saved.get("choices") if mine else None
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


def run_choice(record: Path) -> KernelChoice:
    """The process's kernel choices for a training run, which records the ones it is given in `record`, in its
    folder, and keeps them when resumed."""
    return process_choice().recorded_in(record)
