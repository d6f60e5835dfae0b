"""Class embeddings: from class names through the CLIP text tower, or from the authors' precomputed `.npy` files.

The released checkpoints were trained with fp16 files (rows in dataset class order, L2-normalised in fp16). They are
cast to fp32 and not re-normalised (docs/authors-code.md#fp16-class-embeddings-not-renormalised). Computed embeddings
follow the same recipe: encode every template, normalise each, average, normalise again.

Computed embeddings are cached (`TextEmbeddingCache`), so that a name goes through a text tower once per template
set: in memory for as long as the tower lives (the tower is frozen, so its weights do not change), and, when a
folder is given, on disk, keyed by a fingerprint of the tower's weights. Disk layout:
`<folder>/text_embeddings/<weights fingerprint>-<templates fingerprint>/<name fingerprint>.npz`, one file per class
name holding its (D,) fp32 embedding and the name itself (checked on reading). Files are written atomically; an
entry that cannot be used (unreadable, truncated, empty, of another name, of the wrong dimension, holding NaN or
infinity) is recomputed and overwritten, and a cache that cannot be written only costs a warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.text_encoder import TextEncoder
from ..open_clip_parts import tokenize
from ..utils import CACHE_ENV, UserError, atomic_write

SINGLE_TEMPLATE = ("a photo of a {}",)  # no trailing period, as in voc12_single.npy
MULTI_TEMPLATES = (
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "a {} in the scene.",
    "a photo of a {} in the scene.",
    "There is a {} in the scene.",
    "There is the {} in the scene.",
    "This is a {} in the scene.",
    "This is the {} in the scene.",
    "This is one {} in the scene.",
)
TEMPLATES = {"single": SINGLE_TEMPLATE, "multi": MULTI_TEMPLATES}

EMBEDDINGS_DIR_ENV = "CASCADECLIP_EMBEDDINGS_DIR"
TOKENIZER_VOCABULARY = 49408  # token ids of CLIP's tokenizer (the end-of-text token is the last)


def templates_for(kind: str) -> tuple[str, ...]:
    if kind not in TEMPLATES:
        raise UserError(f"unknown template set {kind!r}; use one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[kind]


def find_embedding_file(name: str) -> Path | None:
    """A path as given if it exists, else `name` inside $CASCADECLIP_EMBEDDINGS_DIR; None when not found."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    directory = os.environ.get(EMBEDDINGS_DIR_ENV)
    if directory and (Path(directory) / name).is_file():
        return Path(directory) / name
    return None


