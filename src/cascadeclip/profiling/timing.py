"""Wall-clock time of calls on a device: the device is synchronised before the clock is read."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


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
        return cls(
            len(seconds), statistics.median(seconds), statistics.fmean(seconds), min(seconds), max(seconds), q[0], q[2]
        )

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
