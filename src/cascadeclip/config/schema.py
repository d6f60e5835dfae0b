"""Typed configuration: dataclasses with the reference values as defaults.

A run's configuration is a `Config`. Presets (`cascadeclip.config.presets`) fill it in for the eight configurations of
the authors; YAML files and `key=value` command-line overrides are merged over it with `apply_overrides`, and the
resolved result is saved beside every run as YAML.

Values are checked twice: their type when merged (`merge`), their range by `validate`, which reads the rules written
beside each field (`checked(default, rule, ...)`) and then each section's `problems(name)` for rules across fields. A
ConfigError names every key that is wrong, what it must be and what it is: by its full key (`test.short_side`, as a
YAML file or an override writes it), or by what the user gave instead where a command-line option or a keyword argument
set it (`--short-side`; see `validate`'s `names`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..utils import UserError


class ConfigError(UserError):
    """Configuration values out of range; the message names each key as the user gave it (see `validate`).

    It keeps what was checked, so that a caller that set some keys from its own options (the command line) can have
    the same problems told with those options' names (`renamed`).
    """

    def __init__(self, cfg: Any, where: str = "", names: Mapping[str, str] | None = None):
        self.cfg, self.where, self.names = cfg, where, dict(names or {})
        super().__init__("; ".join(_problems(cfg, where, self.names)))

    def renamed(self, names: Mapping[str, str]) -> ConfigError:
        """The same error, the keys in `names` told by the names given there (e.g. "short_side" as "--short-side")."""
        return ConfigError(self.cfg, self.where, self.names | dict(names))


# ----------------------------------------------------------------------------------------------------------------
# Range rules, declared beside the fields
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A check of one value: `holds(value)`, and what a valid value is, for the message ("> 0")."""

    holds: Callable[[Any], bool]
    text: str


def greater_than(low: float) -> Rule:
    return Rule(lambda v: v > low, f"> {low}")


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, f">= {low}")


def between(low: float, high: float, high_included: bool = True) -> Rule:
    if high_included:
        return Rule(lambda v: low <= v <= high, f"in [{low}, {high}]")
    return Rule(lambda v: low <= v < high, f"in [{low}, {high})")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(choices))


def each(rule: Rule) -> Rule:
    """The rule for every item of a tuple."""
    return Rule(lambda v: all(rule.holds(x) for x in v), f"a list of values {rule.text}")


TEMPLATES_RULE = Rule(
    lambda v: v is None or v in ("single", "multi") or (isinstance(v, tuple) and all("{}" in t for t in v)),
    'single, multi, or a list of templates each holding "{}"',
)
POSITIVE = at_least(1)
NON_NEGATIVE = at_least(0)
PROBABILITY = between(0.0, 1.0, high_included=False)  # dropout rates


# How a section's `problems(name)` names one of its fields in a message: name("short_side") is the full key
# ("test.short_side"), or what the user set instead (a command-line option, "--short-side").
Namer = Callable[[str], str]


def checked(default: Any, *rules: Rule) -> Any:
    """A dataclass field with a default and the rules its values must follow (read by `validate`)."""
    return field(default=default, metadata={"rules": rules})


def validate(cfg: Any, where: str = "", names: Mapping[str, str] | None = None) -> Any:
    """`cfg` itself when every field follows its rules and every section's `problems(name)` is empty; else ConfigError
    listing all that is wrong.

    Each problem names its keys in full (prefixed with `where`, the section's key, when given: "test.short_side"),
    except the keys in `names`, told by the name given there: what the user set instead of the key (a command-line
    option such as "--short-side", a keyword argument).
    """
    if _problems(cfg, where, names or {}):
        raise ConfigError(cfg, where, names)
    return cfg


