"""The training loop: plain, explicit, iteration-based (docs/method.md, Training recipe).

`train` reads as the loop; each step it takes is a function of its own, in the order they run:
  set up:           `check_training_inputs`, `prepare_run` (run folder, resolved config beside it),
                    `starting_model`, `build_optimiser` (with `restore_training_state` on resume), `build_loader`
  every iteration:  `set_learning_rate`, `accumulation_step` (forward, loss and backward of each micro-batch),
                    `optimiser_step` (`normalise_gradients`, then AdamW), the log record (`is_log_iteration`),
                    `evaluate_step`, `save_checkpoint` (`is_checkpoint_iteration`)

One iteration = one optimiser step over the global batch, split into accumulation steps and processes. Gradients
are accumulated unnormalised and divided once by the reference's N_m (the step's (image, present class) pairs over
all micro-batches and processes, divided by the number of processes): with DDP's gradient averaging this gives
exactly the loss of one process holding the whole global batch, which is the reference's loss
(docs/authors-code.md#gradient-normalisation-by-n_m).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, TrainConfig, apply_overrides, flatten, save_yaml, to_dict, validate
from ..config.dataset_file import load_dataset, resolved
from ..data.datasets import list_samples
from ..data.train_pipeline import StreamSampler, TrainingStream, UnusableSample, collate_training
from ..distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from ..evaluation import evaluate
from ..factory import check_architecture, create_model, load_checkpoint, save_model
from ..inference.fast_path import chosen_kernels
from ..inference.kernel_choice import KernelChoice, run_choice
from ..inference.text_embeddings import class_embeddings, find_embedding_file, load_embedding_file
from ..modeling.cascade_clip import CascadeCLIP
from ..modeling.loss import pairs_per_process
from ..modeling.zero_shot import training_losses
from ..utils import IGNORE_INDEX, UserError
from .curves import plot_curves
from .run_directory import RunDirectory
from .schedule import learning_rate

# evaluate_fn(model, iteration) -> metrics to log; called on every process, logged by the first.
EvaluateFn = Callable[[CascadeCLIP, int], dict]
HEADLINE_METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "aAcc")


@dataclass
class TrainResult:
    checkpoint: Path  # the weights at `iteration`
    iteration: int  # the run's last iteration, train.iters
    last_loss: float  # NaN when no step was left to run
    start: int  # the iteration this call started from (a resumed run's checkpoint; `iteration` if it had finished)


# ----------------------------------------------------------------------------------------------------------------
# Setting up
# ----------------------------------------------------------------------------------------------------------------


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
        path = _resolve_init_checkpoint(cfg.train.init)
        model, _, _ = load_checkpoint(path, base=cfg.model)
        check_architecture(model, cfg.model, f"train.init {path}")
    return model


def _check_trainable(cfg: Config) -> None:
    """UserError unless the run's dataset can be trained on: labels of at most 255 classes, no background class."""
    dataset = load_dataset(cfg.classes.dataset)
    if dataset.num_classes > IGNORE_INDEX:
        raise UserError(
            f"{dataset.name} has {dataset.num_classes} classes; training reads 8-bit labels, so at most "
            f"{IGNORE_INDEX} classes (evaluation reads 16-bit labels of any number)"
        )
    if cfg.classes.background:
        raise UserError(
            f"classes.background ({cfg.classes.background!r}) is for evaluation; training takes background pixels "
            "as not labelled: use a dataset file that ignores them (e.g. reduce_zero_label: true, as voc.yaml)"
        )


def check_training_inputs(cfg: Config) -> torch.Tensor | None:
    """UserError for what can be told wrong in a resolved configuration before a run starts: ranges, a dataset that
    cannot be trained on, a class list of another length than the dataset's labels, an unusable embeddings file.
    Returns the class embeddings read from `classes.text_embeddings` when found (None: the text tower computes
    them)."""
    validate(cfg)
    _check_trainable(cfg)
    classes, dataset = cfg.classes, load_dataset(cfg.classes.dataset)
    if len(classes.names) != dataset.num_classes:
        raise UserError(
            f"classes.names lists {len(classes.names)} classes, but the labels of {dataset.name} number "
            f"{dataset.num_classes}: the names must be the dataset's classes, in its order"
        )
    embedding_file = find_embedding_file(classes.text_embeddings) if classes.text_embeddings else None
    return load_embedding_file(embedding_file, len(classes.names)) if embedding_file else None


def _per_device_batch(cfg: Config, world_size: int) -> int:
    per_device, rest = divmod(cfg.train.batch_size, world_size * cfg.train.accumulation_steps)
    if rest or per_device < 1:
        raise UserError(
            f"train.batch_size {cfg.train.batch_size} is not divisible by processes ({world_size}) x "
            f"train.accumulation_steps ({cfg.train.accumulation_steps})"
        )
    return per_device


