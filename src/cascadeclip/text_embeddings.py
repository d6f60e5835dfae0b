"""Class embeddings: from class names through the CLIP text tower, or from the authors' precomputed `.npy` files.

The released checkpoints were trained with fp16 files (rows in dataset class order, L2-normalised in fp16). They are
cast to fp32 and not re-normalised (spec §1.3, pitfall 17). Computed embeddings follow the same recipe: encode every
template, normalise each, average, normalise again.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.tokenizer import tokenize

from .modeling.text_encoder import TextEncoder

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


def templates_for(kind: str) -> tuple[str, ...]:
    if kind not in TEMPLATES:
        raise ValueError(f"unknown template set {kind!r}; use one of: {', '.join(TEMPLATES)}")
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
    """Read a (C, D) `.npy` of class embeddings as fp32, unchanged otherwise; checks the shape."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read class embeddings from {path}: {err}. Expected a (classes, dim) .npy") from err
    if array.ndim != 2:
        raise ValueError(f"{path}: class embeddings must be a 2-D (classes, dim) array, got shape {array.shape}")
    if num_classes is not None and array.shape[0] != num_classes:
        raise ValueError(
            f"{path}: {array.shape[0]} rows of class embeddings, but the configuration has {num_classes} classes; "
            "the file must hold one row per class, in the dataset's class order"
        )
    return torch.from_numpy(array.astype(np.float32))


@torch.no_grad()
def encode_class_names(
    text_encoder: TextEncoder, names: list[str] | tuple[str, ...], templates: tuple[str, ...]
) -> torch.Tensor:
    """(C,) class names -> (C, D) unit-norm embeddings: mean over templates of unit-norm embeddings, renormalised."""
    device = text_encoder.text_projection.device
    context = text_encoder.cfg.context_length
    rows = []
    for name in names:
        tokens = tokenize([t.format(name) for t in templates], context_length=context).to(device)
        rows.append(F.normalize(text_encoder(tokens).float().mean(0), dim=-1))
    return torch.stack(rows)


_computed: weakref.WeakKeyDictionary[TextEncoder, dict] = weakref.WeakKeyDictionary()


def class_embeddings(
    names: tuple[str, ...], templates: str = "single", embedding_file: str = "", text_encoder: TextEncoder | None = None
) -> torch.Tensor:
    """(C, D) fp32 embeddings of `names`: from `embedding_file` when it is found, else from the text tower.

    Embeddings computed by a text tower are kept per tower and class list, so each list is encoded once.
    """
    path = find_embedding_file(embedding_file) if embedding_file else None
    if path is not None:
        return load_embedding_file(path, num_classes=len(names))
    if text_encoder is None:
        wanted = f"the file {embedding_file!r} was not found (searched as a path and in ${EMBEDDINGS_DIR_ENV}) and " if embedding_file else ""
        raise ValueError(
            f"no class embeddings: {wanted}no CLIP text tower is loaded to compute them. Give the OpenAI ViT-B-16.pt "
            f"file (--clip-weights) or set ${EMBEDDINGS_DIR_ENV} to the folder holding the authors' .npy files"
        )
    key = (tuple(names), templates)
    cache = _computed.setdefault(text_encoder, {})
    if key not in cache:
        cache[key] = encode_class_names(text_encoder, names, templates_for(templates))
    return cache[key]
