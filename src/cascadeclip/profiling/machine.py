"""What a measurement ran on: CPU model and instruction sets, threads, memory, GPU, library versions, load."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

CPU_FLAGS_OF_INTEREST = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx512_fp16",
)


def _cpuinfo() -> str:
    """The text of /proc/cpuinfo (Linux); empty elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text() if cpuinfo.is_file() else ""


def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """The CPU's model name and instruction-set flags (from /proc/cpuinfo on Linux; elsewhere no flags)."""
    cpu, flags, text = platform.processor() or platform.machine(), frozenset(), _cpuinfo()
    if match := re.search(r"model name\s*:\s*(.+)", text):
        cpu = match.group(1).strip()
    if match := re.search(r"flags\s*:\s*(.+)", text):
        flags = frozenset(match.group(1).split())
    return cpu, flags


def cpu_family_and_model() -> str | None:
    """The CPU's "family F, model M" (from /proc/cpuinfo), which tells apart CPUs of one model name, such as the
    generations that a cloud's virtual machines all call "AMD EPYC"; None where unknown."""
    text = _cpuinfo()
    family, model = re.search(r"cpu family\s*:\s*(\d+)", text), re.search(r"^model\s*:\s*(\d+)", text, re.MULTILINE)
    return f"family {family.group(1)}, model {model.group(1)}" if family and model else None


def machine_description() -> dict:
    """CPU model and relevant instruction-set flags, threads, memory, GPU, library versions, load average."""
    cpu, flags = cpu_model_and_flags()
    description = {
        "cpu": cpu,
        "cpu_family_model": cpu_family_and_model(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST} if flags else {},
        "logical_cpus": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": torch.backends.mkldnn.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
    meminfo_file = Path("/proc/meminfo")
    if meminfo_file.is_file():
        meminfo = meminfo_file.read_text()
        description["memory_gb"] = round(int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) / 2**20, 1)
        description["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return description
