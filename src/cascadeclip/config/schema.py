"""Typed configuration: dataclasses with the reference values as defaults.

A run's configuration is a `Config`. Presets (`cascadeclip.config.presets`) fill it in for the eight configurations of
the authors; YAML files and `key=value` command-line overrides are merged over it with `apply_overrides`, and the
resolved result is saved beside every run as YAML.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ImageEncoderConfig:
    """CLIP ViT with deep visual prompts (docs/method.md, Image encoder). Defaults: ViT-B/16 as in every authors'
    config."""

    image_size: int = 512  # side of the training crop; the positional table is stored for this grid
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 512
    prompt_tokens: int = 10  # T: 10 (VOC), 35 (Context), 50 (COCO and cross-dataset)
    prompt_dropout: float = 0.1
    tap_blocks: tuple[int, ...] = (5, 6, 7, 8, 9, 10)  # 0-indexed blocks whose outputs become feature maps

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_maps(self) -> int:
        """Number of dense maps the encoder returns: one per tap plus the final map."""
        return len(self.tap_blocks) + 1


def gaussian_stage_weights(num_maps: int) -> tuple[float, ...]:
    """NGA initial weights exp(-d^2/2) for distances d = n-1 .. 0 from the stage's deepest map, as the authors' code
    has them (docs/authors-code.md#nga-weights-raw-and-their-initialisation)."""
    return tuple(math.exp(-((num_maps - 1 - j) ** 2) / 2) for j in range(num_maps))


@dataclass
class HeadConfig:
    """The cascade of text-image decoders (docs/method.md, Stages and NGA, Decoders, Summed stages)."""

    dim: int = 512  # must equal the encoder's output_dim
    heads: int = 8
    layers: int = 3  # decoder layers per stage
    ffn_dim: int = 2048
    dropout: float = 0.1
    # Which encoder maps each decoder reads (indices into [tap maps..., final map]). The reference: blocks 5-7,
    # blocks 8-10, the final block. `((6,),)` is the single last-layer decoder of ZegCLIP.
    stages: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3, 4, 5), (6,))


