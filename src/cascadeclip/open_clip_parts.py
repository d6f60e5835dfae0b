"""The parts of open_clip this package builds on (its transformer, its CLIP model for the miniature world, its BPE
tokenizer), imported so that the import leaves the host process as it was.

Importing open_clip sets environment variables (TOKENIZERS_PARALLELISM, and TORCHINDUCTOR_CACHE_DIR through PyTorch's
compiler) and adds a warnings filter. A library must not change its host's environment unasked, so what the import
changed is put back. Nothing here needs them: the BPE tokenizer is open_clip's own, not Hugging Face's, and the
compiler's cache folder has the same default without the variable.
"""

from __future__ import annotations

import os
import warnings

_environment = dict(os.environ)
with warnings.catch_warnings():  # restores the filters on leaving
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import tokenize
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock, Transformer
for _name in set(os.environ) - set(_environment):
    del os.environ[_name]
os.environ.update(_environment)  # values the import changed
del _environment

__all__ = ["CLIP", "CLIPTextCfg", "CLIPVisionCfg", "QuickGELU", "ResidualAttentionBlock", "Transformer", "tokenize"]
