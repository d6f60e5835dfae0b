"""Process-group set-up for torchrun: one process per device, NCCL on GPUs and gloo on CPUs.

Without torchrun (no WORLD_SIZE in the environment) everything runs in a single process and the helpers below are
no-ops, so the same code serves one CPU, one GPU and many machines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .utils import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_device(name: str | torch.device | None, what: str = "--device") -> torch.device | None:
    """`name` as a torch.device (None stays None), or UserError when it is no device name or the device is not
    there (CUDA without a GPU, cuda:N past the last GPU)."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"{what} {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{what} {name}: PyTorch sees no CUDA device on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{what} {name}: there are only {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{what} {name}: PyTorch sees no Apple GPU (MPS) on this machine; use cpu")
    elif device.type != "cpu":
        raise UserError(f"{what} {name}: {device.type} devices are not supported; use cpu or cuda")
    return device


def rank_from_environment() -> int:
    """This process's rank as torchrun sets it (0 without torchrun), before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group if there is one, and pick this process's device.

    `device`: "cpu", "cuda" or None (CUDA when available); UserError when it is not there (see `check_device`).
    Under torchrun each process takes cuda:LOCAL_RANK.
    """
    device = check_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = rank_from_environment()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, chosen)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place; returns it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_gather_objects(value: object) -> list[object]:
    """The picklable `value` of every process, in rank order ([value] in a single process)."""
    if not is_distributed():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
