"""Building Cascade-CLIP models and every read and write of weights: OpenAI CLIP, the authors' `.pth`, our format.

One entry per source of weights:
- OpenAI CLIP, `read_openai_clip`: `ViT-B-16.pt` is a TorchScript archive of fp16 weights (a plain state dict in the
  same key layout, and the safetensors file `cascade-clip convert` makes of it, are accepted too). Its `visual.*`
  keys go to `backbone.*` with the positional table resized bilinearly to the training grid (197 -> 1025 rows for
  512 crops; docs/authors-code.md#positional-table-resized-once); its text keys go to `text_encoder.*`.
  `create_model` starts a model from it, `load_text_encoder` takes its text tower alone.
- The authors' checkpoints, `read_authors_checkpoint`: `{"meta": ..., "state_dict": ...}` pickles with this model's
  key names (docs/method.md, Weights and checkpoints). The weights they register but never use are skipped by name
  and reported; anything else that does not fit is an error (`load_state`).
- Our files, `read_model_file` / `save_model`: a single `.safetensors` whose metadata holds the model configuration
  and the class set as JSON, so loading them runs no pickle.

`load_checkpoint` loads either kind of Cascade-CLIP checkpoint, telling them apart by their first bytes (a renamed
safetensors file is still read as one, never unpickled);
`load_segmentation_weights` adds the text tower the `Segmenter` needs, and also takes the name of a model on the
Hugging Face Hub (`resolve_checkpoint`). `save_hub_folder` writes the folder such a model is published from.

Loading `.pt`/`.pth` files unpickles them, which can run code: only load files you trust, from paths you gave.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import (
    ClassesConfig,
    HeadConfig,
    ImageEncoderConfig,
    ModelConfig,
    TextEncoderConfig,
    merge,
    to_dict,
    validate,
)
from .model_card import model_card
from .modeling.cascade_clip import CascadeCLIP
from .modeling.image_encoder import resize_positional_grid
from .modeling.text_encoder import TextEncoder
from .utils import UserError, atomic_write, sha256_of

OPENAI_VIT_B_16_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
)
OPENAI_SHA256 = {"ViT-B-16.pt": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"}
AUTHORS_CHECKPOINTS_URL = "https://github.com/HVision-NKU/Cascade-CLIP#model-zoo"
FORMAT_NAME = "cascadeclip"  # the "format" metadata of our model files
OPENAI_CLIP_FORMAT = "openai-clip"  # the "format" metadata of OpenAI CLIP weights converted to safetensors

# Registered by the authors' model but never used in its computation (docs/authors-code.md#unused-checkpoint-weights).
AUTHORS_UNUSED_KEY_PARTS = (".self_attn.", ".norm1.", "decode_head.loss_decode.")

WEIGHTS_HELP = (
    "Cascade-CLIP weights are needed. The authors publish six checkpoints (.pth; the COCO-Stuff ones know the most "
    f"classes) at {AUTHORS_CHECKPOINTS_URL}: give one to --checkpoint as it is (they carry the CLIP text tower), or "
    "convert it once with `cascade-clip convert FILE.pth OUT.safetensors` to load it without unpickling. A checkpoint "
    f"without a text tower also needs OpenAI's CLIP weights ViT-B-16.pt ({OPENAI_VIT_B_16_URL}) as --clip-weights"
)


class CheckpointError(UserError):
    """A weights file that cannot be used as asked; the message names the file and what to do."""


@dataclass
class LoadReport:
    """What a load did: keys skipped on purpose, and keys the model kept at their initial values."""

    source: str
    skipped: list[str] = field(default_factory=list)
    kept_initial: list[str] = field(default_factory=list)
    looks_like: list[str] = field(default_factory=list)  # presets an authors' file fits (`guess_authors_config`)

    def summary(self) -> str:
        lines = [f"loaded {self.source}"]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unused keys: {_abbreviate(self.skipped)}")
        if self.kept_initial:
            lines.append(
                f"  {len(self.kept_initial)} parameters keep their initial values: {_abbreviate(self.kept_initial)}"
            )
        return "\n".join(lines)


def _abbreviate(keys: list[str], limit: int = 6) -> str:
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(p if not p.isdigit() else "*" for p in key.split("."))
        groups[prefix] = groups.get(prefix, 0) + 1
    shown = [f"{k} (x{n})" if n > 1 else k for k, n in groups.items()]
    return ", ".join(shown[:limit]) + (f", ... ({len(shown) - limit} more patterns)" if len(shown) > limit else "")


def _missing_file(path: Path, what: str, hint: str) -> CheckpointError:
    return CheckpointError(f"{what} not found: {path}. {hint}")


# ----------------------------------------------------------------------------------------------------------------
# OpenAI CLIP
# ----------------------------------------------------------------------------------------------------------------


def read_openai_clip(path: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 state dict of an OpenAI CLIP file (TorchScript archive, or a plain state dict in its key layout)."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path, "CLIP weights", f"Download OpenAI's ViT-B-16.pt from {OPENAI_VIT_B_16_URL}")
    expected = OPENAI_SHA256.get(path.name)
    if expected is not None and sha256_of(path) != expected:
        warnings.warn(
            f"{path}: SHA-256 differs from OpenAI's published {path.name} ({expected[:12]}...); "
            "the file may be corrupt or a different model",
            stacklevel=2,
        )
    try:
        if is_safetensors(path):  # written by `cascade-clip convert`
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but is OpenAI's format
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except (RuntimeError, SafetensorError):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # not PyTorch's message, which advises unpickling the file anyway
            raise CheckpointError(
                f"{path} is neither a TorchScript archive nor a state dict of CLIP weights ({type(err).__name__}): it "
                "is damaged or holds more than tensors; give OpenAI's ViT-B-16.pt or a file of `cascade-clip convert`"
            ) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or "visual.conv1.weight" not in state:
        raise CheckpointError(f"{path} does not hold OpenAI CLIP ViT weights (no 'visual.conv1.weight' key)")
    state = {k: v.float() for k, v in state.items() if isinstance(v, torch.Tensor)}
    check_finite(state, str(path))
    return state


def is_safetensors(path: Path) -> bool:
    """Whether `path` is named or laid out as a safetensors file (an 8-byte header length, then a JSON header); a
    missing `.safetensors` file counts, for its reader to report."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head, size = f.read(9), f.seek(0, 2)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def unseeded_build() -> contextlib.AbstractContextManager:
    """Around building a module whose weights a file then replaces: its initial weights are drawn from a copy of the
    global random generator, so that loading weights leaves the caller's random stream (a seeded run's dropout,
    augmentation or sampling) where it was."""
    return torch.random.fork_rng(devices=[])


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError when any floating-point tensor holds NaN (a damaged file, or a diverged run). Infinity is
    allowed: attention masks hold -inf on purpose."""
    bad = [k for k, v in state.items() if v.is_floating_point() and torch.isnan(v).any()]
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) hold NaN (e.g. {bad[0]}): the file is damaged, or the training that "
            "wrote it diverged. Use another checkpoint"
        )


def save_openai_clip(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write OpenAI CLIP weights (as `read_openai_clip` returns them) as safetensors, atomically; they then load
    without unpickling anything."""
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata={"format": OPENAI_CLIP_FORMAT}))


