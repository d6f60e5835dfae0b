"""`cascade-clip segment` at scale: images read by DataLoader workers, windows of several images per forward, and the
images split over two torchrun processes (gloo, CPU), against a one-process run (tiny random model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from cascadeclip.factory import save_model
from cascadeclip.modeling.cascade_clip import CascadeCLIP

from conftest import tiny_model_config

SRC = Path(__file__).resolve().parents[1] / "src"
NAMES = "cat, person, coffee cup, grass"


@pytest.fixture
def folder_and_weights(tmp_path) -> tuple[Path, Path]:
    """Five images of four sizes, and a tiny checkpoint."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut.png", "coffee.png", "chelsea.png"):
        shutil.copy(Path(skimage.data.__file__).parent / name, folder / name)
    rng = np.random.default_rng(0)
    for name, size in (("noise_a.png", (90, 70)), ("noise_b.jpg", (50, 130))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    torch.manual_seed(0)
    save_model(tmp_path / "tiny.safetensors", CascadeCLIP(tiny_model_config(with_text=True)))
    return folder, tmp_path / "tiny.safetensors"


def segment_command(folder: Path, weights: Path, out: Path, processes: int) -> list[str]:
    command = ["-m", "cascadeclip", "segment", str(folder), "--classes", NAMES, "--checkpoint", str(weights)]
    command += ["--device", "cpu", "--out", str(out), "--scores", "--workers", "1"]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *command]
    return [sys.executable, *command]


def environment(cache: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return env | {"CASCADECLIP_CACHE": str(cache)}


def run(command: list[str], cache: Path) -> str:
    done = subprocess.run(command, env=environment(cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.distributed
def test_two_processes_write_what_one_writes_and_a_rerun_skips(folder_and_weights, tmp_path):
    folder, weights = folder_and_weights
    one, two = tmp_path / "one", tmp_path / "two"
    run(segment_command(folder, weights, one, 1), tmp_path / "cache")
    printed = run(segment_command(folder, weights, two, 2), tmp_path / "cache")
    # Process 0 takes astronaut, coffee and noise_b (every other image in name order), process 1 chelsea and noise_a.
    assert "over 2 processes (3 in process 0, 2 in process 1)" in printed
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for summary_file in sorted(one.glob("*.json")):
        if summary_file.name.startswith("."):
            continue
        a, b = (json.loads((out / summary_file.name).read_text()) for out in (one, two))
        assert a["settings"] == b["settings"] and a["source"] == b["source"]
        stem = summary_file.stem
        labels_a, labels_b = (np.array(Image.open(out / f"{stem}_labels.png")) for out in (one, two))
        with np.load(one / f"{stem}_scores.npz") as sa, np.load(two / f"{stem}_scores.npz") as sb:
            scores_a, scores_b = sa["scores"].astype(np.float32), sb["scores"].astype(np.float32)
        # The windows went through the model in other batches (other images beside them): float rounding apart, the
        # same numbers. Scores are stored in float16 (2^-11 relative, so 5e-4 absolute for probabilities).
        np.testing.assert_allclose(scores_a, scores_b, atol=5e-4, rtol=0)
        assert (labels_a == labels_b).mean() > 0.999, stem  # a pixel may flip only where two names tie
        for class_a, class_b in zip(a["classes"], b["classes"], strict=True):
            assert class_a["name"] == class_b["name"]
            assert class_a["pixel_share"] == pytest.approx(class_b["pixel_share"], abs=1e-3)

    before = {p.name: p.stat().st_mtime_ns for p in two.iterdir()}
    printed = run(segment_command(folder, weights, two, 2), tmp_path / "cache")
    assert "(5 already done, skipped)" in printed
    assert before == {p.name: p.stat().st_mtime_ns for p in two.iterdir()}


@pytest.mark.distributed
def test_a_file_of_the_users_in_out_stops_every_process_before_any_is_written(folder_and_weights, tmp_path):
    folder, weights = folder_and_weights
    out = tmp_path / "out"
    out.mkdir()
    (out / "noise_a_overlay.png").write_bytes(b"the user's own picture")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["CASCADECLIP_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        segment_command(folder, weights, out, 2), env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode != 0 and "were not written by cascade-clip (noise_a_overlay.png)" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["noise_a_overlay.png"]
    assert (out / "noise_a_overlay.png").read_bytes() == b"the user's own picture"


@pytest.mark.slow
def test_the_throughput_benchmark_runs_in_its_quick_mode(tmp_path):
    """A smoke test of benchmarks/segment_throughput.py (its figures are measured on a quiet machine, not here).
    Slow: four ViT-B/16-sized models are built, in three processes."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "segment_throughput.py"
    printed = run([sys.executable, str(script), "--quick", "--out", str(tmp_path / "results.md")], tmp_path / "cache")
    assert printed.count("images/s") == 2 and "10 names:" in printed
    results = (tmp_path / "results.md").read_text()
    assert "QUICK SMOKE RUN" in results and "| 10 |" in results and "new names" in results