def load_embedding_file(path: str | Path, num_classes: int | None = None) -> torch.Tensor:
    """Read a (C, D) `.npy` of class embeddings as fp32, unchanged otherwise; UserError when it cannot be read, has
    another shape, or holds NaN or infinity."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises OSError, ValueError, EOFError... on files that are not .npy arrays
        raise UserError(f"cannot read class embeddings from {path}: {err}. Expected a (classes, dim) .npy") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        shape = getattr(array, "shape", None)
        raise UserError(f"{path}: class embeddings must be a 2-D (classes, dim) float array, got shape {shape}")
    if num_classes is not None and array.shape[0] != num_classes:
        raise UserError(
            f"{path}: {array.shape[0]} rows of class embeddings, but the configuration has {num_classes} classes; "
            "the file must hold one row per class, in the dataset's class order"
        )
    if not np.isfinite(array).all():
        raise UserError(f"{path}: the class embeddings hold NaN or infinity; the file is damaged")
    return torch.from_numpy(array.astype(np.float32))


PROMPTS_PER_BATCH = 512  # prompts through the text tower at once: large matrix products, bounded memory


@torch.no_grad()
def encode_class_names(
    text_encoder: TextEncoder, names: list[str] | tuple[str, ...], templates: tuple[str, ...]
) -> torch.Tensor:
    """(C,) class names -> (C, D) unit-norm embeddings: mean over templates of unit-norm embeddings, renormalised.

    The prompts of several names go through the tower together, whole names at a time.
    """
    device = text_encoder.text_projection.device
    names_per_batch = max(1, PROMPTS_PER_BATCH // len(templates))
    rows = []
    for first in range(0, len(names), names_per_batch):
        batch = names[first : first + names_per_batch]
        prompts = [template.format(name) for name in batch for template in templates]
        tokens = tokenize(prompts, context_length=text_encoder.cfg.context_length).to(device)
        # Attention is causal and the embedding is read at the end-of-text token, so the padding after the longest
        # prompt changes nothing: cut it (prompts are some 10 of the 77 tokens: several times less work).
        tokens = tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]  # through the last end-of-text token (largest id)
        per_template = text_encoder(tokens).float().view(len(batch), len(templates), -1)
        rows.append(F.normalize(per_template.mean(1), dim=-1))
    return torch.cat(rows)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over the names, shapes and bytes of a module's parameters and buffers (hex)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}{tuple(data.shape)}".encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


# Embeddings computed by each live text tower, per (templates, name): shared by every cache of that tower.
_in_memory: weakref.WeakKeyDictionary[TextEncoder, dict[tuple[tuple[str, ...], str], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


class TextEmbeddingCache:
    """Embeddings of class names by one text tower and template set, kept in memory and, when `root` is given, on
    disk under `root` (the Segmenter passes the user's cache folder, `utils.cache_dir`)."""

    def __init__(self, text_encoder: TextEncoder, templates: tuple[str, ...], root: Path | None = None):
        if text_encoder.cfg.vocab_size < TOKENIZER_VOCABULARY:
            raise UserError(
                f"the text tower knows {text_encoder.cfg.vocab_size} tokens, but CLIP's tokenizer gives ids up to "
                f"{TOKENIZER_VOCABULARY - 1}: it is not a CLIP text tower. Give OpenAI's CLIP weights (--clip-weights)"
            )
        self.text_encoder = text_encoder
        self.templates = tuple(templates)
        self._memory = _in_memory.setdefault(text_encoder, {})
        self.folder = None
        if root is not None:
            folder = f"{weights_fingerprint(text_encoder)[:16]}-{_digest(*templates)[:8]}"
            self.folder = root / "text_embeddings" / folder
        self._warned = False

    def embeddings(self, names: list[str] | tuple[str, ...]) -> torch.Tensor:
        """(C, D) fp32 unit-norm embeddings of `names` on the CPU; only names found in neither the memory nor the disk
        cache go through the tower."""
        missing = [n for n in dict.fromkeys(names) if (self.templates, n) not in self._memory and not self._read(n)]
        if missing:
            computed = encode_class_names(self.text_encoder, missing, self.templates).cpu()
            if not torch.isfinite(computed).all():
                raise UserError(
                    "the text tower gives NaN or infinite class embeddings: its weights are damaged. Check the "
                    "weights file (or --clip-weights)"
                )
            for name, row in zip(missing, computed, strict=True):
                self._memory[self.templates, name] = row
                self._write(name, row)
        return torch.stack([self._memory[self.templates, n] for n in names])

    def _path(self, name: str) -> Path:
        return self.folder / f"{_digest(name)[:32]}.npz"

    def _read(self, name: str) -> bool:
        if self.folder is None or not self._path(name).is_file():
            return False
        try:
            with np.load(self._path(name), allow_pickle=False) as data:
                stored_name, row = str(data["name"]), data["embedding"]
        except Exception:  # damaged entry (truncated, empty, not an .npz: numpy raises many kinds): recompute it
            return False
        usable = (
            stored_name == name
            and row.shape == (self.text_encoder.cfg.output_dim,)
            and np.issubdtype(row.dtype, np.floating)
            and bool(np.isfinite(row).all())
        )
        if usable:
            self._memory[self.templates, name] = torch.from_numpy(row.astype(np.float32))
        return usable

    def _write(self, name: str, row: torch.Tensor) -> None:
        if self.folder is None:
            return

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, embedding=row.numpy(), name=np.array(name))

        try:
            atomic_write(self._path(name), write)
        except OSError as err:
            if not self._warned:
                warnings.warn(
                    f"cannot write the text-embedding cache in {self.folder} ({err}); set ${CACHE_ENV} "
                    "to a writable folder to keep embeddings between runs",
                    stacklevel=3,
                )
                self._warned = True


def class_embeddings(
    names: tuple[str, ...], templates: str = "single", embedding_file: str = "", text_encoder: TextEncoder | None = None
) -> torch.Tensor:
    """(C, D) fp32 embeddings of `names`: from `embedding_file` when it is found, else from the text tower.

    Embeddings computed by a text tower are kept in memory while the tower lives (`TextEmbeddingCache` without a
    disk folder), so each name is encoded once.
    """
    path = find_embedding_file(embedding_file) if embedding_file else None
    if path is not None:
        return load_embedding_file(path, num_classes=len(names))
    if text_encoder is None:
        wanted = (
            f"the file {embedding_file!r} was not found (searched as a path and in ${EMBEDDINGS_DIR_ENV}) and "
            if embedding_file
            else ""
        )
        raise UserError(
            f"no class embeddings: {wanted}no CLIP text tower is loaded to compute them. Give the OpenAI ViT-B-16.pt "
            f"file (--clip-weights) or set ${EMBEDDINGS_DIR_ENV} to the folder holding the authors' .npy files"
        )
    return TextEmbeddingCache(text_encoder, templates_for(templates)).embeddings(names)
