"""The zero-shot protocol in the miniature world, end to end, with the project's own trainer and evaluation.

1. The world's dataset (VOC layout) and its pretrained tiny CLIP, both cached.
2. Per head variant (the cascade, and the single last-layer decoder of ZegCLIP): inductive training from the tiny
   CLIP, then transductive training from the inductive run's midpoint weights, as the authors' recipe does.
3. Each final model evaluated on the world's validation split: mIoU of seen and unseen classes, hIoU.
4. Chance level: the same metric for predictions that ignore the image (uniform random classes, or the most common
   training class everywhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..config.dataset_file import load_dataset
from ..config.presets import WORLD_IMAGE_SIZE, WORLD_INDUCTIVE_ITERS, world_preset
from ..data.datasets import list_samples, read_label
from ..engine.trainer import train
from ..evaluation import IoUAccumulator, evaluate
from ..factory import load_checkpoint
from .cache import cached_folder
from .dataset import write_dataset
from .pretrain import TinyClipConfig, pretrained_tiny_clip
from .scenes import WORLD_VERSION

SETTINGS = ("inductive", "transductive")
# Head variants compared: the reference's three stages, and one decoder on the final map only (ZegCLIP).
VARIANTS = {"cascade": None, "single": ((6,),)}


@dataclass(frozen=True)
class WorldRecipe:
    """Everything that determines the demo's numbers. The same recipe always gives the same numbers."""

    seed: int = 0
    train_images: int = 2000
    val_images: int = 200
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
        return cls(seed=seed, train_images=8, val_images=4, iters=4, clip_steps=2, clip_batch=8, zero_shot_images=2)


@dataclass
class ProtocolResult:
    metrics: dict[str, dict]  # "<variant>-<setting>" -> the evaluation's results (percentages)
    predictions: dict[str, dict[str, np.ndarray]]  # "<variant>-<setting>" -> validation image name -> (H, W) classes
    unshifted: dict[str, dict]  # "<variant>-inductive" -> results without the test-time seen-class shift
    chance: dict[str, dict]  # "uniform" / "majority" -> metrics of image-blind predictions
    clip_facts: dict  # the tiny CLIP's pretraining losses and zero-shot accuracies
    runs: dict[str, Path]  # "<variant>-<setting>" -> run folder
    configs: dict[str, Config]
    data_root: Path
    seconds: dict[
        str, float
    ]  # wall time of each stage: "dataset", "clip", "<variant>-<setting>" (training + evaluation)


def world_dataset(recipe: WorldRecipe, cache: Path | None = None) -> Path:
    """The dataset root of the recipe's world, written on first use."""
    spec = {
        "version": WORLD_VERSION,
        "seed": recipe.seed,
        "size": WORLD_IMAGE_SIZE,
        "train": recipe.train_images,
        "val": recipe.val_images,
        "layout": load_dataset("world").folder,
    }

    def build(folder: Path) -> None:
        write_dataset(folder, recipe.seed, WORLD_IMAGE_SIZE, recipe.train_images, recipe.val_images)

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


def run_protocol(
    recipe: WorldRecipe,
    out: Path,
    cache: Path | None = None,
    progress: bool = True,
    announce: Callable[[str], None] = print,
    device: str = "cpu",
) -> ProtocolResult:
    """Run the whole protocol; training runs go to out/runs/<variant>-<setting> (rewritten on every call). The tiny
    CLIP is always pretrained on the CPU, so that its cached weights are the same wherever they were made."""
    seconds = {}
    started = time.time()
    announce("world dataset")
    data_root = world_dataset(recipe, cache)
    seconds["dataset"], started = time.time() - started, time.time()
    announce("tiny CLIP (pretrained once, then cached)")
    clip_path, clip_facts = pretrained_tiny_clip(recipe.clip, cache, progress=progress)
    seconds["clip"], started = time.time() - started, time.time()
    runs = out / "runs"
    metrics, predictions, unshifted, run_dirs, configs = {}, {}, {}, {}, {}
    for variant in VARIANTS:
        for setting in SETTINGS:
            name = f"{variant}-{setting}"
            cfg = run_config(recipe, variant, setting, data_root, clip_path, runs)
            announce(f"training {name}: {cfg.train.iters} iterations")
            result = train(cfg, runs / name, force=True, device=device, progress=progress)
            model, _, _ = load_checkpoint(result.checkpoint, base=cfg.model)
            kept = predictions[name] = {}
            metrics[name] = evaluate(
                model.to(device),
                cfg,
                progress=progress,
                on_prediction=lambda item, pred, kept=kept: kept.update({item["name"]: pred.numpy()}),
            )
            if setting == "inductive":  # what the 0.1 calibration of the protocol changes
                unshifted[name] = evaluate(model, replace(cfg, classes=replace(cfg.classes, seen_score_shift=0.0)))
            run_dirs[name], configs[name] = runs / name, cfg
            seconds[name], started = time.time() - started, time.time()
    chance = chance_metrics(configs["cascade-inductive"], recipe.seed)
    return ProtocolResult(metrics, predictions, unshifted, chance, clip_facts, run_dirs, configs, data_root, seconds)