def _problems(cfg: Any, where: str, names: Mapping[str, str]) -> list[str]:
    def name(field_name: str) -> str:
        """How a message names a field of this section ("short_side"; "image_encoder.output_dim" in `model`)."""
        key = _key(where, field_name)
        return names.get(key, key)

    found = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            found += _problems(value, _key(where, f.name), names)
            continue
        for rule in f.metadata.get("rules", ()):
            try:
                holds = rule.holds(value)
            except TypeError:  # a value of another type (the typed merge lets a dataclass built in Python through)
                holds = False
            if not holds:
                found.append(f"{name(f.name)} must be {rule.text}, got {value!r}")
                break
    if not found and hasattr(cfg, "problems"):
        found += cfg.problems(name)
    return found


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


@dataclass
class ImageEncoderConfig:
    """CLIP ViT with deep visual prompts (docs/method.md, Image encoder). Defaults: ViT-B/16 as in every authors'
    config."""

    image_size: int = checked(512, POSITIVE)  # side of the training crop; the positional table is stored for this grid
    patch_size: int = checked(16, POSITIVE)
    width: int = checked(768, POSITIVE)
    layers: int = checked(12, POSITIVE)
    heads: int = checked(12, POSITIVE)
    output_dim: int = checked(512, POSITIVE)
    prompt_tokens: int = checked(10, NON_NEGATIVE)  # T: 10 (VOC), 35 (Context), 50 (COCO and cross-dataset)
    prompt_dropout: float = checked(0.1, PROBABILITY)
    tap_blocks: tuple[int, ...] = checked((5, 6, 7, 8, 9, 10), each(NON_NEGATIVE))  # 0-indexed blocks -> feature maps

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_maps(self) -> int:
        """Number of dense maps the encoder returns: one per tap plus the final map."""
        return len(self.tap_blocks) + 1

    def problems(self, name: Namer) -> list[str]:
        found = []
        if self.image_size % self.patch_size:
            found.append(
                f"{name('image_size')} {self.image_size} is not a multiple of {name('patch_size')} {self.patch_size}"
            )
        if list(self.tap_blocks) != sorted(set(self.tap_blocks)) or any(b >= self.layers for b in self.tap_blocks):
            found.append(
                f"{name('tap_blocks')} {self.tap_blocks} must be increasing block indices in [0, {self.layers})"
            )
        if self.width % self.heads:
            found.append(f"{name('heads')} ({self.heads}) must divide {name('width')} ({self.width})")
        return found


def gaussian_stage_weights(num_maps: int) -> tuple[float, ...]:
    """NGA initial weights exp(-d^2/2) for distances d = n-1 .. 0 from the stage's deepest map, as the authors' code
    has them (docs/authors-code.md#nga-weights-raw-and-their-initialisation)."""
    return tuple(math.exp(-((num_maps - 1 - j) ** 2) / 2) for j in range(num_maps))


@dataclass
class HeadConfig:
    """The cascade of text-image decoders (docs/method.md, Stages and NGA, Decoders, Summed stages)."""

    dim: int = checked(512, POSITIVE)  # must equal the encoder's output_dim
    heads: int = checked(8, POSITIVE)
    layers: int = checked(3, POSITIVE)  # decoder layers per stage
    ffn_dim: int = checked(2048, POSITIVE)
    dropout: float = checked(0.1, PROBABILITY)
    # Which encoder maps each decoder reads (indices into [tap maps..., final map]). The reference: blocks 5-7,
    # blocks 8-10, the final block. `((6,),)` is the single last-layer decoder of ZegCLIP.
    stages: tuple[tuple[int, ...], ...] = checked(((0, 1, 2), (3, 4, 5), (6,)), Rule(bool, "at least one stage"))

    def problems(self, name: Namer) -> list[str]:
        if self.dim % self.heads:
            return [f"{name('heads')} ({self.heads}) must divide {name('dim')} ({self.dim})"]
        return []


