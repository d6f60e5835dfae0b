"""Weights and caches that do not fit or are damaged: mismatched configurations, tampered metadata, NaN, truncated
files, another text tower, text-embedding cache entries that cannot be used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cascadeclip import Segmenter
from cascadeclip.config import TextEncoderConfig
from cascadeclip.config.presets import get_preset
from cascadeclip.factory import CheckpointError, load_checkpoint, save_model
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.utils import UserError

from conftest import tiny_model_config
from hostile import cli, refused, write_image
from test_factory import authors_layout_file, make_openai_archive
from tiny_datasets import make_coco, make_voc


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADECLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CASCADECLIP_EMBEDDINGS_DIR", raising=False)


@pytest.fixture
def voc_pth(tmp_path):
    """An authors'-layout VOC inductive checkpoint (10 prompt tokens, 16 loss weights) of the tiny model."""
    torch.manual_seed(0)
    authors_layout_file(CascadeCLIP(tiny_model_config(prompt_tokens=10)), tmp_path / "voc.pth")
    return tmp_path / "voc.pth"


# ----------------------------------------------------------------------------------------------------------------
# Weights for another configuration
# ----------------------------------------------------------------------------------------------------------------


def test_convert_refuses_a_preset_the_file_does_not_fit(voc_pth, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    refused(capsys, "convert", voc_pth, out, "--preset", "coco-inductive", match="does not look like coco-inductive")
    assert not out.exists()
    assert cli(capsys, "convert", voc_pth, out, "--preset", "voc-inductive")[0] == 0


@pytest.fixture
def coco_root(tmp_path):
    make_coco(tmp_path / "coco", {"val": ["a"]})
    return tmp_path / "coco"


def test_a_voc_checkpoint_under_a_coco_configuration_stops(voc_pth, coco_root, tmp_path, capsys):
    argv = ["test", "coco-inductive", "--data-root", coco_root, "--device", "cpu", "--out", tmp_path / "r.json"]
    refused(capsys, *argv, "--checkpoint", voc_pth, match="was trained on voc, but coco-inductive scores")
    # The same through our format: the class set stored with the weights says VOC.
    assert cli(capsys, "convert", voc_pth, tmp_path / "voc.safetensors")[0] == 0
    refused(capsys, *argv, "--checkpoint", tmp_path / "voc.safetensors", match="was trained on voc")
    assert not (tmp_path / "r.json").exists()


def test_edits_that_keep_shapes_are_checked_against_the_file(tiny_checkpoint, tmp_path, capsys):
    make_voc(tmp_path / "data", {"val": ["a"]})
    argv = ["test", "voc-inductive", "--checkpoint", tiny_checkpoint, "--data-root", tmp_path / "data"]
    fast = ["test.short_side=64", "test.crop_size=64", "test.stride=48", "--device", "cpu"]
    refused(
        capsys,
        *argv,
        "model.image_encoder.tap_blocks=[0,1,2,3,4,5]",
        *fast,
        match="model.image_encoder.tap_blocks: file (5, 6, 7, 8, 9, 10), configuration (0, 1, 2, 3, 4, 5)",
    )
    refused(capsys, *argv, "model.head.heads=2", *fast, match="model.head.heads: file 4, configuration 2")
    assert cli(capsys, *argv, "model.head.heads=4", *fast)[0] == 0  # what the file holds: accepted
    # The preset's own value (8), set explicitly, is an edit too: the file's 4 heads are not used in silence.
    assert get_preset("voc-inductive").model.head.heads == 8
    refused(capsys, *argv, "model.head.heads=8", *fast, match="model.head.heads: file 4, configuration 8")
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("preset: voc-inductive\nmodel:\n  head:\n    heads: 8\n")
    refused(capsys, "test", yaml_file, *argv[2:], *fast, match="model.head.heads: file 4, configuration 8")
    assert cli(capsys, *argv, *fast)[0] == 0  # left alone: the file's configuration is used


def test_suite_overrides_equal_to_the_preset_are_checked_against_the_file(tiny_checkpoint, tmp_path, capsys):
    make_voc(tmp_path / "data", {"val": ["a"]})
    fast = ["test.short_side=64", "test.crop_size=64", "test.stride=48"]
    argv = ["test", "--suite", "ov", tiny_checkpoint, *fast, "--data-root", tmp_path / "data", "--device", "cpu"]
    refused(capsys, *argv, "model.head.heads=8", match="model.head.heads: file 4, configuration 8")


def test_transductive_init_from_weights_of_another_architecture_stops(tmp_path):
    from cascadeclip.engine.trainer import build_model

    cfg = get_preset("voc-transductive")
    cfg.model = tiny_model_config()
    other = tiny_model_config()
    other.image_encoder.tap_blocks = (0, 1, 2, 3, 4, 5)
    save_model(tmp_path / "init.safetensors", CascadeCLIP(other))
    cfg.train.init = str(tmp_path / "init.safetensors")
    with pytest.raises(CheckpointError, match="tap_blocks: file"):
        build_model(cfg)


def test_a_text_tower_with_another_vocabulary(tmp_path, capsys):
    cfg = tiny_model_config()
    cfg.text_encoder = TextEncoderConfig(vocab_size=512, width=32, heads=2, layers=1, output_dim=32)
    save_model(tmp_path / "small_vocab.safetensors", CascadeCLIP(cfg))
    image = write_image(tmp_path / "x.png")
    argv = ["segment", image, "--classes", "cat", "--checkpoint", tmp_path / "small_vocab.safetensors"]
    refused(capsys, *argv, "--out", tmp_path / "o", match="the text tower knows 512 tokens")


# ----------------------------------------------------------------------------------------------------------------
# Damaged or tampered files
# ----------------------------------------------------------------------------------------------------------------


def _rewrite_metadata(source, target, change) -> None:
    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(metadata)
    save_file(tensors, str(target), metadata=metadata)


def _set(key, value):
    def change(metadata):
        metadata[key] = value

    return change


def _edit_config(**fields):
    def change(metadata):
        cfg = json.loads(metadata["model_config"])
        cfg["image_encoder"].update(fields)
        metadata["model_config"] = json.dumps(cfg)

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("model_config", "{not json"), "metadata 'model_config' is not valid JSON"),
        (lambda m: m.pop("model_config"), "its metadata has no 'model_config'"),
        (_set("model_config", "[1, 2]"), "metadata 'model_config' must be a JSON object"),
        (_set("classes", '{"names": 5}'), "classes.names: expected a list"),
        (_set("info", "{"), "metadata 'info' is not valid JSON"),
        (_edit_config(bogus=1), "unknown field 'bogus'"),
        (_edit_config(width="wide"), "model_config.image_encoder.width: expected int"),
        (_edit_config(prompt_tokens=-4), "model_config.image_encoder.prompt_tokens must be >= 0"),
        (
            _edit_config(heads=5),
            "model_config.image_encoder.heads (5) must divide model_config.image_encoder.width (64)",
        ),
    ],
)
def test_tampered_metadata_is_a_clear_error(tiny_checkpoint, tmp_path, change, message):
    target = tmp_path / "tampered.safetensors"
    _rewrite_metadata(tiny_checkpoint, target, change)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(target)
    assert message in str(error.value) and "tampered.safetensors" in str(error.value)


