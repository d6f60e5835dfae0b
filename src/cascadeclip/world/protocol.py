"""The zero-shot protocol in the miniature world, end to end, with the project's own trainer and evaluation.

1. The world's dataset (VOC layout) and its pretrained tiny CLIP (shipped with the package for the default recipe,
   else pretrained), both cached.
2. Control (b): a linear probe of the frozen tiny CLIP's tokens (`probe.py`): do its features carry the classes?
3. Per head variant (the cascade, and the single last-layer decoder of ZegCLIP): inductive training from the tiny
   CLIP, then transductive training from the inductive run's midpoint weights, as the authors' recipe does. The
   inductive models' seen-class shift is chosen on held-out training scenes (`calibration.py`).
4. Control (a): the cascade trained with every class seen, same recipe: the ceiling of this world at this size.
5. Each final model evaluated on the world's validation split: mIoU of seen and unseen classes, hIoU.
6. Chance level: the same metric for predictions that ignore the image (uniform random classes, or the most common
   training class everywhere).

`run_seeds` repeats all of it for several seeds, each seed drawing its own world, CLIP and training.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..config.class_names import WORLD_UNSEEN
from ..config.dataset_file import load_dataset
from ..config.presets import WORLD_IMAGE_SIZE, WORLD_INDUCTIVE_ITERS, world_preset
from ..data.datasets import list_samples, read_label
from ..engine.trainer import train
from ..evaluation import IoUAccumulator, evaluate
from ..factory import load_checkpoint
from ..modeling.cascade_clip import CascadeCLIP
from .cache import cached_folder
from .calibration import calibrate, evaluate_shifts
from .dataset import write_dataset
from .pretrain import TinyClipConfig
from .probe import probe_control
from .scenes import WORLD_VERSION
from .shipped import pretrained_tiny_clip

SETTINGS = ("inductive", "transductive")
# Head variants compared: the reference's three stages, and one decoder on the final map only (ZegCLIP).
VARIANTS = {"cascade": None, "single": ((6,),)}
AUTHORS_SHIFT = 0.1  # the seen-class shift of the reference, tuned for OpenAI's CLIP


@dataclass(frozen=True)
class WorldRecipe:
    """Everything that determines the demo's numbers. The same recipe always gives the same numbers."""

    seed: int = 0
    train_images: int = 2000
    heldout_images: int = 200  # training scenes never trained on, for the seen-class shift (calibration.py)
    val_images: int = 200
    probe_images: int = 500  # training scenes the linear probe is fitted on
    iters: int = WORLD_INDUCTIVE_ITERS  # inductive iterations; transductive runs half as many
    clip_steps: int = TinyClipConfig.steps
    clip_batch: int = TinyClipConfig.batch_size
    zero_shot_images: int = TinyClipConfig.zero_shot_images

    @property
    def clip(self) -> TinyClipConfig:
        return TinyClipConfig(
            image_size=WORLD_IMAGE_SIZE,
            steps=self.clip_steps,
            batch_size=self.clip_batch,
            zero_shot_images=self.zero_shot_images,
            seed=self.seed,
        )

    @classmethod
    def smoke(cls, seed: int = 0) -> WorldRecipe:
        """Toy sizes that run the whole chain in seconds: checks that everything works, its numbers mean nothing."""
        return cls(
            seed=seed,
            train_images=8,
            heldout_images=4,
            val_images=4,
            probe_images=8,
            iters=4,
            clip_steps=2,
            clip_batch=8,
            zero_shot_images=2,
        )


@dataclass
class ProtocolResult:
    seed: int
    # "<variant>-<setting>" -> the evaluation's results on the validation split (percentages); the inductive models
    # at their calibrated seen-class shift
    metrics: dict[str, dict]
    predictions: dict[str, dict[str, np.ndarray]]  # "<variant>-<setting>" -> validation image name -> (H, W) classes
    # "<variant>-inductive" -> {"shift": chosen, "grid": [...] on held-out training scenes, "val_without_shift",
    # "val_authors_shift": validation results at shift 0 and at the authors' 0.1}
    calibration: dict[str, dict]
    supervised: dict  # control (a): validation results of the cascade trained with every class seen
    probe: dict[str, dict]  # control (b): feature set -> token accuracies (percentages) and counts
    chance: dict[str, dict]  # "uniform" / "majority" -> metrics of image-blind predictions
    clip_facts: dict  # the tiny CLIP's pretraining losses, zero-shot accuracies, source
    runs: dict[str, Path]  # "<variant>-<setting>" and "cascade-supervised" -> run folder
    configs: dict[str, Config]
    data_root: Path
    # wall time of each stage: "dataset", "clip", "probe", "segmentation" (every run), and "run <name>" of each run
    # (training and evaluation; runs in parallel processes overlap)
    seconds: dict[str, float]


