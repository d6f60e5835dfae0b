"""Training: the loop, its schedule, resume, and equivalence across processes and gradient accumulation."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cascadeclip.config import Config, DataConfig, TestConfig, TrainConfig, save_yaml
from cascadeclip.config.dataset_file import load_dataset
from cascadeclip.config.presets import get_preset
from cascadeclip.data.datasets import list_samples
from cascadeclip.data.train_pipeline import StreamSampler, TrainingStream, augment
from cascadeclip.data.transforms import normalize
from cascadeclip.distributed import DistInfo
from cascadeclip.engine.run_directory import RunDirectory
from cascadeclip.engine.schedule import learning_rate
from cascadeclip.engine.trainer import (
    accumulation_step,
    build_optimiser,
    checkpoint_interval,
    is_checkpoint_iteration,
    is_log_iteration,
    normalise_gradients,
    save_checkpoint,
    train,
)
from cascadeclip.factory import load_checkpoint
from cascadeclip.inference import fast_path, kernel_choice
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.modeling.zero_shot import training_losses, transductive_targets
from cascadeclip.utils import UserError

from conftest import tiny_model_config
from test_kernel_choice import faked_choice
from tiny_datasets import make_voc_scenes

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, setting: str = "inductive", dropout: bool = True, **train) -> Config:
    """The VOC class set on a generated VOC-layout dataset, a tiny random model, a short schedule."""
    data_root = tmp_path / "data"
    if not data_root.exists():
        make_voc_scenes(data_root)
    embeddings = tmp_path / "text.npy"
    if not embeddings.exists():
        rng = np.random.default_rng(0)
        e = rng.standard_normal((20, 32)).astype(np.float32)
        np.save(embeddings, (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16))
    model = tiny_model_config()
    if not dropout:
        model.image_encoder.prompt_dropout = 0.0
        model.head.dropout = 0.0
    voc = get_preset("voc-inductive").classes
    defaults = dict(
        iters=20,
        batch_size=4,
        crop_size=64,
        scale=(128, 64),
        warmup_iters=4,
        lr=1e-3,
        init="random",
        checkpoint_interval=5,
        log_interval=1,
    )
    return Config(
        name="tiny",
        model=model,
        classes=dataclasses.replace(voc, setting=setting, text_embeddings=str(embeddings)),
        data=DataConfig(root=str(data_root), num_workers=0),
        train=TrainConfig(**{**defaults, **train}),
        test=TestConfig(short_side=64, crop_size=64, stride=48),
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_schedule_matches_the_reference_formula():
    cfg = TrainConfig(iters=20000)
    for t in (0, 1, 750, 1499, 1500, 10000, 19999):
        poly = (2e-4 - 1e-6) * (1 - t / 20000) ** 0.9 + 1e-6
        expected = poly * (1 - (1 - t / 1500) * (1 - 1e-6)) if t < 1500 else poly
        assert learning_rate(t, cfg) == pytest.approx(expected, rel=1e-12)
    assert learning_rate(0, cfg) == pytest.approx(2e-4 * 1e-6, rel=1e-3)  # warm-up starts at ratio x lr
    assert learning_rate(1500, cfg) == pytest.approx((2e-4 - 1e-6) * 0.925**0.9 + 1e-6)


def test_photometric_distortion_can_be_switched_off():
    """Without the photometric step, a sample at scale 1 keeps its pixels exactly (up to the flip); with it, the same
    random draws change them."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    label = np.zeros((32, 32), dtype=np.uint8)
    cfg = TrainConfig(scale=(32, 32), ratio_range=(1.0, 1.0), crop_size=32, photometric_distortion=False)
    plain = [augment(image, label, cfg, np.random.default_rng(seed))[0] for seed in range(8)]
    source = torch.from_numpy(image).permute(2, 0, 1).float()
    expected = normalize(source), normalize(source.flip(-1))
    assert all(any(torch.equal(out, e) for e in expected) for out in plain)
    distorted = [
        augment(image, label, dataclasses.replace(cfg, photometric_distortion=True), np.random.default_rng(s))[0]
        for s in range(8)
    ]
    assert any(not any(torch.equal(out, e) for e in expected) for out in distorted)


def test_stream_is_independent_of_workers_and_processes(tmp_path):
    cfg = tiny_config(tmp_path)
    dataset = load_dataset("voc")
    stream = TrainingStream(list_samples("voc", cfg.data.root, "train"), dataset, cfg.train)
    assert len(stream) == 12  # train.txt (8) + aug.txt (4)
    image, label = stream[5]
    assert image.shape == (3, 64, 64) and label.shape == (64, 64) and label.dtype == torch.int64
    again, label_again = stream[5]
    assert torch.equal(image, again) and torch.equal(label, label_again)
    assert set(label.unique().tolist()) <= set(range(20)) | {255}
    # Two processes x 2 accumulation steps cover exactly the positions of one process with the global batch.
    one = list(StreamSampler(3, 5, 8, 1, 0, 1))
    split = [list(StreamSampler(3, 5, 8, 2, r, 2)) for r in range(2)]
    assert sorted(split[0] + split[1]) == one == list(range(24, 40))


