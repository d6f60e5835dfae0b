"""The training loop: plain, explicit, iteration-based (docs/method.md, Training recipe).

One iteration = one optimiser step over the global batch, split into accumulation steps and processes. Gradients
are accumulated unnormalised and divided once by the reference's N_m (the step's (image, present class) pairs over
all micro-batches and processes, divided by the number of processes): with DDP's gradient averaging this gives
exactly the loss of one process holding the whole global batch, which is the reference's loss.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, save_yaml
from ..data.datasets import get_layout, list_samples
from ..data.train_pipeline import StreamSampler, TrainingStream
from ..evaluation import evaluate
from ..factory import create_model, load_checkpoint, save_model
from ..inference.text_embeddings import class_embeddings
from ..modeling.cascade_clip import CascadeCLIP
from ..modeling.zero_shot import training_losses
from ..utils import UserError
from .curves import plot_curves
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .run_directory import RunDirectory
from .schedule import learning_rate

# evaluate_fn(model, iteration) -> metrics to log; called on every process, logged by the first.
EvaluateFn = Callable[[CascadeCLIP, int], dict]
HEADLINE_METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "aAcc")


@dataclass
class TrainResult:
    checkpoint: Path
    iteration: int
    last_loss: float


def _resolve_init_checkpoint(init: str) -> Path:
    path = Path(init).expanduser()
    for candidate in (path, path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".pth")):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"train.init {init!r}: no such checkpoint (tried {path}, .safetensors, .pth). Give 'clip' to start from the "
        "OpenAI CLIP weights, or the path of the inductive run's checkpoint for a transductive run"
    )


def build_model(cfg: Config) -> CascadeCLIP:
    """The model a run starts from: CLIP-initialised, random (smoke tests), or another checkpoint's weights."""
    if cfg.train.init == "clip":
        model, _ = create_model(cfg.model, clip_weights=cfg.train.clip_weights)
    elif cfg.train.init == "random":
        model, _ = create_model(cfg.model)
    else:
        model, _, _ = load_checkpoint(_resolve_init_checkpoint(cfg.train.init), base=cfg.model)
    return model


