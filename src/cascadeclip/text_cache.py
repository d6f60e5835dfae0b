"""A disk cache of class-name embeddings, so a name is run through the CLIP text tower once per weights and templates.

Layout: `<cache>/text_embeddings/<weights fingerprint>-<templates fingerprint>/<name fingerprint>.npz`, one file
per class name holding its (D,) fp32 embedding and the name itself (checked on reading). The cache folder is
$CASCADECLIP_CACHE, else $XDG_CACHE_HOME/cascadeclip, else ~/.cache/cascadeclip. Files are written atomically; an
unreadable entry is recomputed, and a cache that cannot be written only costs a warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoints import atomic_write
from .modeling.text_encoder import TextEncoder
from .text_embeddings import encode_class_names

CACHE_ENV = "CASCADECLIP_CACHE"


def cache_dir() -> Path:
    """The cache folder: $CASCADECLIP_CACHE, else $XDG_CACHE_HOME/cascadeclip, else ~/.cache/cascadeclip."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "cascadeclip"


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


class TextEmbeddingCache:
    """Embeddings of class names by one text tower and template set, kept in memory and on disk."""

    def __init__(self, text_encoder: TextEncoder, templates: tuple[str, ...], root: Path | None = None):
        self.text_encoder = text_encoder
        self.templates = templates
        folder = f"{weights_fingerprint(text_encoder)[:16]}-{_digest(*templates)[:8]}"
        self.folder = (root if root is not None else cache_dir()) / "text_embeddings" / folder
        self._memory: dict[str, torch.Tensor] = {}
        self._warned = False

    def embeddings(self, names: list[str] | tuple[str, ...]) -> torch.Tensor:
        """(C, D) fp32 unit-norm embeddings of `names`; only names found in neither cache go through the tower."""
        missing = [n for n in dict.fromkeys(names) if n not in self._memory and not self._read(n)]
        if missing:
            computed = encode_class_names(self.text_encoder, missing, self.templates).cpu()
            for name, row in zip(missing, computed):
                self._memory[name] = row
                self._write(name, row)
        return torch.stack([self._memory[n] for n in names])

    def _path(self, name: str) -> Path:
        return self.folder / f"{_digest(name)[:32]}.npz"

    def _read(self, name: str) -> bool:
        path = self._path(name)
        if not path.is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["name"]) != name:
                    return False
                self._memory[name] = torch.from_numpy(data["embedding"].astype(np.float32))
            return True
        except (OSError, ValueError, KeyError):  # damaged entry: recompute and overwrite it
            return False

    def _write(self, name: str, row: torch.Tensor) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, embedding=row.numpy(), name=np.array(name))

        try:
            atomic_write(self._path(name), write)
        except OSError as err:
            if not self._warned:
                warnings.warn(f"cannot write the text-embedding cache in {self.folder} ({err}); set ${CACHE_ENV} "
                              "to a writable folder to keep embeddings between runs", stacklevel=3)  # fmt: skip
                self._warned = True