def test_truncated_empty_and_overlong_header_files(tiny_checkpoint, tmp_path, capsys):
    data = tiny_checkpoint.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "empty.safetensors": b"",
        "empty.pth": b"",
        # The header (8-byte length, then JSON) claims far more bytes than the file holds.
        "liar.safetensors": (10**9).to_bytes(8, "little") + data[8:100],
    }
    image = write_image(tmp_path / "x.png")
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        argv = ["segment", image, "--classes", "cat", "--checkpoint", tmp_path / name, "--out", tmp_path / "o"]
        refused(capsys, *argv, match="cannot read")
    assert not (tmp_path / "o").exists()


def test_nan_weights_stop_before_any_output(tmp_path, capsys):
    model = CascadeCLIP(tiny_model_config(with_text=True))
    with torch.no_grad():
        model.decode_head.q_projs[0].weight[0, 0] = float("nan")
    save_model(tmp_path / "nan.safetensors", model)
    image = write_image(tmp_path / "x.png")
    argv = ["segment", image, "--classes", "cat", "--checkpoint", tmp_path / "nan.safetensors", "--out", tmp_path / "o"]
    refused(capsys, *argv, match="hold NaN (e.g. decode_head.q_projs.0.weight)")
    assert not (tmp_path / "o").exists()


