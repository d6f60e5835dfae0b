"""Class embeddings from the text tower and from the authors' .npy files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import tokenize

from cascadeclip.config import TextEncoderConfig
from cascadeclip.config.presets import get_preset
from cascadeclip.inference.text_embeddings import MULTI_TEMPLATES, class_embeddings, load_embedding_file
from cascadeclip.modeling.text_encoder import TextEncoder

from conftest import SHARED_DIR, shared_data

SHARED_EMBEDDINGS = SHARED_DIR / "reference" / "text_embeddings"


@pytest.mark.parametrize("preset", ["voc-inductive", "context-inductive", "coco-inductive"])
def test_reference_files_load_as_fp32_without_renormalising(preset, monkeypatch):
    embeddings = shared_data(SHARED_EMBEDDINGS, "the reference text embeddings")
    monkeypatch.setenv("CASCADECLIP_EMBEDDINGS_DIR", str(embeddings))
    classes = get_preset(preset).classes
    text = class_embeddings(classes.names, classes.templates, classes.text_embeddings)
    raw = np.load(SHARED_EMBEDDINGS / classes.text_embeddings)
    assert text.dtype == torch.float32 and text.shape == (len(classes.names), 512)
    assert torch.equal(text, torch.from_numpy(raw.astype(np.float32)))  # exactly the fp16 values, not renormalised
    assert (text.norm(dim=1) - 1).abs().max() < 1e-3


def test_wrong_row_count_is_reported(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((3, 8), dtype=np.float16))
    with pytest.raises(ValueError, match="3 rows.*5 classes"):
        load_embedding_file(tmp_path / "e.npy", num_classes=5)


def test_templates_are_encoded_normalised_averaged_and_renormalised():
    torch.manual_seed(0)
    tower = TextEncoder(TextEncoderConfig(width=32, heads=2, layers=1, output_dim=16)).eval()
    names = ("cat", "traffic light")
    multi = class_embeddings(names, "multi", text_encoder=tower)  # run on the prompts' length, expected on 77 tokens
    with torch.no_grad():
        expected = torch.stack(
            [F.normalize(tower(tokenize([t.format(n) for t in MULTI_TEMPLATES])).mean(0), dim=-1) for n in names]
        )
        single = tower(tokenize([f"a photo of a {n}" for n in names]))
    torch.testing.assert_close(multi, expected)
    torch.testing.assert_close(class_embeddings(names, "single", text_encoder=tower), single)


def test_each_class_list_is_encoded_once():
    tower = TextEncoder(TextEncoderConfig(width=32, heads=2, layers=1, output_dim=16)).eval()
    calls = []
    tower.register_forward_hook(lambda *_: calls.append(1))
    first = class_embeddings(("a", "b"), "single", text_encoder=tower)
    second = class_embeddings(("a", "b"), "single", text_encoder=tower)
    assert len(calls) == 1 and torch.equal(first, second)  # the names together, none on the second call


def test_missing_file_without_text_tower_says_what_to_do():
    with pytest.raises(ValueError, match="ViT-B-16.pt"):
        class_embeddings(("a",), "single", "no_such_file.npy")