@dataclass
class TextEncoderConfig:
    """The CLIP text tower (docs/method.md, Class embeddings). Defaults: the text tower of OpenAI ViT-B/16."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    output_dim: int = 512


@dataclass
class ModelConfig:
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # None: the text tower is not built; class embeddings then come from a .npy file or a cache.
    text_encoder: TextEncoderConfig | None = None

    def validate(self) -> None:
        enc, head = self.image_encoder, self.head
        if enc.output_dim != head.dim:
            raise ValueError(f"model: image_encoder.output_dim ({enc.output_dim}) must equal head.dim ({head.dim})")
        if self.text_encoder is not None and self.text_encoder.output_dim != head.dim:
            raise ValueError(
                f"model: text_encoder.output_dim ({self.text_encoder.output_dim}) must equal head.dim ({head.dim})"
            )
        if enc.image_size % enc.patch_size:
            raise ValueError(f"model: image_size {enc.image_size} is not a multiple of patch_size {enc.patch_size}")
        if list(enc.tap_blocks) != sorted(set(enc.tap_blocks)) or any(not 0 <= b < enc.layers for b in enc.tap_blocks):
            raise ValueError(
                f"model: tap_blocks {enc.tap_blocks} must be increasing block indices in [0, {enc.layers})"
            )
        for stage in head.stages:
            if not stage or any(not 0 <= m < enc.num_maps for m in stage):
                raise ValueError(f"model: stage {stage} must be non-empty map indices in [0, {enc.num_maps})")
        if head.dim % head.heads or enc.width % enc.heads:
            raise ValueError("model: widths must be divisible by the number of attention heads")


# ----------------------------------------------------------------------------------------------------------------
# Merging overrides over typed defaults
# ----------------------------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    """A dataclass as plain Python data (tuples become lists), ready for YAML or JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert plain data `value` to the annotated type `hint`, recursing into dataclasses and tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:  # the first type the value fits, e.g. `str | tuple[str, ...]`
            try:
                return _coerce(value, option, where)
            except ValueError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return merge(hint(), value, where)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, where) for v in value]
    if origin is dict or hint is Any or hint is dict:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, (str, Path)):
        return Path(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def merge(cfg: Any, updates: dict[str, Any], where: str = "config") -> Any:
    """Return a copy of dataclass `cfg` with nested `updates` applied; unknown keys are an error."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in updates.items():
        if key not in names:
            raise ValueError(f"{where}: unknown field {key!r}; known fields: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(cfg, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """'train.iters=100' -> {'train': {'iters': 100}}; the value is parsed as YAML (numbers, lists, null...)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def apply_overrides(cfg: Any, yaml_files: list[Path] = (), overrides: list[str] = ()) -> Any:
    """Merge YAML files, then `key=value` overrides, over `cfg` (in that order)."""
    for path in yaml_files:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read config file {path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
        cfg = merge(cfg, data, str(path))
    for text in overrides:
        cfg = merge(cfg, parse_override(text), f"override {text!r}")
    return cfg


def save_yaml(cfg: Any, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------------------------------------
# A whole run
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ClassesConfig:
    """The zero-shot task: which classes are queried, which of them were unseen in training, and their embeddings.

    The dataset file (`config.dataset_file`) supplies every field left empty (names `()`, the others None) when the
    configuration is resolved (`resolve_classes`); a resolved configuration holds them all.
    """

    dataset: str = "voc"  # a built-in dataset (voc, context, coco, ade150, ...) or the path of a dataset YAML file
    names: tuple[str, ...] = ()  # in label order; () = the dataset's names (others, e.g. synonyms, may replace them)
    unseen: tuple[int, ...] | None = None  # indices into `names`; the others are seen. None: the dataset's
    setting: str = "inductive"  # inductive (seen-class queries in training) | transductive (self-training)
    # Precomputed class embeddings: a file name looked up in the embeddings directory, or a path. Empty: compute
    # them with the CLIP text tower from `names` and `templates`. None: the dataset's.
    text_embeddings: str | None = None
    # single ("a photo of a {}") | multi (the 15-template ensemble) | a list of templates with "{}". None: the dataset's
    templates: str | tuple[str, ...] | None = None
    # A class that is not queried: predicted where no other class reaches test.background_threshold (evaluation
    # only, e.g. VOC-21's background). "" = none; None: the dataset's.
    background: str | None = None
    seen_score_shift: float = 0.1  # subtracted from seen-class probabilities at test time, inductive setting only

    @property
    def seen(self) -> tuple[int, ...]:
        """Indices of the seen classes (the background class, when there is one, is neither seen nor unseen)."""
        unseen = set(self.unseen or ())
        return tuple(i for i in self.queried if i not in unseen)

    @property
    def background_index(self) -> int | None:
        return self.names.index(self.background) if self.background else None

    @property
    def queried(self) -> tuple[int, ...]:
        """Indices of the classes that get a text query: all but the background class."""
        return tuple(i for i in range(len(self.names)) if i != self.background_index)

    @property
    def test_seen_shift(self) -> float:
        return self.seen_score_shift if self.setting == "inductive" else 0.0


@dataclass
class DataConfig:
    root: str = ""  # dataset root; empty: $CASCADECLIP_DATA_ROOT, else ./datasets
    num_workers: int = 4


@dataclass
class TrainConfig:
    """The authors' recipe: AdamW at 2e-4 for every trainable parameter, poly decay after warm-up (docs/method.md,
    Training recipe)."""

    iters: int = 20000
    batch_size: int = 16  # global batch = per-device batch x processes x accumulation_steps
    accumulation_steps: int = 1
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast with a gradient scaler)
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 0.9
    min_lr: float = 1e-6
    # Data pipeline (docs/method.md, Data pipeline): rescale of `scale` by a ratio in `ratio_range`, crop, flip,
    # photometric distortion.
    scale: tuple[int, int] = (2048, 512)  # (long side, short side) box before the random ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: int = 512
    cat_max_ratio: float = 0.75  # crops where one class covers this share of labelled pixels are redrawn
    # False skips the photometric step: for data whose classes are named by the very hue, saturation or contrast
    # that it alters (the miniature world's coloured, patterned shapes).
    photometric_distortion: bool = True
    # "clip": start from the OpenAI CLIP file `clip_weights`; "random": random weights (smoke tests only);
    # otherwise the path of a Cascade-CLIP checkpoint whose weights (only) are loaded, as the transductive runs
    # start from the inductive run at half its schedule.
    init: str = "clip"
    clip_weights: str = "ViT-B-16.pt"
    seed: int = 0
    checkpoint_interval: int = 0  # 0: every iters / 10, as the reference
    keep_checkpoints: int = 3
    # Weights also kept at these iterations: an inductive preset keeps its midpoint, where transductive runs start.
    keep_iterations: tuple[int, ...] = ()
    log_interval: int = 10
    eval_interval: int = 0  # 0: no evaluation during training (the reference evaluates only at the end)


@dataclass
class TestConfig:
    mode: str = "slide"  # slide | whole
    short_side: int = 512  # test images are resized so that their short side is exactly this (long side uncapped)
    crop_size: int = 512
    stride: int = 426
    window_batch: int = 8  # sliding windows of one image run together in batches of this size
    # With a background class (classes.background): pixels where no queried class reaches this probability are
    # background. A fixed value, the `Segmenter`'s default, never tuned on the images evaluated.
    background_threshold: float = 0.5


@dataclass
class Config:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