def prepare_run(
    cfg: Config, run_dir: str | Path, resume: bool, force: bool, dist_info: DistInfo
) -> tuple[RunDirectory, int]:
    """The run folder, ready (see `RunDirectory.prepare`), with the resolved config saved in it and the log cut back to
    the iteration the run starts from; returns (folder, that iteration), the same on every process."""
    run = RunDirectory(run_dir)
    if resume:  # on every process, before the first one writes the config over
        check_resumed_config(run.config, cfg)

    def planned(t: int) -> bool:  # a test, not a list: train.iters may be large
        return 0 < t <= cfg.train.iters and is_checkpoint_iteration(t, cfg.train)

    start = run.prepare(resume, force, planned) if dist_info.is_main else 0
    start = int(all_reduce_sum(torch.tensor(start)).item()) if dist_info.world_size > 1 else start
    if start > cfg.train.iters:
        raise UserError(
            f"--resume: the run in {run.path} is at iteration {start}, beyond train.iters ({cfg.train.iters}); give "
            f"train.iters={start} or more, or start a new run"
        )
    if dist_info.is_main:
        save_yaml(cfg, run.config)
        run.truncate_log(start)
    return run, start


# What a resumed run may change: its length (to train on, the schedule taking the new one from there); where the data
# is read from; how the run is logged, saved and evaluated; its kernels (float rounding only); and, its weights coming
# from its own checkpoint, train.init and train.clip_weights.
CHANGEABLE_ON_RESUME = (
    "train.iters",
    "name",
    "data.",
    "test.",
    "train.kernels",
    "train.log_interval",
    "train.eval_interval",
    "train.checkpoint_interval",
    "train.keep_checkpoints",
    "train.keep_iterations",
    "train.init",
    "train.clip_weights",
)


def check_resumed_config(saved: Path, cfg: Config) -> None:
    """UserError when `cfg` would change what the run that `saved` (its config.yaml) started computes: its model,
    classes or recipe (anything but CHANGEABLE_ON_RESUME). Resuming it so would make a run of neither setting and
    write over the record of the first."""
    if not saved.is_file():
        return
    before, now = flatten(to_dict(apply_overrides(Config(), [saved]))), flatten(to_dict(cfg))
    changed = [key for key in now if now[key] != before.get(key) and not key.startswith(CHANGEABLE_ON_RESUME)]
    if changed:
        shown = "; ".join(f"{key} {before.get(key)!r} in the run, {now[key]!r} now" for key in changed[:4])
        raise UserError(
            f"--resume: the run in {saved.parent} was started with other settings ({shown}"
            + (" ..." if len(changed) > 4 else "")
            + f"). Resume it with its own ({saved}), or start a new run: another --run-dir, or --force"
        )


def starting_model(cfg: Config, run: RunDirectory, start: int) -> CascadeCLIP:
    """The model at iteration `start`: a resumed run takes its weights (and text tower) from its own last
    checkpoint, not from train.init."""
    return load_checkpoint(run.model_path(start), base=cfg.model)[0] if start > 0 else build_model(cfg)


def protocol_evaluation(cfg: Config, text: torch.Tensor) -> EvaluateFn:
    """The default periodic evaluation: the test protocol on the validation split, headline numbers only."""

    def evaluate_fn(bare_model: CascadeCLIP, iteration: int) -> dict:
        results = evaluate(bare_model, cfg, text)
        return {key: results[key] for key in HEADLINE_METRICS}

    return evaluate_fn