def test_non_finite_scores_are_never_written(tiny_checkpoint):
    segmenter = Segmenter.from_pretrained(tiny_checkpoint, device="cpu")
    with torch.no_grad():  # damaged after loading, where the file's check cannot see it
        segmenter.model.decode_head.q_projs[0].weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="not finite numbers"):
        segmenter.predict(np.zeros((30, 40, 3), dtype=np.uint8), ["cat", "dog"])


def test_nan_embeddings_file_is_refused(tmp_path):
    from cascadeclip.inference.text_embeddings import load_embedding_file

    rows = np.ones((20, 32), dtype=np.float16)
    rows[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", rows)
    with pytest.raises(UserError, match="NaN or infinity"):
        load_embedding_file(tmp_path / "nan.npy", 20)
    np.save(tmp_path / "ints.npy", np.ones((20, 32), dtype=np.int64))
    with pytest.raises(UserError, match="float array"):
        load_embedding_file(tmp_path / "ints.npy", 20)


# ----------------------------------------------------------------------------------------------------------------
# The text-embedding cache recomputes what it cannot use
# ----------------------------------------------------------------------------------------------------------------


def _entry_writer(kind):
    def write(path, good):
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:40])
        elif kind == "empty":
            path.write_bytes(b"")
        else:
            row = good[:5] if kind == "wrong dimension" else np.full_like(good, np.nan)
            with open(path, "wb") as f:
                np.savez(f, embedding=row, name=np.array("cat"))

    return write


@pytest.mark.parametrize("kind", ["truncated", "empty", "wrong dimension", "nan"])
def test_unusable_cache_entries_are_recomputed(tiny_checkpoint, tmp_path, kind):
    expected = Segmenter.from_pretrained(tiny_checkpoint, device="cpu").class_embeddings(["cat"])
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    _entry_writer(kind)(entry, expected[0].numpy())
    segmenter = Segmenter.from_pretrained(tiny_checkpoint, device="cpu")
    torch.testing.assert_close(segmenter.class_embeddings(["cat"]), expected, atol=0, rtol=0)
    with np.load(entry) as data:  # rewritten whole
        assert data["embedding"].shape == (32,) and np.isfinite(data["embedding"]).all()


def test_clip_weights_without_part_of_the_text_tower_are_refused_naming_what_is_missing(tmp_path):
    from cascadeclip.factory import load_text_encoder, read_openai_clip, save_openai_clip

    make_openai_archive(tmp_path / "clip.pt")
    state = read_openai_clip(tmp_path / "clip.pt")
    del state["ln_final.bias"]
    save_openai_clip(state, tmp_path / "clip.safetensors")
    with pytest.raises(
        CheckpointError, match=r"not a complete CLIP text tower \(missing: ln_final.bias; unexpected: none"
    ):
        load_text_encoder(tmp_path / "clip.safetensors")


def test_damaged_clip_weights_are_refused_without_advice_to_unpickle_them(tmp_path):
    from cascadeclip.factory import read_openai_clip

    (tmp_path / "ViT-B-16.pt").write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CheckpointError, match="is damaged or holds more than tensors") as refused_file:
        read_openai_clip(tmp_path / "ViT-B-16.pt")
    assert "weights_only" not in str(refused_file.value)


def test_a_renamed_safetensors_checkpoint_is_read_as_one_not_unpickled(tmp_path, monkeypatch):
    model = CascadeCLIP(tiny_model_config())
    save_model(tmp_path / "model.safetensors", model)
    (tmp_path / "model.safetensors").rename(tmp_path / "model_backup")
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("unpickled"))
    loaded, _, _ = load_checkpoint(tmp_path / "model_backup")
    torch.testing.assert_close(loaded.state_dict(), model.eval().state_dict(), rtol=0, atol=0)