def _per_device_batch(cfg: Config, world_size: int) -> int:
    per_device, rest = divmod(cfg.train.batch_size, world_size * cfg.train.accumulation_steps)
    if rest or per_device < 1:
        raise UserError(
            f"train.batch_size {cfg.train.batch_size} is not divisible by processes ({world_size}) x "
            f"train.accumulation_steps ({cfg.train.accumulation_steps})"
        )
    return per_device


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise UserError(f"train.precision {precision!r}: use fp32, bf16 or fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _rng_states(dist_info: DistInfo) -> list[dict]:
    """Every process's torch RNG states (dropout draws), gathered on all processes."""
    own = {"cpu": torch.get_rng_state()}
    if dist_info.device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(dist_info.device)
    if dist_info.world_size == 1:
        return [own]
    gathered: list = [None] * dist_info.world_size
    torch.distributed.all_gather_object(gathered, own)
    return gathered


def _restore_rng(states: list[dict], dist_info: DistInfo) -> None:
    if len(states) != dist_info.world_size:
        raise UserError(f"the checkpoint was written by {len(states)} processes; resume with the same number")
    own = states[dist_info.rank]
    torch.set_rng_state(own["cpu"])
    if "cuda" in own and dist_info.device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda"], dist_info.device)


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    evaluate_fn: EvaluateFn | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `cfg` in `run_dir` (resuming from its last checkpoint when `resume`); works under torchrun.

    Every `train.eval_interval` iterations (0: never) `evaluate_fn` runs, by default the test protocol on the
    validation split of `data.root` (headline numbers logged).

    Returns the last checkpoint written, its iteration, and the last logged loss.
    """
    dist_info = init_distributed(device)
    tcfg = cfg.train
    run = RunDirectory(run_dir)
    start = run.prepare(resume, force) if dist_info.is_main else 0
    start = int(all_reduce_sum(torch.tensor(start)).item()) if dist_info.world_size > 1 else start
    if dist_info.is_main:
        save_yaml(cfg, run.config)
        run.truncate_log(start)
    per_device = _per_device_batch(cfg, dist_info.world_size)
    checkpoint_every = tcfg.checkpoint_interval or max(tcfg.iters // 10, 1)

    torch.manual_seed(tcfg.seed + dist_info.rank)
    # A resumed run takes its weights (and text tower) from its own last checkpoint, not from train.init.
    model = load_checkpoint(run.model_path(start), base=cfg.model)[0] if start > 0 else build_model(cfg)
    model = model.to(dist_info.device).train()
    classes = cfg.classes
    text = class_embeddings(classes.names, classes.templates, classes.text_embeddings, model.text_encoder)
    text = text.to(dist_info.device)
    if evaluate_fn is None:

        def evaluate_fn(bare_model: CascadeCLIP, iteration: int) -> dict:
            results = evaluate(bare_model, cfg, text)
            return {key: results[key] for key in HEADLINE_METRICS}

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    scaler = torch.amp.GradScaler(dist_info.device.type, enabled=tcfg.precision == "fp16")
    if start > 0:
        state = run.load_state(start)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _restore_rng(state["rng"], dist_info)
    # The last decoder layer's value path and FFN never receive gradients (as in the reference): DDP must know.
    trained = DistributedDataParallel(model, find_unused_parameters=True) if dist_info.world_size > 1 else model

    layout = get_layout(classes.dataset)
    stream = TrainingStream(list_samples(classes.dataset, cfg.data.root, "train"), layout, tcfg)
    sampler = StreamSampler(
        start, tcfg.iters, tcfg.batch_size, tcfg.accumulation_steps, dist_info.rank, dist_info.world_size
    )
    loader = DataLoader(
        stream,
        batch_size=per_device,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=dist_info.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
        generator=torch.Generator().manual_seed(tcfg.seed),  # keeps the loader off the global RNG (dropout's)
    )
    batches = iter(loader)

    bar = tqdm(
        total=tcfg.iters, initial=start, desc="train", disable=not (progress and dist_info.is_main), dynamic_ncols=True
    )
    last_checkpoint, last_loss, started = run.model_path(start), math.nan, time.time()
    for iteration in range(start, tcfg.iters):
        lr = learning_rate(iteration, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(3, device=dist_info.device)  # focal sum, dice sum, (image, class) pairs
        for step in range(tcfg.accumulation_steps):
            images, labels = next(batches)
            images = images.to(dist_info.device, non_blocking=True)
            labels = labels.to(dist_info.device, non_blocking=True)
            sync = step == tcfg.accumulation_steps - 1 or dist_info.world_size == 1
            with contextlib.nullcontext() if sync else trained.no_sync(), _autocast(tcfg.precision, dist_info.device):
                losses = training_losses(
                    trained,
                    images,
                    labels,
                    text,
                    classes.seen,
                    classes.unseen,
                    classes.setting,
                    normaliser=torch.ones((), device=dist_info.device),
                )
                scaler.scale(losses["loss_focal"] + losses["loss_dice"]).backward()
            sums += torch.stack(
                [losses["loss_focal"].detach(), losses["loss_dice"].detach(), losses["num_pairs"].float()]
            )
        all_reduce_sum(sums)
        # N_m of the reference: pairs of the whole step over the processes, per process, at least 1. DDP has
        # averaged the gradients over processes, so dividing by N_m yields the loss sum over the step / all pairs.
        normaliser = (sums[2] / dist_info.world_size).clamp(min=1.0)
        scaler.unscale_(optimizer)
        for p in params:
            if p.grad is not None:
                p.grad.div_(normaliser)
        scaler.step(optimizer)
        scaler.update()

        done = iteration + 1
        focal, dice = (sums[:2] / dist_info.world_size / normaliser).tolist()
        last_loss = focal + dice
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}")
        if dist_info.is_main and (done % tcfg.log_interval == 0 or done == tcfg.iters or done == 1):
            run.append_log(
                {
                    "iter": done,
                    "loss": last_loss,
                    "loss_focal": focal,
                    "loss_dice": dice,
                    "lr": lr,
                    "time": round(time.time() - started, 3),
                }
            )
        if tcfg.eval_interval and done % tcfg.eval_interval == 0:
            metrics = evaluate_fn(model.eval(), done)
            model.train()
            if dist_info.is_main:
                run.append_log({"iter": done, "eval": metrics})
        if done % checkpoint_every == 0 or done == tcfg.iters or done in tcfg.keep_iterations:
            rng = _rng_states(dist_info)
            if dist_info.is_main:
                save_model(run.model_path(done), model, classes, iteration=done, config_name=cfg.name)
                run.save_state(done, {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng})
                run.prune(tcfg.keep_checkpoints, tcfg.keep_iterations)
                run.write_status(done, finished=done == tcfg.iters)
                plot_curves(run.log, run.curves)
            last_checkpoint = run.model_path(done)
            barrier()
    bar.close()
    return TrainResult(last_checkpoint, tcfg.iters, last_loss)