def build_optimiser(
    model: CascadeCLIP, tcfg: TrainConfig, device: torch.device
) -> tuple[list[nn.Parameter], torch.optim.AdamW, torch.amp.GradScaler]:
    """(trainable parameters, AdamW over them with one learning rate and weight decay, gradient scaler).

    The scaler is active for fp16 only; otherwise its scale, unscale and step are plain pass-throughs.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.precision == "fp16")
    return params, optimizer, scaler


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


def restore_training_state(
    state: dict, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, dist_info: DistInfo
) -> None:
    """Continue from a checkpoint's training state: optimiser, gradient scaler, this process's RNG states."""
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    _restore_rng(state["rng"], dist_info)


def build_loader(cfg: Config, start: int, per_device: int, dist_info: DistInfo) -> DataLoader:
    """This process's share of the training stream from iteration `start` on, `per_device` samples per batch,
    `train.accumulation_steps` batches per iteration (see `StreamSampler`)."""
    tcfg = cfg.train
    dataset = load_dataset(cfg.classes.dataset)
    stream = TrainingStream(list_samples(dataset, cfg.data.root, "train"), dataset, tcfg)
    sampler = StreamSampler(
        start, tcfg.iters, tcfg.batch_size, tcfg.accumulation_steps, dist_info.rank, dist_info.world_size
    )
    return DataLoader(
        stream,
        batch_size=per_device,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=dist_info.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
        generator=torch.Generator().manual_seed(tcfg.seed),  # keeps the loader off the global RNG (dropout's)
        collate_fn=collate_training,
    )


# ----------------------------------------------------------------------------------------------------------------
# One iteration
# ----------------------------------------------------------------------------------------------------------------


def set_learning_rate(optimizer: torch.optim.Optimizer, iteration: int, tcfg: TrainConfig) -> float:
    """Set the schedule's learning rate for `iteration` (0-based) on every parameter group; returns it."""
    lr = learning_rate(iteration, tcfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise UserError(f"train.precision {precision!r}: use fp32, bf16 or fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulation_step(
    trained: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    text: torch.Tensor,
    cfg: Config,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    choice: KernelChoice | None = None,
) -> torch.Tensor:
    """Forward, loss and backward of one optimiser step's `train.accumulation_steps` micro-batches.

    The gradients are cleared first, then each micro-batch's loss (normaliser 1) is back-propagated, so they end as
    the sum over the micro-batches, not yet normalised. Under DDP (`trained` wrapped) they are synchronised, i.e.
    averaged over processes, on the last micro-batch only.

    Args:
        trained: the model, or its DDP wrapper under torchrun.
        batches: (images (B, 3, S, S), labels (B, S, S)) per micro-batch; `train.accumulation_steps` are taken.
        text: (C_all, D) embeddings of all classes, on `device`.
        choice: the kernel choices of `train.kernels: chosen` (None: the process's).
    Returns:
        (3,) this process's sums over its micro-batches: focal term, dice term (both with normaliser 1), and
        (image, present class) pairs.
    """
    classes, tcfg = cfg.classes, cfg.train
    distributed = isinstance(trained, DistributedDataParallel)
    trained.zero_grad(set_to_none=True)
    sums = torch.zeros(3, device=device)  # focal sum, dice sum, (image, class) pairs
    for step in range(tcfg.accumulation_steps):
        batch = next(batches)
        if isinstance(batch, UnusableSample):
            raise UserError(f"{batch.message} (`cascade-clip check-data` lists every problem of a dataset)")
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        sync = step == tcfg.accumulation_steps - 1 or not distributed
        no_sync = contextlib.nullcontext() if sync else trained.no_sync()
        kernels = chosen_kernels(device, choice) if tcfg.kernels == "chosen" else contextlib.nullcontext()
        with no_sync, _autocast(tcfg.precision, device), kernels:
            losses = training_losses(
                trained,
                images,
                labels,
                text,
                classes.seen,
                classes.unseen,
                classes.setting,
                normaliser=torch.ones((), device=device),
            )
            scaler.scale(losses["loss_focal"] + losses["loss_dice"]).backward()
        sums += torch.stack([losses["loss_focal"].detach(), losses["loss_dice"].detach(), losses["num_pairs"].float()])
    return sums


def normalise_gradients(params: list[nn.Parameter], step_pairs: torch.Tensor, world_size: int) -> torch.Tensor:
    """Divide the gradients by the reference's N_m of the whole step; returns N_m.

    N_m = the step's (image, present class) pairs over all micro-batches and processes (`step_pairs`), divided by
    the number of processes, at least 1. DDP has averaged the gradients over the processes, so after this they are
    those of the loss summed over the step divided by all its pairs: the reference's loss for the global batch.
    """
    normaliser = pairs_per_process(step_pairs, world_size)
    for p in params:
        if p.grad is not None:
            p.grad.div_(normaliser)
    return normaliser


def optimiser_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[nn.Parameter],
    step_pairs: torch.Tensor,
    world_size: int,
) -> torch.Tensor:
    """Unscale (fp16), normalise the gradients by N_m (`normalise_gradients`), step AdamW; returns N_m."""
    scaler.unscale_(optimizer)
    normaliser = normalise_gradients(params, step_pairs, world_size)
    scaler.step(optimizer)
    scaler.update()
    return normaliser


def is_log_iteration(done: int, tcfg: TrainConfig) -> bool:
    """Whether the iteration that has just made `done` steps is logged: the first, every log_interval-th, the last."""
    return done % tcfg.log_interval == 0 or done == tcfg.iters or done == 1


def evaluate_step(model: CascadeCLIP, evaluate_fn: EvaluateFn, done: int, run: RunDirectory, is_main: bool) -> None:
    """Run `evaluate_fn` on the bare model in eval mode (every process) and log its metrics (the first process)."""
    metrics = evaluate_fn(model.eval(), done)
    model.train()
    if is_main:
        run.append_log({"iter": done, "eval": metrics})


