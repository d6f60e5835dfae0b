"""The efficiency benchmark runs end to end: its smoke mode (`--quick`, a tiny model) writes both results files with
the machine, every measured row and every target. Its figures are not checked: speed is measured on a quiet
machine by running the script, never asserted in a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cascadeclip.inference.onnx_export import missing_packages
from cascadeclip.profiling.machine import cpu_model_and_flags

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "efficiency.py"


@pytest.mark.slow
def test_quick_benchmark_writes_every_part_of_the_results(tmp_path):
    out = tmp_path / "results" / "R.md"
    environment = os.environ | {"CASCADECLIP_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out)],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    markdown, results = out.read_text(), json.loads(out.with_suffix(".json").read_text())

    assert results["quick"] and "A smoke run (`--quick`)" in markdown
    assert f"CPU: **{cpu_model_and_flags()[0]}**" in markdown and "AMX:" in markdown
    assert set(results["matmul_peak_gflops"]) == {"fp32", "bf16"}
    expected_rows = {
        "bare encoder, PyTorch kernels, fp32",
        "bare encoder, chosen kernels, fp32",
        "bare encoder, PyTorch kernels, bf16",
        "bare encoder, chosen kernels, bf16",
        "fast path, chosen kernels, fp32",
        "fast path, chosen kernels, bf16",
        "reference path, PyTorch kernels, fp32",
    }
    if not missing_packages():
        expected_rows.add("ONNX Runtime, fp32")
        assert results["onnx"]["largest_difference"] < 1e-4  # as the export's own check: fp32 rounding
    assert expected_rows <= set(results["timings"])
    assert len(results["training"]) == 5 and results["kernel_choices"]
    for target in (
        "fast path / best bare encoder, fp32",
        "same in bf16",
        "reference / fast path, fp32",
        "bf16 speed-up / bf16-fp32 peak ratio",
        "training step / forward, fp32, chosen kernels (default)",
        "training step / forward, fp32, PyTorch's kernels",
        "reference-path step / training step, fp32, chosen (default) / PyTorch's kernels",
        "pixels with the same class, bf16 vs fp32, random weights",
    ):
        assert f"| {target} |" in markdown
    assert not list(out.parent.glob(".*"))  # written atomically: no temporary files left


def test_benchmark_checks_its_output_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    for out, message in ((tmp_path / "R.txt", "must end in .md"), (tmp_path / "file" / "R.md", "cannot be made")):
        run = subprocess.run(
            [sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 2 and message in run.stderr and "matrix-multiply" not in run.stdout