def world_dataset(recipe: WorldRecipe, cache: Path | None = None) -> Path:
    """The dataset root of the recipe's world, written on first use."""
    spec = {
        "version": WORLD_VERSION,
        "seed": recipe.seed,
        "size": WORLD_IMAGE_SIZE,
        "train": recipe.train_images,
        "heldout": recipe.heldout_images,
        "val": recipe.val_images,
        "layout": load_dataset("world").folder,
    }

    def build(folder: Path) -> None:
        write_dataset(
            folder, recipe.seed, WORLD_IMAGE_SIZE, recipe.train_images, recipe.val_images, recipe.heldout_images
        )

    return cached_folder("dataset", spec, build, cache)


def run_config(recipe: WorldRecipe, variant: str, setting: str, data_root: Path, clip_path: Path, runs: Path) -> Config:
    cfg = world_preset(setting, recipe.iters)
    cfg.name = f"{variant}-{setting}"
    cfg.data.root = str(data_root)
    cfg.train.clip_weights = str(clip_path)
    cfg.train.seed = recipe.seed
    if setting == "transductive":
        cfg.train.init = str(runs / f"{variant}-inductive" / f"iter_{recipe.iters // 2}.safetensors")
    if VARIANTS[variant] is not None:
        cfg.model.head.stages = VARIANTS[variant]
    return cfg


def chance_metrics(cfg: Config, seed: int) -> dict[str, dict]:
    """The metric for image-blind predictions on the validation split: a uniformly random class per pixel, and the
    class with the most training pixels everywhere. No model does worse than these without being wrong on purpose."""
    dataset = load_dataset(cfg.classes.dataset)
    names, unseen = cfg.classes.names, cfg.classes.unseen
    counts = np.zeros(256, dtype=np.int64)
    for sample in list_samples(dataset, cfg.data.root, "train"):
        counts += np.bincount(read_label(sample.label, dataset).ravel(), minlength=256)
    majority = int(counts[: len(names)].argmax())
    rng = np.random.default_rng(seed)
    uniform, everywhere = IoUAccumulator(len(names)), IoUAccumulator(len(names))
    for sample in list_samples(dataset, cfg.data.root, "val"):
        label = torch.from_numpy(read_label(sample.label, dataset))
        uniform.update(torch.from_numpy(rng.integers(len(names), size=tuple(label.shape))), label)
        everywhere.update(torch.full_like(label, majority), label)
    return {
        "uniform": uniform.results(names, unseen),
        "majority": {**everywhere.results(names, unseen), "class": names[majority]},
    }


def supervised_config(recipe: WorldRecipe, data_root: Path, clip_path: Path, runs: Path) -> Config:
    """Control (a): the inductive cascade with every class seen (labelled in training), same recipe."""
    cfg = run_config(recipe, "cascade", "inductive", data_root, clip_path, runs)
    cfg.name = "cascade-supervised"
    cfg.classes = replace(cfg.classes, unseen=())
    return cfg


def class_group_means(results: dict, groups: dict[str, tuple[int, ...]]) -> dict[str, float | None]:
    """Mean IoU (percent) over each group of class indices, classes without an IoU left out; None if none has one."""
    means = {}
    for group, indices in groups.items():
        values = [results["per_class"][i]["IoU"] for i in indices if results["per_class"][i]["IoU"] is not None]
        means[group] = sum(values) / len(values) if values else None
    return means


def train_and_load(cfg: Config, out: Path, device: str, progress: bool) -> CascadeCLIP:
    result = train(cfg, out, force=True, device=device, progress=progress)
    model, _, _ = load_checkpoint(result.checkpoint, base=cfg.model)
    return model.to(device)


# The training chains of one seed, independent of each other: each head variant (inductive, then transductive from
# the inductive midpoint), and control (a).
CHAINS = (*VARIANTS, "supervised")


def run_chain(
    chain: str, recipe: WorldRecipe, data_root: Path, clip_path: Path, runs: Path, device: str, progress: bool
) -> dict[str, dict]:
    """Train and evaluate the runs of one chain; returns run name -> {"metrics", "predictions", "config", "seconds",
    and for inductive runs "calibration"}."""
    outcomes = {}
    if chain == "supervised":
        started = time.time()
        cfg = supervised_config(recipe, data_root, clip_path, runs)
        metrics = evaluate(train_and_load(cfg, runs / cfg.name, device, progress), cfg, progress=progress)
        split = {"seen": run_config(recipe, "cascade", "inductive", data_root, clip_path, runs).classes.seen}
        split["unseen"] = WORLD_UNSEEN
        metrics.update({f"mIoU_{group}_classes": v for group, v in class_group_means(metrics, split).items()})
        return {cfg.name: {"metrics": metrics, "config": cfg, "seconds": time.time() - started}}
    for setting in SETTINGS:
        started = time.time()
        name = f"{chain}-{setting}"
        cfg = run_config(recipe, chain, setting, data_root, clip_path, runs)
        model = train_and_load(cfg, runs / name, device, progress)
        outcome = outcomes[name] = {}
        if setting == "inductive":
            chosen = calibrate(model, cfg)
            without, authors = evaluate_shifts(model, cfg, "val", (0.0, AUTHORS_SHIFT))
            outcome["calibration"] = {**chosen, "val_without_shift": without, "val_authors_shift": authors}
            cfg.classes = replace(cfg.classes, seen_score_shift=chosen["shift"])
        kept = outcome["predictions"] = {}
        outcome["metrics"] = evaluate(
            model,
            cfg,
            progress=progress,
            on_prediction=lambda item, pred, kept=kept: kept.update({item["name"]: pred.numpy()}),
        )
        outcome.update(config=cfg, seconds=time.time() - started)
    return outcomes