def test_gradients_are_divided_by_the_pairs_per_process_at_least_one():
    # A toy module whose gradients are known: d/dw sum(w * x) = x.
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    for pairs, world_size, expected in ((12.0, 2, 6.0), (12.0, 1, 12.0), (3.0, 4, 1.0), (0.0, 1, 1.0)):
        toy = torch.nn.Linear(2, 2, bias=True)
        (toy.weight * x).sum().backward()  # the bias takes no part: its gradient stays None
        normaliser = normalise_gradients(list(toy.parameters()), torch.tensor(pairs), world_size)
        assert normaliser.item() == expected, (pairs, world_size)
        torch.testing.assert_close(toy.weight.grad, x / expected, rtol=0, atol=0)  # one exact division
        assert toy.bias.grad is None


def test_accumulation_step_sums_losses_pairs_and_gradients_of_its_micro_batches(tmp_path):
    cfg = tiny_config(tmp_path, dropout=False, batch_size=4, accumulation_steps=2)
    torch.manual_seed(0)
    model = CascadeCLIP(cfg.model).train()
    text = torch.from_numpy(np.load(cfg.classes.text_embeddings).astype(np.float32))
    stream = TrainingStream(list_samples("voc", cfg.data.root, "train"), load_dataset("voc"), cfg.train)
    batches = [tuple(map(torch.stack, zip(*[stream[i] for i in range(k, k + 2)], strict=True))) for k in (0, 2, 4)]
    classes, params = cfg.classes, [p for p in model.parameters() if p.requires_grad]

    expected_sums, expected_grads = torch.zeros(3), [torch.zeros_like(p) for p in params]
    for images, labels in batches[:2]:  # each micro-batch on its own, loss normaliser 1
        model.zero_grad(set_to_none=True)
        losses = training_losses(
            model, images, labels, text, classes.seen, classes.unseen, classes.setting, normaliser=torch.ones(())
        )
        (losses["loss_focal"] + losses["loss_dice"]).backward()
        expected_sums += torch.stack([losses["loss_focal"], losses["loss_dice"], losses["num_pairs"].float()]).detach()
        for total, p in zip(expected_grads, params, strict=True):
            total += p.grad if p.grad is not None else 0

    for p in params:  # stale gradients, which the step must clear first
        p.grad = torch.full_like(p, 7.0)
    remaining = iter(batches)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    sums = accumulation_step(model, remaining, text, cfg, scaler, torch.device("cpu"))
    assert next(remaining) is batches[2]  # exactly accumulation_steps micro-batches taken
    assert sums[2].item() == expected_sums[2].item() > 0  # (image, present class) pairs: integers
    # Same operations in the same order; the sums of two fp32 losses and gradients agree to rounding (1e-6).
    torch.testing.assert_close(sums, expected_sums, rtol=1e-6, atol=0)
    for p, grad in zip(params, expected_grads, strict=True):
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p), grad, rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(not fast_path.onednn_available(), reason="no alternative kernel to choose without oneDNN")
def test_train_kernels_chosen_runs_the_step_on_the_kernels_chosen_for_this_machine(tmp_path, monkeypatch):
    choice, calls = faked_choice(monkeypatch, "onednn_linear", extra_seconds=-0.5)  # oneDNN measured faster
    monkeypatch.setattr(kernel_choice, "_process_choice", choice)
    text, scaler = None, torch.amp.GradScaler("cpu", enabled=False)
    steps = {}
    for kernels in ("pytorch", "chosen"):
        cfg = tiny_config(tmp_path, dropout=False, batch_size=2, kernels=kernels)
        text = torch.from_numpy(np.load(cfg.classes.text_embeddings).astype(np.float32))
        stream = TrainingStream(list_samples("voc", cfg.data.root, "train"), load_dataset("voc"), cfg.train)
        batch = tuple(map(torch.stack, zip(*[stream[i] for i in range(2)], strict=True)))
        torch.manual_seed(0)
        model = CascadeCLIP(cfg.model).train()
        sums = accumulation_step(model, iter([batch]), text, cfg, scaler, torch.device("cpu"))
        steps[kernels] = sums, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert bool(calls) == (kernels == "chosen")  # the linear layers' products went to oneDNN only when asked
    (sums, grads), (expected_sums, expected_grads) = steps["chosen"], steps["pytorch"]
    # Another kernel's float rounding: sums of up to a few hundred products (1e-5).
    torch.testing.assert_close(sums, expected_sums, rtol=1e-5, atol=0)
    # Some gradients are zero in exact arithmetic (a key bias before a softmax) and rounding noise: the absolute
    # tolerance is relative to the model's largest gradient.
    assert grads.keys() == expected_grads.keys()
    largest = max(g.abs().max().item() for g in expected_grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(
            grad, expected_grads[name], rtol=1e-4, atol=1e-6 * largest, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_checkpoint_and_log_iterations():
    tcfg = TrainConfig(iters=20, checkpoint_interval=0, keep_iterations=(5,), log_interval=4)
    assert checkpoint_interval(tcfg) == 2  # a tenth of the run
    assert [d for d in range(1, 21) if is_checkpoint_iteration(d, tcfg)] == [2, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20]
    assert checkpoint_interval(TrainConfig(iters=7)) == 1  # never 0
    odd = TrainConfig(iters=10, checkpoint_interval=4)
    assert [d for d in range(1, 11) if is_checkpoint_iteration(d, odd)] == [4, 8, 10]  # and always the last
    assert [d for d in range(1, 21) if is_log_iteration(d, tcfg)] == [1, 4, 8, 12, 16, 20]
    assert [d for d in range(1, 11) if is_log_iteration(d, odd)] == [1, 10]  # log_interval 10: first and last


def test_save_checkpoint_keeps_the_newest_and_the_weights_at_keep_iterations(tmp_path):
    cfg = tiny_config(tmp_path, iters=6, keep_checkpoints=2, keep_iterations=(2,))
    model = CascadeCLIP(cfg.model)
    _, optimizer, scaler = build_optimiser(model, cfg.train, torch.device("cpu"))
    run = RunDirectory(tmp_path / "run")
    run.prepare(resume=False, force=False)
    single = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    def files() -> list[str]:
        return sorted(p.name for p in run.path.glob("iter_*"))

    for done in (2, 4):
        assert save_checkpoint(run, done, model, optimizer, scaler, cfg, single) == run.model_path(done)
    assert files() == ["iter_2.safetensors", "iter_2.state.pt", "iter_4.safetensors", "iter_4.state.pt"]
    assert run.status() == {"iteration": 4, "finished": False}
    save_checkpoint(run, 6, model, optimizer, scaler, cfg, single)
    # Two newest kept whole; of iteration 2 (in keep_iterations) the weights stay, its state goes.
    assert files() == [
        "iter_2.safetensors",
        "iter_4.safetensors",
        "iter_4.state.pt",
        "iter_6.safetensors",
        "iter_6.state.pt",
    ]
    assert run.status() == {"iteration": 6, "finished": True}
    state = run.load_state(6)
    assert set(state) == {"optimizer", "scaler", "rng"} and len(state["rng"]) == 1
    assert run.checkpoints() == [4, 6]


def test_short_inductive_run_learns_and_writes_its_outputs(tmp_path):
    cfg = tiny_config(
        tmp_path, iters=40, checkpoint_interval=10, keep_checkpoints=1, keep_iterations=(20,), eval_interval=20
    )
    result = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    # The newest checkpoint stays whole; of the others only the weights at keep_iterations stay.
    assert sorted(p.name for p in run.glob("iter_*")) == [
        "iter_20.safetensors",
        "iter_40.safetensors",
        "iter_40.state.pt",
    ]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evaluations = [r for r in log if "eval" in r]
    log = [r for r in log if "loss" in r]
    first = np.mean([r["loss"] for r in log[:5]])
    last = np.mean([r["loss"] for r in log[-5:]])
    # The periodic evaluation ran the test protocol on the 4 validation images; only the headline numbers are logged.
    assert [r["iter"] for r in evaluations] == [20, 40]
    assert all(set(r["eval"]) == {"mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "aAcc"} for r in evaluations)
    assert 0.0 < evaluations[-1]["eval"]["aAcc"] <= 100.0
    assert last < 0.6 * first, (first, last)
    assert result.checkpoint == run / "iter_40.safetensors" and result.checkpoint.is_file()
    assert (run / "iter_40.state.pt").is_file() and (run / "curves.png").stat().st_size > 1000
    assert (run / "config.yaml").is_file() and json.loads((run / "status.json").read_text())["finished"]
    model, classes, _ = load_checkpoint(result.checkpoint)
    assert classes.names == cfg.classes.names and model.cfg == cfg.model


def test_finished_run_is_not_overwritten(tmp_path):
    cfg = tiny_config(tmp_path, iters=2, checkpoint_interval=2)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="already holds a finished run"):
        train(cfg, tmp_path / "run", progress=False)
    train(cfg, tmp_path / "run", force=True, progress=False)


def test_transductive_pseudo_labels_only_on_unseen_pixels(tmp_path):
    inductive = tiny_config(tmp_path, iters=10)
    first = train(inductive, tmp_path / "inductive", progress=False)
    cfg = tiny_config(tmp_path, setting="transductive", iters=4, init=str(first.checkpoint.with_suffix("")))
    result = train(cfg, tmp_path / "transductive", progress=False)
    assert result.checkpoint.is_file()

    # Direct check of the targets: unseen ground truth -> an unseen class; seen and ignored pixels unchanged.
    model, _, _ = load_checkpoint(result.checkpoint)
    text = torch.from_numpy(np.load(cfg.classes.text_embeddings).astype(np.float32))
    stream = TrainingStream(list_samples("voc", cfg.data.root, "train"), load_dataset("voc"), cfg.train)
    images, labels = map(torch.stack, zip(*[stream[i] for i in range(6)], strict=True))
    unseen = torch.tensor(cfg.classes.unseen)
    with torch.no_grad():
        targets = transductive_targets(labels, model(images, text), unseen)
    is_unseen = torch.isin(labels, unseen)
    assert is_unseen.any() and (~is_unseen).any()
    assert torch.isin(targets[is_unseen], unseen).all()
    assert torch.equal(targets[~is_unseen], labels[~is_unseen])


def _run_cli(args: list[str], env_extra: dict | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "cascadeclip", *args], env=env, **popen)


def test_killed_run_resumes_to_identical_weights(tmp_path):
    cfg = tiny_config(tmp_path, iters=12, checkpoint_interval=3)  # train.kernels: chosen, the default
    save_yaml(cfg, tmp_path / "tiny.yaml")
    cache = {"CASCADECLIP_CACHE": str(tmp_path / "cache")}  # the machine's kernel choices, shared by the three runs
    straight = _run_cli(["train", str(tmp_path / "tiny.yaml"), "--run-dir", str(tmp_path / "straight")], cache)
    assert straight.wait(timeout=300) == 0

    victim = _run_cli(["train", str(tmp_path / "tiny.yaml"), "--run-dir", str(tmp_path / "killed")], cache)
    state = tmp_path / "killed" / "iter_6.state.pt"
    deadline = time.time() + 300
    while not state.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # at an arbitrary point after the second checkpoint
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # Resumed where the machine's choices are gone: the run takes the ones it recorded.
    (machine_file,) = (tmp_path / "cache" / "kernel_choices").glob("*.json")
    machine_file.unlink()
    resumed = _run_cli(["train", str(tmp_path / "tiny.yaml"), "--run-dir", str(tmp_path / "killed"), "--resume"], cache)
    assert resumed.wait(timeout=300) == 0
    record = json.loads((tmp_path / "straight" / "kernel_choices.json").read_text())["choices"]
    assert record and json.loads((tmp_path / "killed" / "kernel_choices.json").read_text())["choices"] == record
    a, b = weights(tmp_path / "straight" / "iter_12.safetensors"), weights(tmp_path / "killed" / "iter_12.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# The key bias of a decoder layer whose attention goes through a softmax adds the same value to every key's logit:
# its true gradient is zero, what it gets is rounding noise, and AdamW turns any noise into steps of size lr.
NOISE_ONLY = re.compile(r"layers\.[01]\.multihead_attn\.k\.bias$")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    compared = [key for key in a if not NOISE_ONLY.search(key)]
    assert len(a) - len(compared) == 6  # 3 stages x 2 softmax layers
    for key in compared:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    # Dropout off: with it, the two runs would draw different masks. The loss normaliser is the whole step's, so
    # the only difference is the order of floating-point sums: 1e-5 relative on weights after 3 AdamW steps.
    # PyTorch's kernels in both: the chosen ones are measured per batch size, so the two runs could differ in kernel.
    big = train(
        tiny_config(tmp_path, dropout=False, iters=3, batch_size=4, kernels="pytorch"), tmp_path / "big", progress=False
    )
    small = train(
        tiny_config(tmp_path, dropout=False, iters=3, batch_size=4, accumulation_steps=2, kernels="pytorch"),
        tmp_path / "acc",
        progress=False,
    )
    assert_same_weights(weights(big.checkpoint), weights(small.checkpoint))


@pytest.mark.distributed
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    # Same tolerance and reasons as gradient accumulation; gloo's all-reduce changes the summation order only.
    cfg = tiny_config(tmp_path, dropout=False, iters=3, batch_size=4, kernels="pytorch")
    save_yaml(cfg, tmp_path / "tiny.yaml")
    single = train(cfg, tmp_path / "single", progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cascadeclip",
        "train",
        str(tmp_path / "tiny.yaml"),
        "--run-dir",
        str(tmp_path / "ddp"),
        "--device",
        "cpu",
    ]
    subprocess.run(command, env=env, check=True, timeout=600, capture_output=True)
    assert_same_weights(weights(single.checkpoint), weights(tmp_path / "ddp" / "iter_3.safetensors"))