def save_openai_archive(clip: torch.nn.Module, path: str | Path, image_size: int, context_length: int) -> None:
    """Trace an open_clip `CLIP` into a TorchScript archive: the container and key layout of OpenAI's `ViT-B-16.pt`,
    so that `read_openai_clip` reads it like the real file. Written atomically."""
    example = (torch.zeros(1, 3, image_size, image_size), torch.zeros(1, context_length, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about Python control flow that is constant here
        traced = torch.jit.trace_module(clip, {"forward": example}, check_trace=False)
    atomic_write(Path(path), lambda tmp: traced.save(str(tmp)))


def text_config_from_clip(state: dict[str, torch.Tensor], prefix: str = "") -> TextEncoderConfig:
    """The text tower's sizes, read from CLIP weights (heads = width / 64, as in every OpenAI CLIP)."""
    width = state[f"{prefix}ln_final.weight"].shape[0]
    layers = len(
        {k.split(".")[2 + prefix.count(".")] for k in state if k.startswith(f"{prefix}transformer.resblocks.")}
    )
    return TextEncoderConfig(
        context_length=state[f"{prefix}positional_embedding"].shape[0],
        vocab_size=state[f"{prefix}token_embedding.weight"].shape[0],
        width=width,
        heads=max(1, width // 64),
        layers=layers,
        output_dim=state[f"{prefix}text_projection"].shape[1],
    )


def clip_to_cascade_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Map OpenAI CLIP keys onto this model: `visual.*` -> `backbone.*` (positional table resized), text keys ->
    `text_encoder.*`."""
    mapped = {}
    for key, value in state.items():
        if key.startswith("visual."):
            name = key[len("visual.") :]
            if name == "positional_embedding":
                grid = cfg.image_encoder.grid_size
                value = torch.cat([value[:1], resize_positional_grid(value[1:], (grid, grid))])
            mapped[f"backbone.{name}"] = value
        elif cfg.text_encoder is not None and key.split(".")[0] in (
            "transformer",
            "token_embedding",
            "positional_embedding",
            "ln_final",
            "text_projection",
        ):
            if key == "positional_embedding":
                value = value[: cfg.text_encoder.context_length]
            mapped[f"text_encoder.{key}"] = value
    return mapped


def create_model(cfg: ModelConfig, clip_weights: str | Path | None = None) -> tuple[CascadeCLIP, LoadReport | None]:
    """A new model, its CLIP parts initialised from OpenAI weights when given, else random (with a warning)."""
    if clip_weights is not None:
        clip_state = read_openai_clip(clip_weights)
        if cfg.text_encoder is None:
            cfg = dataclasses.replace(cfg, text_encoder=text_config_from_clip(clip_state))
        model = CascadeCLIP(cfg)
        return model, _load_clip_weights(model, clip_state, clip_weights)
    warnings.warn(
        "no CLIP weights given: the model has random weights and its predictions are meaningless", stacklevel=2
    )
    return CascadeCLIP(cfg), None


def _load_clip_weights(model: CascadeCLIP, clip_state: dict[str, torch.Tensor], path: str | Path) -> LoadReport:
    """Initialise the encoder (and text tower, if built) from OpenAI CLIP weights read from `path`."""
    state = clip_to_cascade_state(clip_state, model.cfg)
    _check_shapes(model, state, str(path))
    result = model.load_state_dict(state, strict=False)
    # Everything not in CLIP keeps its initialisation: prompts, per-tap projections, the head.
    clip_owned = [k for k in result.missing_keys if not _is_new_in_cascade(k)]
    if clip_owned or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: CLIP weights do not fit the model configuration. Missing: {_abbreviate(clip_owned)}; "
            f"unexpected: {_abbreviate(result.unexpected_keys)}. Check widths, depth and patch size."
        )
    return LoadReport(str(path), kept_initial=result.missing_keys)


def _is_new_in_cascade(key: str) -> bool:
    return key.startswith("decode_head.") or any(p in key for p in ("prompt", "ln_layers", "proj_layers"))


def load_text_encoder(clip_weights: str | Path) -> TextEncoder:
    """The CLIP text tower alone, from OpenAI CLIP weights (`.pt`, or converted to safetensors by
    `cascade-clip convert`): embeds class names for a model saved without one."""
    clip_state = read_openai_clip(clip_weights)
    text_only = {k: v for k, v in clip_state.items() if not k.startswith("visual.")}
    try:
        cfg = ModelConfig(text_encoder=text_config_from_clip(text_only))
        state = {k.removeprefix("text_encoder."): v for k, v in clip_to_cascade_state(text_only, cfg).items()}
        with unseeded_build():
            encoder = TextEncoder(cfg.text_encoder)
        result = encoder.load_state_dict(state, strict=False)  # sizes come from the file, so only names can differ
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"{clip_weights}: the CLIP text tower cannot be read from these weights ({err})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{clip_weights}: not a complete CLIP text tower (missing: {_abbreviate(result.missing_keys) or 'none'}; "
            f"unexpected: {_abbreviate(result.unexpected_keys) or 'none'}); give OpenAI's ViT-B-16.pt"
        )
    return encoder.eval()


def _is_openai_clip_safetensors(path: Path) -> bool:
    if not is_safetensors(path):
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == OPENAI_CLIP_FORMAT
    except Exception:  # not readable as safetensors: the checkpoint loader reports that
        return False


# ----------------------------------------------------------------------------------------------------------------
# The authors' .pth
# ----------------------------------------------------------------------------------------------------------------


def read_authors_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of an authors' checkpoint. Unpickles the file: trusted paths only."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file(
            path, "checkpoint", f"The authors' six checkpoints are linked from {AUTHORS_CHECKPOINTS_URL}"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not an authors' Cascade-CLIP checkpoint: expected a dict with 'state_dict'")
    state = {k.removeprefix("module."): v for k, v in data["state_dict"].items()}
    return state, data.get("meta") or {}


# (prompt tokens, size of the unused loss-criterion buffer) of the six released files. The buffer has seen + 1
# entries except in the VOC self-training config, so Context and COCO files do not tell their setting.
_AUTHORS_SHAPES = {
    "voc-inductive": (10, 16),
    "voc-transductive": (10, 21),
    "context-inductive": (35, 50),
    "context-transductive": (35, 50),
    "coco-inductive": (50, 157),
    "coco-transductive": (50, 157),
}


def guess_authors_config(state: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> list[str]:
    """Presets an authors' checkpoint may belong to, from its shapes and, when present, its run name in `meta`."""
    tokens = state.get("backbone.prompt_embeddings")
    criterion = state.get("decode_head.loss_decode.criterion.empty_weight")
    found = [
        name
        for name, (t, c) in _AUTHORS_SHAPES.items()
        if (tokens is None or tokens.shape[1] == t) and (criterion is None or criterion.shape[0] == c)
    ]
    run_name = str((meta or {}).get("exp_name", ""))
    if run_name and len(found) > 1:  # e.g. "vpt_seg_zero_vit-b_512x512_40k_12_10_st.py": self-training
        wanted = "transductive" if "_st" in Path(run_name).stem else "inductive"
        found = [name for name in found if name.endswith(wanted)]
    return found


def _model_config_from_authors_state(
    state: dict[str, torch.Tensor], base: ModelConfig | None = None, with_text_encoder: bool = True
) -> ModelConfig:
    """Sizes read off an authors' state dict; what shapes cannot tell (head counts, tap blocks) comes from `base`.

    Without `base`, head counts are width / 64 as in ViT-B/16 and its 512-wide decoders. The text tower is
    included when asked for and present in the file.
    """
    base = base or ModelConfig()
    try:
        conv = state["backbone.conv1.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        layers = len({k.split(".")[3] for k in state if k.startswith("backbone.transformer.resblocks.")})
        grid = math.isqrt(state["backbone.positional_embedding"].shape[0] - 1)
        dim = state["decode_head.q_projs.0.weight"].shape[0]
        decoders = len({k.split(".")[2] for k in state if k.startswith("decode_head.cascade_decoders.")})
        decoder_layers = len({k.split(".")[4] for k in state if k.startswith("decode_head.cascade_decoders.0.layers.")})
        taps = state["backbone.proj_layers"].shape[0]
        encoder = dataclasses.replace(
            base.image_encoder,
            image_size=grid * patch,
            patch_size=patch,
            width=width,
            layers=layers,
            heads=base.image_encoder.heads if base.image_encoder.width == width else max(1, width // 64),
            output_dim=state["backbone.proj"].shape[1],
            prompt_tokens=state["backbone.prompt_embeddings"].shape[1],
        )
        head = dataclasses.replace(
            base.head,
            dim=dim,
            heads=base.head.heads if base.head.dim == dim else max(1, dim // 64),
            layers=decoder_layers,
            ffn_dim=state["decode_head.cascade_decoders.0.layers.0.linear1.weight"].shape[0],
        )
    except KeyError as err:
        raise CheckpointError(f"not a Cascade-CLIP state dict: key {err} is missing") from err
    if taps != len(encoder.tap_blocks):
        raise CheckpointError(
            f"the checkpoint has {taps} tapped blocks but the configuration taps {encoder.tap_blocks}; "
            "set model.image_encoder.tap_blocks to the blocks it was trained with"
        )
    if decoders != len(head.stages):
        raise CheckpointError(
            f"the checkpoint has {decoders} decoders but the configuration has stages {head.stages}; "
            "set model.head.stages to the grouping it was trained with"
        )
    has_text = with_text_encoder and "text_encoder.ln_final.weight" in state
    text = text_config_from_clip(state, prefix="text_encoder.") if has_text else None
    return ModelConfig(image_encoder=encoder, head=head, text_encoder=text)


def model_from_authors_state(
    state: dict[str, torch.Tensor], source: str, base: ModelConfig | None = None, with_text_encoder: bool = True
) -> tuple[CascadeCLIP, LoadReport]:
    """Build the model an authors' state dict describes and load it.

    Sizes are read off the state dict; what shapes cannot tell (head counts, tap blocks) comes from `base` (without
    it, head counts are width / 64). The text tower is kept when asked for and present in the file.
    """
    cfg = _model_config_from_authors_state(state, base, with_text_encoder)
    with unseeded_build():
        model = CascadeCLIP(cfg)
    return model.eval(), load_state(model, state, source)


# ----------------------------------------------------------------------------------------------------------------
# Our format
# ----------------------------------------------------------------------------------------------------------------


def save_model(path: str | Path, model: CascadeCLIP, classes: ClassesConfig | None = None, **info: Any) -> None:
    """Write weights and configuration to one `.safetensors` file, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "model_config": json.dumps(to_dict(model.cfg)),
        "classes": json.dumps(to_dict(classes) if classes is not None else None),
        "info": json.dumps(info),
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_model_file(
    path: str | Path,
) -> tuple[ModelConfig, ClassesConfig | None, dict[str, Any], dict[str, torch.Tensor]]:
    """(model config, class set or None, info, tensors) of one of our `.safetensors` files."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path, "checkpoint", "Convert the authors' files with `cascade-clip convert`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is a safetensors file but not a cascadeclip model (no 'format: {FORMAT_NAME}')")
    model_cfg = _metadata_config(path, metadata, "model_config", ModelConfig())
    classes = _metadata_config(path, metadata, "classes", ClassesConfig(), optional=True)
    info = _metadata_json(path, metadata, "info", optional=True) or {}
    return model_cfg, classes, info, tensors


def _metadata_json(path: Path, metadata: dict[str, str], key: str, optional: bool = False) -> dict | None:
    """The JSON object stored under `key` in a model file's metadata (None for JSON null when `optional`)."""
    damaged = "the file was edited or damaged: convert or save the model again"
    if key not in metadata:
        if optional:
            return None
        raise CheckpointError(f"{path}: its metadata has no {key!r}; {damaged}")
    try:
        data = json.loads(metadata[key])
    except ValueError as err:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({err}); {damaged}") from None
    if data is None and optional:
        return None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: metadata {key!r} must be a JSON object, got {type(data).__name__}; {damaged}")
    return data


def _metadata_config(path: Path, metadata: dict[str, str], key: str, default: Any, optional: bool = False) -> Any:
    """The typed configuration stored under `key`, checked like a configuration file (types and ranges)."""
    data = _metadata_json(path, metadata, key, optional)
    if data is None:
        return None
    try:
        return validate(merge(default, data, key), key)
    except ValueError as err:
        raise CheckpointError(f"{path}: metadata {err}; the file was edited or damaged") from None


# ----------------------------------------------------------------------------------------------------------------
# The Hugging Face Hub: a folder of our file, its configuration and a model card
# ----------------------------------------------------------------------------------------------------------------

HUB_WEIGHTS_FILE = "model.safetensors"
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def save_hub_folder(
    folder: str | Path, model: CascadeCLIP, classes: ClassesConfig | None, repo_id: str | None = None, **info: Any
) -> None:
    """Write the folder a model is published from on the Hugging Face Hub: `model.safetensors` (`save_model`),
    `config.json` (the configuration and class set, for people and tools that read it) and the model card
    `README.md`. `info` needs `source` (the file converted); `preset` is shown when given."""
    folder = Path(folder)
    save_model(folder / HUB_WEIGHTS_FILE, model, classes, **info)
    config = {"model_config": to_dict(model.cfg), "classes": to_dict(classes) if classes else None, "info": info}
    atomic_write(folder / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    card = model_card(model.cfg, classes, info["source"], info.get("preset"), repo_id)
    atomic_write(folder / "README.md", lambda tmp: tmp.write_text(card, encoding="utf-8"))


def resolve_checkpoint(name: str | Path) -> Path:
    """The local file of a checkpoint given by path or by the name of a Hugging Face Hub model ("org/name").

    A path that exists always wins: a file is itself, a folder (as `save_hub_folder` writes) gives its
    model.safetensors. Otherwise a name of the form "org/name" is a Hub model: its model.safetensors comes from the
    local Hub cache ($HF_HOME/hub) or is downloaded into it (not with HF_HUB_OFFLINE=1). Anything else is returned
    as given, for the loaders to report missing.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / HUB_WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"checkpoint {path} is a folder without {HUB_WEIGHTS_FILE}; give the weights file inside it"
            )
        return path / HUB_WEIGHTS_FILE
    if path.exists() or not _HUB_NAME.fullmatch(str(name)) or path.suffix in _WEIGHT_SUFFIXES:
        return path
    return _hub_download(str(name))


def _hub_download(repo_id: str) -> Path:
    """model.safetensors of the Hub model `repo_id`, from the cache or downloaded; CheckpointError saying why not."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    neither = f"{repo_id} is neither a local file nor"
    try:
        return Path(hf_hub_download(repo_id, HUB_WEIGHTS_FILE))
    except LocalEntryNotFoundError as err:  # no copy in the cache, and no download
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{neither} in the Hugging Face cache ({constants.HF_HUB_CACHE}), and downloads are off "
                "(HF_HUB_OFFLINE=1): download it once with network access, or give the path of a checkpoint file"
            ) from None
        raise CheckpointError(
            f"{neither} in the Hugging Face cache, and the Hub cannot be reached to download it "
            f"({err.__cause__ or err}): check the network, or give the path of a checkpoint file"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{neither} a model on the Hugging Face Hub (a private or gated model needs `hf auth login`)"
        ) from None
    except EntryNotFoundError:
        raise CheckpointError(
            f"the Hugging Face Hub model {repo_id} has no {HUB_WEIGHTS_FILE}, so it is not a cascadeclip model "
            "(`cascade-clip convert FILE.pth --hub-dir DIR` makes the folder to publish)"
        ) from None
    except HfHubHTTPError as err:
        raise CheckpointError(f"downloading {repo_id} from the Hugging Face Hub failed: {err}") from None


# ----------------------------------------------------------------------------------------------------------------
# Loading a Cascade-CLIP checkpoint of either kind
# ----------------------------------------------------------------------------------------------------------------


def load_checkpoint(
    path: str | Path, base: ModelConfig | None = None, with_text_encoder: bool = True
) -> tuple[CascadeCLIP, ClassesConfig | None, LoadReport]:
    """Build the model stored in `path` and load it.

    Args:
        path: one of our `.safetensors` files, or an authors' `.pth` (unpickled: trusted files only).
        base: configuration for what an authors' file cannot tell (head counts, taps); the presets' defaults if None.
        with_text_encoder: keep the CLIP text tower when the file has one (needed to embed new class names).
    Returns:
        (model in eval mode, the class set stored with the weights or None, what was loaded and skipped).
    """
    path = Path(path)
    if is_safetensors(path):
        cfg, classes, info, tensors = read_model_file(path)
        if not with_text_encoder and cfg.text_encoder is not None:
            cfg = dataclasses.replace(cfg, text_encoder=None)
            tensors = {k: v for k, v in tensors.items() if not k.startswith("text_encoder.")}
        with unseeded_build():
            model = CascadeCLIP(cfg)
        report = load_state(model, tensors, str(path))
        return model.eval(), classes, report
    state, meta = read_authors_checkpoint(path)
    model, report = model_from_authors_state(state, str(path), base, with_text_encoder)
    report.looks_like = guess_authors_config(state, meta)
    return model, None, report


def architecture_keys() -> list[str]:
    """The architecture fields ("section.name"): every field of the image encoder and the head but the dropout rates,
    which a run may change."""
    return [
        f"{section}.{f.name}"
        for section, fields in (("image_encoder", ImageEncoderConfig), ("head", HeadConfig))
        for f in dataclasses.fields(fields)
        if "dropout" not in f.name
    ]


def architecture_differences(a: ModelConfig, b: ModelConfig, keys: list[str] | None = None) -> list[str]:
    """The architecture fields (among `keys`; default: `architecture_keys()`) where model configurations `a` and `b`
    differ."""
    return [key for key in (architecture_keys() if keys is None else keys) if _field(a, key) != _field(b, key)]


def _field(cfg: ModelConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def check_architecture(model: CascadeCLIP, wanted: ModelConfig, source: str, keys: list[str] | None = None) -> None:
    """CheckpointError when the loaded `model` was built with another architecture than `wanted` (see
    `architecture_differences`). Shapes alone cannot tell e.g. the tapped blocks or the head counts apart."""
    differences = [
        f"model.{key}: file {_field(model.cfg, key)}, configuration {_field(wanted, key)}"
        for key in architecture_differences(model.cfg, wanted, keys)
    ]
    if differences:
        raise CheckpointError(
            f"{source} does not fit the configuration: {'; '.join(differences[:4])}"
            + (" ..." if len(differences) > 4 else "")
            + ". Use the configuration the checkpoint was trained with, or another checkpoint"
        )


def load_state(model: CascadeCLIP, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Load a state dict in this model's (= the authors') key layout with strict accounting.

    Keys the authors' model registers but never uses are skipped and reported, as is the text tower when the model
    has none; any other missing, unexpected or mis-shaped key raises CheckpointError naming the keys.
    """
    report = LoadReport(source)
    usable = {}
    for key, value in state.items():
        unused = any(part in key for part in AUTHORS_UNUSED_KEY_PARTS)
        if unused or (key.startswith("text_encoder.") and model.text_encoder is None):
            report.skipped.append(key)
        else:
            usable[key] = value
    expected = model.state_dict()
    missing = [k for k in expected if k not in usable]
    unexpected = [k for k in usable if k not in expected]
    if missing or unexpected:
        guess = guess_authors_config(state)
        raise CheckpointError(
            f"{source} does not match the model configuration. Missing keys: {_abbreviate(missing) or 'none'}. "
            f"Unexpected keys: {_abbreviate(unexpected) or 'none'}. "
            f"The file looks like: {', '.join(guess) if guess else 'none of the presets'}."
        )
    _check_shapes(model, usable, source)
    check_finite(usable, source)
    model.load_state_dict(usable, strict=True)
    return report


def _check_shapes(model: CascadeCLIP, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if wrong:
        guess = guess_authors_config(state)
        raise CheckpointError(
            f"{source}: {len(wrong)} tensors have the wrong shape for this configuration: {'; '.join(wrong[:5])}"
            + (" ..." if len(wrong) > 5 else "")
            + (f". The file looks like: {', '.join(guess)}." if guess else ".")
        )


def load_segmentation_weights(
    checkpoint: str | Path, clip_weights: str | Path | None = None
) -> tuple[CascadeCLIP, TextEncoder]:
    """(model, text tower) from a Cascade-CLIP checkpoint and, optionally, OpenAI CLIP weights for the text tower.

    `checkpoint` is a path or a Hugging Face Hub name (see `resolve_checkpoint`). Raises UserError naming the
    missing or unsuitable file, with where to get the right one.
    """
    checkpoint = resolve_checkpoint(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} not found. {WEIGHTS_HELP}")
    if clip_weights is not None and not Path(clip_weights).expanduser().is_file():
        raise UserError(
            f"CLIP weights {clip_weights} not found. Download OpenAI's ViT-B-16.pt from {OPENAI_VIT_B_16_URL}"
        )
    if _is_openai_clip_safetensors(checkpoint):
        raise UserError(
            f"{checkpoint} holds OpenAI CLIP weights, not a Cascade-CLIP model: give it as --clip-weights "
            f"(clip_weights=...), and a Cascade-CLIP checkpoint as --checkpoint. {WEIGHTS_HELP}"
        )
    try:
        model, _, _ = load_checkpoint(checkpoint, with_text_encoder=clip_weights is None)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}. --checkpoint takes a Cascade-CLIP checkpoint (an authors' .pth or a "
            "cascadeclip .safetensors); OpenAI's ViT-B-16.pt goes to --clip-weights"
        ) from None
    if clip_weights is not None:
        return model, load_text_encoder(clip_weights)
    if model.text_encoder is None:
        raise UserError(
            f"{checkpoint} has no CLIP text tower, which is needed to embed class names: pass OpenAI's "
            f"ViT-B-16.pt (from {OPENAI_VIT_B_16_URL}) as --clip-weights (clip_weights=...)"
        )
    return model, model.text_encoder