def checkpoint_interval(tcfg: TrainConfig) -> int:
    """Iterations between checkpoints: train.checkpoint_interval, or a tenth of the run (at least 1) when 0."""
    return tcfg.checkpoint_interval or max(tcfg.iters // 10, 1)


def is_checkpoint_iteration(done: int, tcfg: TrainConfig) -> bool:
    """Whether a checkpoint is written after `done` steps: every interval, at the end, and at train.keep_iterations."""
    return done % checkpoint_interval(tcfg) == 0 or done == tcfg.iters or done in tcfg.keep_iterations


def save_checkpoint(
    run: RunDirectory,
    done: int,
    model: CascadeCLIP,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: Config,
    dist_info: DistInfo,
) -> Path:
    """Write the weights and training state after `done` steps, prune older checkpoints, update status and curves.

    Every process must call it (the RNG states of all processes are gathered); the first one writes. Older
    checkpoints beyond train.keep_checkpoints are deleted, except the weights at train.keep_iterations. Returns the
    weights' path.
    """
    tcfg = cfg.train
    rng = _rng_states(dist_info)
    if dist_info.is_main:
        run.claim_checkpoint(done)
        save_model(run.model_path(done), model, cfg.classes, iteration=done, config_name=cfg.name)
        run.save_state(done, {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng})
        run.prune(tcfg.keep_checkpoints, tcfg.keep_iterations)
        run.write_status(done, finished=done == tcfg.iters)
        plot_curves(run.log, run.curves)
    barrier()
    return run.model_path(done)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


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
    cfg = resolved(cfg)
    file_text = check_training_inputs(cfg)
    dist_info = init_distributed(device)
    tcfg, world_size = cfg.train, dist_info.world_size
    run, start = prepare_run(cfg, run_dir, resume, force, dist_info)
    per_device = _per_device_batch(cfg, world_size)

    torch.manual_seed(tcfg.seed + dist_info.rank)
    # The fast path: the reference's gradients, with less work.
    model = starting_model(cfg, run, start).to(dist_info.device).train().set_fast_path(True)
    classes = cfg.classes
    if file_text is None:
        file_text = class_embeddings(classes.names, classes.templates, "", model.text_encoder)
    text = file_text.to(dist_info.device)
    evaluate_fn = evaluate_fn or protocol_evaluation(cfg, text)
    params, optimizer, scaler = build_optimiser(model, tcfg, dist_info.device)
    if start > 0:
        restore_training_state(run.load_state(start), optimizer, scaler, dist_info)
    # The last decoder layer's value path and FFN never receive gradients (as in the reference): DDP must know.
    trained = DistributedDataParallel(model, find_unused_parameters=True) if world_size > 1 else model
    batches = iter(build_loader(cfg, start, per_device, dist_info))
    # The main process records its choices in the run; under torchrun the others take the machine's, the same ones
    # unless they were measured at the same moment.
    choice = run_choice(run.kernel_choices) if tcfg.kernels == "chosen" and dist_info.is_main else None

    bar = tqdm(
        total=tcfg.iters, initial=start, desc="train", disable=not (progress and dist_info.is_main), dynamic_ncols=True
    )
    last_checkpoint, last_loss, started = run.model_path(start), math.nan, time.time()
    for iteration in range(start, tcfg.iters):
        lr = set_learning_rate(optimizer, iteration, tcfg)
        sums = all_reduce_sum(accumulation_step(trained, batches, text, cfg, scaler, dist_info.device, choice))
        normaliser = optimiser_step(optimizer, scaler, params, sums[2], world_size)
        done = iteration + 1
        focal, dice = (sums[:2] / world_size / normaliser).tolist()
        last_loss = focal + dice
        if not math.isfinite(last_loss):
            raise UserError(
                f"the training loss became {last_loss} at iteration {done}: the run diverged, and nothing of this "
                "iteration was saved. Lower train.lr, or use train.precision=fp32, and resume from the last checkpoint"
            )
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}")
        if dist_info.is_main and is_log_iteration(done, tcfg):
            record = {"iter": done, "loss": last_loss, "loss_focal": focal, "loss_dice": dice, "lr": lr}
            run.append_log({**record, "time": round(time.time() - started, 3)})
        if tcfg.eval_interval and done % tcfg.eval_interval == 0:
            evaluate_step(model, evaluate_fn, done, run, dist_info.is_main)
        if is_checkpoint_iteration(done, tcfg):
            last_checkpoint = save_checkpoint(run, done, model, optimizer, scaler, cfg, dist_info)
    bar.close()
    return TrainResult(last_checkpoint, tcfg.iters, last_loss, start)
