"""Reading and writing weights: OpenAI CLIP `.pt`, the authors' Cascade-CLIP `.pth`, and our safetensors format.

- OpenAI `ViT-B-16.pt` is a TorchScript archive of fp16 weights (a plain state dict in the same key layout is also
  accepted). Its `visual.*` keys go to `backbone.*` with the positional table resized bilinearly to the training
  grid (197 -> 1025 rows for 512 crops); its text keys go to `text_encoder.*` (spec §4.2).
- The authors' files are `{"meta": ..., "state_dict": ...}` pickles with this model's key names (spec §4.1). The
  weights they register but never use are skipped by name and reported; anything else that does not fit is an error.
- Our files are a single `.safetensors` whose metadata holds the model configuration and the class set as JSON, so
  loading them runs no pickle.

Loading `.pt`/`.pth` files unpickles them, which can run code: only load files you trust, from paths you gave.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import ClassesConfig, ModelConfig, TextEncoderConfig, merge, to_dict
from .errors import UserError
from .modeling.cascade_clip import CascadeCLIP
from .modeling.image_encoder import resize_positional_grid

OPENAI_VIT_B_16_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
)
OPENAI_SHA256 = {"ViT-B-16.pt": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"}
AUTHORS_CHECKPOINTS_URL = "https://github.com/HVision-NKU/Cascade-CLIP#model-zoo"
FORMAT_NAME = "cascadeclip"

# Registered by the authors' model but never used in its computation (spec pitfall 22).
AUTHORS_UNUSED_KEY_PARTS = (".self_attn.", ".norm1.", "decode_head.loss_decode.")


class CheckpointError(UserError):
    """A weights file that cannot be used as asked; the message names the file and what to do."""


@dataclass
class LoadReport:
    """What a load did: keys skipped on purpose, and keys the model kept at their initial values."""

    source: str
    skipped: list[str] = field(default_factory=list)
    kept_initial: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"loaded {self.source}"]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unused keys: {_abbreviate(self.skipped)}")
        if self.kept_initial:
            lines.append(f"  {len(self.kept_initial)} parameters keep their initial values: {_abbreviate(self.kept_initial)}")
        return "\n".join(lines)


def _abbreviate(keys: list[str], limit: int = 6) -> str:
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(p if not p.isdigit() else "*" for p in key.split("."))
        groups[prefix] = groups.get(prefix, 0) + 1
    shown = [f"{k} (x{n})" if n > 1 else k for k, n in groups.items()]
    return ", ".join(shown[:limit]) + (f", ... ({len(shown) - limit} more patterns)" if len(shown) > limit else "")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        warnings.warn(f"{path}: SHA-256 differs from OpenAI's published {path.name} ({expected[:12]}...); "
                      "the file may be corrupt or a different model", stacklevel=2)  # fmt: skip
    try:
        if path.suffix == ".safetensors":  # written by `cascade-clip convert`
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but is OpenAI's format
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except (RuntimeError, SafetensorError):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{path} is neither a TorchScript archive nor a state dict of CLIP weights: {err}") from err
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or "visual.conv1.weight" not in state:
        raise CheckpointError(f"{path} does not hold OpenAI CLIP ViT weights (no 'visual.conv1.weight' key)")
    return {k: v.float() for k, v in state.items() if isinstance(v, torch.Tensor)}


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
    layers = len({k.split(".")[2 + prefix.count(".")] for k in state if k.startswith(f"{prefix}transformer.resblocks.")})
    return TextEncoderConfig(
        context_length=state[f"{prefix}positional_embedding"].shape[0],
        vocab_size=state[f"{prefix}token_embedding.weight"].shape[0],
        width=width,
        heads=max(1, width // 64),
        layers=layers,
        output_dim=state[f"{prefix}text_projection"].shape[1],
    )


def clip_to_cascade_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Map OpenAI CLIP keys onto this model: `visual.*` -> `backbone.*` (positional table resized), text -> `text_encoder.*`."""
    mapped = {}
    for key, value in state.items():
        if key.startswith("visual."):
            name = key[len("visual.") :]
            if name == "positional_embedding":
                grid = cfg.image_encoder.grid_size
                value = torch.cat([value[:1], resize_positional_grid(value[1:], (grid, grid))])
            mapped[f"backbone.{name}"] = value
        elif cfg.text_encoder is not None and key.split(".")[0] in (
            "transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection"
        ):  # fmt: skip
            if key == "positional_embedding":
                value = value[: cfg.text_encoder.context_length]
            mapped[f"text_encoder.{key}"] = value
    return mapped


def load_clip_weights(model: CascadeCLIP, clip_state: dict[str, torch.Tensor], path: str | Path) -> LoadReport:
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


# ----------------------------------------------------------------------------------------------------------------
# The authors' .pth
# ----------------------------------------------------------------------------------------------------------------


def read_authors_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of an authors' checkpoint. Unpickles the file: trusted paths only."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path, "checkpoint", f"The authors' six checkpoints are linked from {AUTHORS_CHECKPOINTS_URL}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not an authors' Cascade-CLIP checkpoint: expected a dict with 'state_dict'")
    state = {k.removeprefix("module."): v for k, v in data["state_dict"].items()}
    return state, data.get("meta") or {}


# (prompt tokens, size of the unused loss-criterion buffer) of the six released files (spec §4.1). The buffer has
# seen + 1 entries except in the VOC self-training config, so Context and COCO files do not tell their setting.
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


# ----------------------------------------------------------------------------------------------------------------
# Our format
# ----------------------------------------------------------------------------------------------------------------


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private (0600); give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def read_model_file(path: str | Path) -> tuple[ModelConfig, ClassesConfig | None, dict[str, Any], dict[str, torch.Tensor]]:
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
    model_cfg = merge(ModelConfig(), json.loads(metadata["model_config"]), f"{path} model_config")
    classes_data = json.loads(metadata.get("classes", "null"))
    classes = merge(ClassesConfig(), classes_data, f"{path} classes") if classes_data else None
    return model_cfg, classes, json.loads(metadata.get("info", "{}")), tensors


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CascadeCLIP, ClassesConfig | None]:
    """Build the model described by one of our `.safetensors` files and load its weights."""
    model_cfg, classes, _, tensors = read_model_file(path)
    model = CascadeCLIP(model_cfg)
    load_state(model, tensors, str(path))
    return model.to(device), classes
