"""The presets as typed `Config` values: the authors' eight configurations (docs/method.md, Training recipe and
Cross-dataset transfer), the open-vocabulary benchmarks and the miniature world's.

| preset               | setting      | T  | text embeddings        | iters  | batch | init                         |
|----------------------|--------------|----|------------------------|--------|-------|------------------------------|
| voc-inductive        | inductive    | 10 | voc12_single.npy       | 20,000 | 16    | CLIP                         |
| voc-transductive     | transductive | 10 | voc12_single.npy       | 10,000 | 32    | voc-inductive at 10,000 it.  |
| context-inductive    | inductive    | 35 | context-59_multi.npy   | 40,000 | 16    | CLIP                         |
| context-transductive | transductive | 35 | context-59_multi.npy   | 20,000 | 16    | context-inductive at 20,000  |
| coco-inductive       | inductive    | 50 | coco_multi.npy         | 80,000 | 16    | CLIP                         |
| coco-transductive    | transductive | 50 | coco_multi.npy         | 40,000 | 16    | coco-inductive at 40,000     |
| coco-to-voc          | evaluation   | 50 | voc12_single.npy       | -      | -     | coco-inductive final         |
| coco-to-context      | evaluation   | 50 | context-59_multi.npy   | -      | -     | coco-inductive final         |

The open-vocabulary benchmarks evaluate the COCO inductive model the same way on the other test sets, every class
unknown to it (mIoU is the number reported): coco-to-ade150, coco-to-ade847, coco-to-pc459, coco-to-cityscapes, and
coco-to-voc21, coco-to-context60 where the background counts as a class (`ClassesConfig.background`).

Two more presets run the same protocol in the miniature world of `cascadeclip.world` (`cascade-clip demo`): the
tiny CLIP's sizes, 64-pixel images, and the recipe scaled down (world-inductive, world-transductive).

Class names, unseen classes, templates and embedding files come from each dataset's file
(`cascadeclip/config/datasets/`), filled in when a configuration is resolved (`resolve_config`, `get_preset`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..utils import UserError
from .class_names import WORLD_CLASSES, WORLD_UNSEEN
from .dataset_file import resolved
from .schema import (
    ClassesConfig,
    Config,
    DataConfig,
    HeadConfig,
    ImageEncoderConfig,
    ModelConfig,
    TestConfig,
    TrainConfig,
    apply_overrides,
    describe_yaml_error,
    flatten,
    merge,
    nested,
    parse_override,
    validate,
)

_PROMPT_TOKENS = {"voc": 10, "context": 35, "coco": 50}
_INDUCTIVE_ITERS = {"voc": 20000, "context": 40000, "coco": 80000}
# The test sets of the COCO model (coco-to-<dataset>), in the order of the papers' tables.
CROSS_DATASET_TARGETS = ("ade847", "pc459", "ade150", "context", "context60", "voc", "voc21", "cityscapes")


def _preset(
    name: str,
    dataset: str,
    setting: str,
    prompt_tokens: int | None = None,
    all_seen: bool = False,
    train: TrainConfig | None = None,
) -> Config:
    classes = ClassesConfig(dataset=dataset, unseen=() if all_seen else None, setting=setting)
    encoder = ImageEncoderConfig(prompt_tokens=prompt_tokens or _PROMPT_TOKENS[dataset])
    return Config(name=name, model=ModelConfig(image_encoder=encoder), classes=classes, train=train or TrainConfig())


def _training_presets() -> dict[str, Config]:
    presets = {}
    for dataset, iters in _INDUCTIVE_ITERS.items():
        inductive = TrainConfig(iters=iters, batch_size=16, keep_iterations=(iters // 2,))
        presets[f"{dataset}-inductive"] = _preset(f"{dataset}-inductive", dataset, "inductive", train=inductive)
        # Self-training starts from the inductive run's checkpoint at half its schedule, with a fresh schedule.
        presets[f"{dataset}-transductive"] = _preset(
            f"{dataset}-transductive",
            dataset,
            "transductive",
            train=TrainConfig(
                iters=iters // 2,
                batch_size=32 if dataset == "voc" else 16,
                init=f"runs/{dataset}-inductive/iter_{iters // 2}",
            ),
        )
    return presets


WORLD_IMAGE_SIZE = 64
# The world's segmentation recipe, all in one place (`cascade-clip demo` and its controls use it unchanged).
WORLD_INDUCTIVE_ITERS = 1200  # the transductive run continues from the midpoint for half as many
# Measured on the world's fully supervised control (docs/world.md, The segmentation recipe): 1e-2 against 3e-3, and no
# rescale and no photometric step (both alter the fine marks and the colours that name the classes).
WORLD_LR = 1e-2
WORLD_BATCH = 8
WORLD_RATIO_RANGE = (1.0, 1.0)  # the random rescale before the crop: none
WORLD_PHOTOMETRIC_DISTORTION = False
WORLD_PROMPT_TOKENS = 4


def world_preset(setting: str, iters: int = WORLD_INDUCTIVE_ITERS) -> Config:
    """The protocol in the miniature world: the model sized as the world's tiny CLIP (12 blocks, width 64, patch 8,
    64-d joint space), 64-pixel images, and the authors' recipe scaled down (the `WORLD_*` values above): `iters`
    inductive iterations (the transductive run continues from the midpoint for half as many), crops of 64 from a
    rescale by `WORLD_RATIO_RANGE`, the photometric step off, warm-up 7.5% of the schedule as 1,500 of 20,000, and a
    learning rate far above the reference's 2e-4: with 1/30 of the reference's samples, 2e-4 leaves the head far from
    converged (measured: hIoU about 3x lower at 1,200 iterations). The CLIP file (`train.clip_weights`) and the data
    root are filled in by `cascadeclip.world`."""
    size = WORLD_IMAGE_SIZE
    model = ModelConfig(
        image_encoder=ImageEncoderConfig(
            image_size=size, patch_size=8, width=64, heads=2, output_dim=64, prompt_tokens=WORLD_PROMPT_TOKENS
        ),
        head=HeadConfig(dim=64, heads=2, ffn_dim=256),
    )
    classes = ClassesConfig(
        dataset="world", names=WORLD_CLASSES, unseen=WORLD_UNSEEN, setting=setting, templates="single"
    )
    inductive = setting == "inductive"
    train = TrainConfig(
        iters=iters if inductive else iters // 2,
        batch_size=WORLD_BATCH,
        lr=WORLD_LR,
        warmup_iters=max(1, iters * 3 // 40),
        scale=(4 * size, size),
        ratio_range=WORLD_RATIO_RANGE,
        photometric_distortion=WORLD_PHOTOMETRIC_DISTORTION,
        crop_size=size,
        init="clip" if inductive else f"runs/world-inductive/iter_{iters // 2}",
        checkpoint_interval=iters // 2,
        keep_checkpoints=1,
        keep_iterations=(iters // 2,) if inductive else (),
        log_interval=10,
    )
    test = TestConfig(mode="whole", short_side=size, crop_size=size, stride=size, window_batch=1)
    return Config(
        name=f"world-{setting}", model=model, classes=classes, data=DataConfig(num_workers=0), train=train, test=test
    )


# The definitions; their classes are filled in from the dataset files by `get_preset` and `resolve_config`.
PRESETS: dict[str, Config] = {
    **_training_presets(),
    "world-inductive": world_preset("inductive"),
    "world-transductive": world_preset("transductive"),
    # Cross-dataset transfer: the COCO inductive model (T = 50) evaluated on another dataset's classes, all of them
    # "seen" (the 0.1 shift then applies to every class and does not change the argmax).
    **{
        f"coco-to-{dataset}": _preset(f"coco-to-{dataset}", dataset, "inductive", prompt_tokens=50, all_seen=True)
        for dataset in CROSS_DATASET_TARGETS
    },
}


def _unresolved_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserError(f"unknown configuration {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def get_preset(name: str) -> Config:
    """A copy of the preset `name`, its classes filled in from its dataset file; UserError listing the known
    names."""
    return resolved(_unresolved_preset(name))


def explicit_keys(spec: str | None, overrides: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The keys ("model.head.heads") a command line sets: those in the YAML file `spec` (a preset name or None sets
    none) and in the `section.field=value` overrides. A key set to the value the preset already holds is still set,
    so that a checkpoint whose own configuration contradicts it can be told apart from one the user left alone."""
    found = set()
    if spec is not None and spec not in PRESETS:
        try:
            data = yaml.safe_load(Path(spec).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = {}
        if isinstance(data, dict):
            found |= set(flatten({key: value for key, value in data.items() if key != "preset"}))
    for text in overrides:
        found |= set(flatten(parse_override(text)))
    return found


def resolve_config(
    spec: str, overrides: list[str] | tuple[str, ...] = (), options: Mapping[str, tuple[str, Any]] | None = None
) -> Config:
    """The configuration named on a command line: a preset name, or a YAML file, then `section.field=value` overrides,
    then the options that set keys.

    A YAML file holds sections to merge (`model:`, `classes:`, `train:`, ...) and may name the preset it starts
    from with a top-level `preset: NAME`; without one it starts from the typed defaults. `options` maps a key to the
    option that sets it and the option's value, e.g. {"data.root": ("--data-root", "2024")} (a value None: the
    option was not given). Their values are taken as they are, not read as YAML (a folder named 2024 stays the text
    "2024"), and errors about their keys name the option.
    """
    if spec in PRESETS:
        try:
            return _completed(_unresolved_preset(spec), overrides, options or {})
        except ValueError as err:
            raise UserError(str(err)) from err
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"cannot read config file {path}: {describe_yaml_error(err)}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file {path}: {err}") from err
    if data is None:
        raise UserError(f"config file {path} is empty; give `preset: NAME` and the sections to change (model:, ...)")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    base_name = data.pop("preset", None)
    cfg = _unresolved_preset(base_name) if base_name else Config(name=path.stem)
    try:
        cfg = merge(cfg, data)
    except ValueError as err:
        raise UserError(f"config file {path}: {err}") from err
    try:
        return _completed(cfg, overrides, options or {})
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err


def _completed(cfg: Config, overrides: list[str] | tuple[str, ...], options: Mapping[str, tuple[str, Any]]) -> Config:
    """`cfg` with the overrides and the options' values merged, its classes resolved, checked."""
    cfg = apply_overrides(cfg, overrides=overrides)
    given = {key: (option, value) for key, (option, value) in options.items() if value is not None}
    for key, (_, value) in given.items():
        cfg = merge(cfg, nested(key, value))
    return validate(resolved(cfg), names={key: option for key, (option, _) in given.items()})