def run_chains(
    recipe: WorldRecipe,
    data_root: Path,
    clip_path: Path,
    runs: Path,
    device: str,
    progress: bool,
    announce: Callable[[str], None],
    jobs: int,
) -> dict[str, dict]:
    """Every chain, one after the other in this process (`jobs` 1) or in `jobs` worker processes of one thread each.
    A run's numbers are the same either way only if this process also runs one thread: `cascade-clip demo` sees to
    that."""
    if jobs == 1:
        outcomes = {}
        for chain in CHAINS:
            announce(f"training {chain_title(chain, recipe.iters)}")
            outcomes.update(run_chain(chain, recipe, data_root, clip_path, runs, device, progress))
        return outcomes
    announce(f"training in {jobs} processes: " + "; ".join(chain_title(c, recipe.iters) for c in CHAINS))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state of this process is shared
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {
            pool.submit(run_chain, chain, recipe, data_root, clip_path, runs, device, False): chain for chain in CHAINS
        }
        by_chain = {}
        for future in as_completed(futures):
            by_chain[futures[future]] = future.result()
            announce(f"done: {futures[future]}")
    return {name: outcome for chain in CHAINS for name, outcome in by_chain[chain].items()}  # in the serial order


def chain_title(chain: str, iters: int) -> str:
    if chain == "supervised":
        return f"control cascade-supervised (every class seen), {iters} iterations"
    return f"{chain}-inductive, {iters} iterations, then {chain}-transductive, {iters // 2}"


@dataclass(frozen=True)
class Execution:
    """How the protocol runs (never what it computes)."""

    cache: Path | None = None  # the cache folder; None: the project's
    progress: bool = True  # progress bars
    announce: Callable[[str], None] = print  # told each stage's name
    device: str = "cpu"  # where the segmentation models train
    jobs: int = 1  # training chains run at a time (see `run_chains`)


def run_protocol(recipe: WorldRecipe, out: Path, how: Execution = Execution()) -> ProtocolResult:
    """Run the whole protocol; training runs go to out/runs/<name> (rewritten on every call). The tiny CLIP is always
    pretrained on the CPU, so that its cached weights are the same wherever they were made."""
    cache, progress, announce = how.cache, how.progress, how.announce
    seconds = {}
    started = time.time()

    def lap(stage: str) -> None:
        nonlocal started
        seconds[stage], started = time.time() - started, time.time()

    announce("world dataset")
    data_root = world_dataset(recipe, cache)
    lap("dataset")
    announce("tiny CLIP (shipped or pretrained once, then cached)")
    clip_path, clip_facts = pretrained_tiny_clip(recipe.clip, cache, progress=progress)
    lap("clip")
    runs = out / "runs"
    base = run_config(recipe, "cascade", "inductive", data_root, clip_path, runs)
    announce(f"control: linear probe of the tiny CLIP's tokens ({recipe.probe_images} training scenes)")
    probe = probe_control(clip_path, recipe.clip, base.model.image_encoder, data_root, recipe.probe_images, recipe.seed)
    lap("probe")
    outcomes = run_chains(recipe, data_root, clip_path, runs, how.device, progress, announce, how.jobs)
    lap("segmentation")
    models = [f"{variant}-{setting}" for variant in VARIANTS for setting in SETTINGS]
    chance = chance_metrics(outcomes["cascade-inductive"]["config"], recipe.seed)
    return ProtocolResult(
        seed=recipe.seed,
        metrics={name: outcomes[name]["metrics"] for name in models},
        predictions={name: outcomes[name]["predictions"] for name in models},
        calibration={name: o["calibration"] for name, o in outcomes.items() if "calibration" in o},
        supervised=outcomes["cascade-supervised"]["metrics"],
        probe=probe,
        chance=chance,
        clip_facts=clip_facts,
        runs={name: runs / name for name in outcomes},
        configs={name: o["config"] for name, o in outcomes.items()},
        data_root=data_root,
        seconds={**seconds, **{f"run {name}": o["seconds"] for name, o in outcomes.items()}},
    )


def run_seeds(recipe: WorldRecipe, seeds: int, out: Path, how: Execution = Execution()) -> list[ProtocolResult]:
    """The protocol for seeds recipe.seed, recipe.seed + 1, ...: each draws its own world, tiny CLIP and training.
    One seed runs in `out`, several in out/seed-<seed>."""
    results = []
    for seed in range(recipe.seed, recipe.seed + seeds):
        folder = out if seeds == 1 else out / f"seed-{seed}"
        tell = how.announce if seeds == 1 else (lambda text, seed=seed: how.announce(f"seed {seed}: {text}"))
        results.append(run_protocol(replace(recipe, seed=seed), folder, replace(how, announce=tell)))
    return results