@dataclass
class TextEncoderConfig:
    """The CLIP text tower (docs/method.md, Class embeddings). Defaults: the text tower of OpenAI ViT-B/16."""

    context_length: int = checked(77, POSITIVE)
    vocab_size: int = checked(49408, POSITIVE)
    width: int = checked(512, POSITIVE)
    heads: int = checked(8, POSITIVE)
    layers: int = checked(12, POSITIVE)
    output_dim: int = checked(512, POSITIVE)

    def problems(self, name: Namer) -> list[str]:
        if self.width % self.heads:
            return [f"{name('heads')} ({self.heads}) must divide {name('width')} ({self.width})"]
        return []


@dataclass
class ModelConfig:
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # None: the text tower is not built; class embeddings then come from a .npy file or a cache.
    text_encoder: TextEncoderConfig | None = None

    def validate(self) -> None:
        """ConfigError naming every key out of range or inconsistent (see `validate`)."""
        validate(self, "model")

    def problems(self, name: Namer) -> list[str]:
        enc, head, found = self.image_encoder, self.head, []
        dim = f"{name('head.dim')} ({head.dim})"
        if enc.output_dim != head.dim:
            found.append(f"{name('image_encoder.output_dim')} ({enc.output_dim}) must equal {dim}")
        if self.text_encoder is not None and self.text_encoder.output_dim != head.dim:
            found.append(f"{name('text_encoder.output_dim')} ({self.text_encoder.output_dim}) must equal {dim}")
        for stage in head.stages:
            if not stage or any(not 0 <= m < enc.num_maps for m in stage):
                found.append(
                    f"{name('head.stages')}: stage {stage} must be non-empty map indices in [0, {enc.num_maps})"
                )
        return found


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


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}: the leaves of nested sections under their dotted keys."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    if isinstance(value, bool) and hint in (int, float):  # YAML's yes/no/true are not numbers
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is float and isinstance(value, (int, float)):
        return float(value)
    if hint is Path and isinstance(value, (str, Path)):
        return Path(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def merge(cfg: Any, updates: dict[str, Any], where: str = "") -> Any:
    """Return a copy of dataclass `cfg` with nested `updates` applied; unknown keys are an error."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in updates.items():
        if key not in names:
            raise ValueError(f"{where or 'config'}: unknown field {key!r}; known fields: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, _key(where, key))
        else:
            changes[key] = _coerce(value, hints[key], _key(where, key))
    return dataclasses.replace(cfg, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """'train.iters=100' -> {'train': {'iters': 100}}; the value is parsed as YAML (numbers, lists, null...)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ValueError(f"the value is not valid YAML: {getattr(err, 'problem', None) or err}") from None
    return nested(key, value)


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """PyYAML's several-line message in one line, with where the text went wrong and, when PyYAML knows it, where
    the construct that it was reading began (a bracket left open is reported where the text runs on past it)."""
    if getattr(err, "problem_mark", None) is None:
        return " ".join(str(err).split())
    text = f"{_yaml_position(err.problem_mark)}: {err.problem or 'not valid YAML'}"
    if err.context:
        begun = f" at {_yaml_position(err.context_mark)}" if err.context_mark else ""
        text += f" ({err.context}{begun})"
    return text


def _yaml_position(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"  # PyYAML counts from 0, editors from 1


def nested(key: str, value: Any) -> dict[str, Any]:
    """'train.iters', 100 -> {'train': {'iters': 100}}: the updates `merge` takes to set one key."""
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def apply_overrides(cfg: Any, yaml_files: list[Path] = (), overrides: list[str] = ()) -> Any:
    """Merge YAML files, then `key=value` overrides, over `cfg` (in that order)."""
    for path in yaml_files:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"cannot read config file {path}: {describe_yaml_error(err)}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read config file {path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
        try:
            cfg = merge(cfg, data)
        except ValueError as err:
            raise ValueError(f"config file {path}: {err}") from None
    for text in overrides:
        try:
            cfg = merge(cfg, parse_override(text))
        except ValueError as err:
            raise ValueError(f"override {text!r}: {err}") from None
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
    # inductive (seen-class queries in training) | transductive (self-training)
    setting: str = checked("inductive", one_of("inductive", "transductive"))
    # Precomputed class embeddings: a file name looked up in the embeddings directory, or a path. Empty: compute
    # them with the CLIP text tower from `names` and `templates`. None: the dataset's.
    text_embeddings: str | None = None
    # single ("a photo of a {}") | multi (the 15-template ensemble) | a list of templates with "{}". None: the dataset's
    templates: str | tuple[str, ...] | None = checked(None, TEMPLATES_RULE)
    # A class that is not queried: predicted where no other class reaches test.background_threshold (evaluation
    # only, e.g. VOC-21's background). "" = none; None: the dataset's.
    background: str | None = None
    # Subtracted from seen-class probabilities at test time, inductive setting only.
    seen_score_shift: float = checked(0.1, between(0.0, 1.0))

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

    def problems(self, name: Namer) -> list[str]:
        found, unseen_key, names_key = [], name("unseen"), name("names")
        unseen = self.unseen or ()
        outside = [i for i in unseen if not 0 <= i < len(self.names)]
        if outside:
            found.append(
                f"{unseen_key} {list(outside)} are not indices of the {len(self.names)} class names (0 .. n-1)"
            )
        if len(set(unseen)) != len(unseen):
            found.append(f"{unseen_key} {list(unseen)} repeats an index")
        if not self.names:
            found.append(f"{names_key} must list at least one class")
        elif any(not isinstance(n, str) or not n.strip() for n in self.names):
            found.append(f"{names_key} must all be non-empty strings")
        elif len({n.casefold() for n in self.names}) != len(self.names):
            found.append(f"{names_key} repeat a class name")
        return found


@dataclass
class DataConfig:
    root: str = ""  # dataset root; empty: $CASCADECLIP_DATA_ROOT, else ./datasets
    num_workers: int = checked(4, NON_NEGATIVE)


OPENAI_CLIP_FILE = "ViT-B-16.pt"  # train.clip_weights unless a configuration names another file


@dataclass
class TrainConfig:
    """The authors' recipe: AdamW at 2e-4 for every trainable parameter, poly decay after warm-up (docs/method.md,
    Training recipe)."""

    iters: int = checked(20000, POSITIVE)
    batch_size: int = checked(16, POSITIVE)  # global batch = per-device batch x processes x accumulation_steps
    accumulation_steps: int = checked(1, POSITIVE)
    # fp32 | bf16 (autocast) | fp16 (autocast with a gradient scaler)
    precision: str = checked("fp32", one_of("fp32", "bf16", "fp16"))
    # "chosen": on the CPU, linear layers on the faster kernel of this machine, measured at first use and kept in the
    # cache folder (inference.kernel_choice); the run records the choices it used in its folder and keeps them when
    # resumed. Elsewhere PyTorch's kernels. "pytorch": PyTorch's own kernels everywhere, so that runs on machines of
    # one kind agree without sharing a record (up to 1.3x slower on AMD CPUs, where oneDNN wins; benchmarks/NOTES.md).
    kernels: str = checked("chosen", one_of("chosen", "pytorch"))
    lr: float = checked(2e-4, greater_than(0))
    weight_decay: float = checked(0.01, at_least(0))
    betas: tuple[float, float] = checked((0.9, 0.999), each(between(0.0, 1.0, high_included=False)))
    warmup_iters: int = checked(1500, NON_NEGATIVE)
    warmup_ratio: float = checked(1e-6, between(0.0, 1.0))
    poly_power: float = checked(0.9, at_least(0))
    min_lr: float = checked(1e-6, at_least(0))
    # Data pipeline (docs/method.md, Data pipeline): rescale of `scale` by a ratio in `ratio_range`, crop, flip,
    # photometric distortion.
    scale: tuple[int, int] = checked((2048, 512), each(POSITIVE))  # (long side, short side) box before the ratio
    ratio_range: tuple[float, float] = checked((0.5, 2.0), each(greater_than(0)))
    crop_size: int = checked(512, POSITIVE)
    # Crops where one class covers this share of labelled pixels are redrawn (1: never).
    cat_max_ratio: float = checked(0.75, between(0.0, 1.0))
    # False skips the photometric step: for data whose classes are named by the very hue, saturation or contrast
    # that it alters (the miniature world's coloured, patterned shapes).
    photometric_distortion: bool = True
    # "clip": start from the OpenAI CLIP file `clip_weights`; "random": random weights (smoke tests only);
    # otherwise the path of a Cascade-CLIP checkpoint whose weights (only) are loaded, as the transductive runs
    # start from the inductive run at half its schedule.
    init: str = "clip"
    clip_weights: str = OPENAI_CLIP_FILE
    seed: int = checked(0, NON_NEGATIVE)
    checkpoint_interval: int = checked(0, NON_NEGATIVE)  # 0: every iters / 10, as the reference
    keep_checkpoints: int = checked(3, NON_NEGATIVE)  # 0: keep every checkpoint
    # Weights also kept at these iterations: an inductive preset keeps its midpoint, where transductive runs start.
    keep_iterations: tuple[int, ...] = checked((), each(POSITIVE))
    log_interval: int = checked(10, POSITIVE)
    eval_interval: int = checked(0, NON_NEGATIVE)  # 0: no evaluation during training (the reference: only at the end)

    def problems(self, name: Namer) -> list[str]:
        found = []
        if len(self.ratio_range) != 2 or self.ratio_range[0] > self.ratio_range[1]:
            found.append(f"{name('ratio_range')} {self.ratio_range} must be (low, high) with low <= high")
        if len(self.scale) != 2 or len(self.betas) != 2:
            found.append(f"{name('scale')} and {name('betas')} hold two values each")
        if self.min_lr > self.lr:
            found.append(f"{name('min_lr')} ({self.min_lr}) must not exceed {name('lr')} ({self.lr})")
        # Only a CLIP start reads the CLIP file; a random start would drop a file the user named without a word.
        # (A checkpoint start may keep one: the world demo names it for both of its runs.)
        if self.init == "random" and self.clip_weights not in ("", OPENAI_CLIP_FILE):
            found.append(
                f"{name('clip_weights')} ({self.clip_weights}) is not read when {name('init')} is random: set "
                f"{name('init')}=clip to start from those weights, or drop {name('clip_weights')}"
            )
        return found


@dataclass
class TestConfig:
    mode: str = checked("slide", one_of("slide", "whole"))
    # Test images are resized so that their short side is exactly this (long side uncapped).
    short_side: int = checked(512, POSITIVE)
    crop_size: int = checked(512, POSITIVE)
    stride: int = checked(426, POSITIVE)
    window_batch: int = checked(8, POSITIVE)  # sliding windows of one image run together in batches of this size
    # With a background class (classes.background): pixels where no queried class reaches this probability are
    # background. A fixed value (`cascade-clip segment --background` without a value takes it too), never tuned on
    # the images evaluated.
    background_threshold: float = checked(0.5, between(0.0, 1.0))

    def problems(self, name: Namer) -> list[str]:
        found, crop = [], f"{name('crop_size')} ({self.crop_size})"
        if self.stride > self.crop_size:
            found.append(f"{name('stride')} ({self.stride}) must not exceed {crop}: pixels would be skipped")
        if self.mode == "slide" and self.short_side < self.crop_size:
            found.append(
                f"{name('short_side')} ({self.short_side}) must be at least {crop} in slide mode (or set "
                f"{name('mode')} whole): smaller images would give windows that are not whole patches"
            )
        return found


@dataclass
class Config:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def problems(self, name: Namer) -> list[str]:
        patch, found = self.model.image_encoder.patch_size, []
        for key, size in (("train.crop_size", self.train.crop_size), ("test.crop_size", self.test.crop_size)):
            if size % patch:
                found.append(
                    f"{name(key)} ({size}) must be a multiple of {name('model.image_encoder.patch_size')} ({patch})"
                )
        return found
