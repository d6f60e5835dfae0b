"""Weights files: OpenAI CLIP archives, the authors' .pth layout, our safetensors, and `cascade-clip convert`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from cascadeclip.cli.main import main
from cascadeclip.config import ClassesConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from cascadeclip.factory import (
    CheckpointError,
    create_model,
    load_checkpoint,
    load_state,
    load_text_encoder,
    read_openai_clip,
    save_model,
    save_openai_archive,
)
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.modeling.text_encoder import TextEncoder

from conftest import tiny_model_config


def make_openai_archive(path, image_size=64):
    """A TorchScript CLIP archive in OpenAI's key layout, at small width (heads = width / 64 as in OpenAI's)."""
    torch.manual_seed(0)
    clip = CLIP(
        32,
        CLIPVisionCfg(layers=12, width=64, patch_size=16, image_size=image_size),
        CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
        quick_gelu=True,
    ).eval()
    save_openai_archive(clip, path, image_size, context_length=77)
    return clip


def clip_encoder_config(image_size=64, prompt_tokens=0):
    return ModelConfig(
        image_encoder=ImageEncoderConfig(
            image_size=image_size, width=64, heads=1, output_dim=32, prompt_tokens=prompt_tokens
        ),
        head=tiny_model_config().head,
    )


def test_openai_archive_gives_the_same_features_as_open_clip(tmp_path):
    clip = make_openai_archive(tmp_path / "tiny-clip.pt")
    model, report = create_model(clip_encoder_config(), clip_weights=tmp_path / "tiny-clip.pt")
    model.eval()
    assert report.kept_initial and all(
        "prompt" in k or "ln_layers" in k or "proj_layers" in k or k.startswith("decode_head.")
        for k in report.kept_initial
    )

    tokens = torch.randint(1, 49000, (3, 77))
    tokens[:, 10] = 49407  # EOT: the largest id marks the pooled token
    tokens[:, 11:] = 0
    with torch.no_grad():
        torch.testing.assert_close(
            model.text_encoder(tokens), clip.encode_text(tokens, normalize=True), atol=1e-5, rtol=0
        )

    # Image tower: with no prompt tokens the encoder is CLIP's ViT except for the reference's CLS quirk
    # (class embedding added twice), which the open_clip copy is given too, and prompt_norm before ln_post. That
    # LayerNorm (weight 1, bias 0, eps 1e-6) is followed by ln_post, so it changes outputs only through its eps:
    # 1e-4 absolute is ample on unit-norm features.
    reference = copy.deepcopy(clip)
    with torch.no_grad():
        reference.visual.positional_embedding[0] += reference.visual.class_embedding
        reference.visual.output_tokens = True
        images = torch.randn(2, 3, 64, 64)
        pooled, tokens_out = reference.visual(images)
        maps, global_embedding = model.backbone(images)
    torch.testing.assert_close(global_embedding, F.normalize(pooled, dim=-1), atol=1e-4, rtol=0)
    final = F.normalize(tokens_out @ reference.visual.proj, dim=-1).transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(maps[-1], final, atol=1e-4, rtol=0)


def test_positional_table_is_resized_bilinearly(tmp_path):
    clip = make_openai_archive(tmp_path / "tiny-clip.pt")
    model, _ = create_model(
        clip_encoder_config(image_size=128, prompt_tokens=2), clip_weights=tmp_path / "tiny-clip.pt"
    )
    table = clip.visual.positional_embedding.detach()
    grid = table[1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = (
        F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(64, 64)
    )
    loaded = model.backbone.positional_embedding.detach()
    assert loaded.shape == (65, 64)
    torch.testing.assert_close(loaded[0], table[0])
    torch.testing.assert_close(loaded[1:], expected)


def test_plain_state_dict_in_openai_layout_is_accepted(tmp_path):
    clip = make_openai_archive(tmp_path / "tiny-clip.pt")
    torch.save(clip.state_dict(), tmp_path / "plain.pt")
    a, b = read_openai_clip(tmp_path / "tiny-clip.pt"), read_openai_clip(tmp_path / "plain.pt")
    assert b.keys() <= a.keys() and all(torch.equal(a[k], b[k]) for k in b)  # the archive adds a traced attn_mask


def test_sha256_mismatch_of_the_official_name_warns(tmp_path):
    make_openai_archive(tmp_path / "ViT-B-16.pt")
    with pytest.warns(UserWarning, match="SHA-256"):
        read_openai_clip(tmp_path / "ViT-B-16.pt")


def authors_layout_file(model: CascadeCLIP, path, num_criterion_classes=16):
    """Save `model` as the authors' mmcv checkpoint: their unused modules and a text tower stand-in included."""
    state = dict(model.state_dict())
    d = model.cfg.head.dim
    for s in range(len(model.cfg.head.stages)):
        for k in range(model.cfg.head.layers):
            p = f"decode_head.cascade_decoders.{s}.layers.{k}"
            state[f"{p}.self_attn.in_proj_weight"] = torch.randn(3 * d, d)
            state[f"{p}.self_attn.in_proj_bias"] = torch.randn(3 * d)
            state[f"{p}.self_attn.out_proj.weight"] = torch.randn(d, d)
            state[f"{p}.self_attn.out_proj.bias"] = torch.randn(d)
            state[f"{p}.norm1.weight"], state[f"{p}.norm1.bias"] = torch.ones(d), torch.zeros(d)
    state["decode_head.loss_decode.criterion.empty_weight"] = torch.ones(num_criterion_classes)
    stand_in = TextEncoder(TextEncoderConfig(vocab_size=512, width=8, heads=1, layers=1, output_dim=d))
    state.update({f"text_encoder.{k}": v for k, v in stand_in.state_dict().items()})
    torch.save({"meta": {"note": "test"}, "state_dict": state}, path)
    return state


def test_authors_layout_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    original = CascadeCLIP(cfg).eval()
    authors_layout_file(original, tmp_path / "iter_20000.pth")
    loaded, _, report = load_checkpoint(tmp_path / "iter_20000.pth", base=cfg, with_text_encoder=False)
    assert loaded.cfg == cfg
    assert any(".self_attn." in k for k in report.skipped) and any("loss_decode" in k for k in report.skipped)
    assert "text_encoder.ln_final.weight" in report.skipped
    for key, value in original.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    images, text = torch.randn(1, 3, 64, 64), torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, text), original(images, text), atol=0, rtol=0)


def test_wrong_configuration_fails_with_a_message_naming_keys(tmp_path):
    torch.manual_seed(0)
    file_model = CascadeCLIP(tiny_model_config(prompt_tokens=10))
    state = authors_layout_file(file_model, tmp_path / "voc.pth", num_criterion_classes=16)
    other = CascadeCLIP(tiny_model_config(prompt_tokens=4))
    with pytest.raises(CheckpointError, match=r"backbone\.prompt_embeddings.*voc-inductive"):
        load_state(other, state, "voc.pth")
    del state["decode_head.weights_s1"]
    with pytest.raises(CheckpointError, match=r"Missing keys: decode_head\.weights_s1"):
        load_state(file_model, state, "voc.pth")


def test_our_format_round_trips_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_model_config(with_text=True)).eval()
    classes = ClassesConfig(names=("cat", "dog"), unseen=(1,))
    save_model(tmp_path / "m.safetensors", model, classes, note="test")
    loaded, loaded_classes, _ = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.cfg == model.cfg and loaded_classes == classes
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_convert_authors_checkpoint_and_clip(tmp_path, capsys):
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_model_config(prompt_tokens=10)).eval()
    authors_layout_file(model, tmp_path / "voc.pth")
    assert main(["convert", str(tmp_path / "voc.pth"), str(tmp_path / "voc.safetensors"), "--no-text-encoder"]) == 0
    out = capsys.readouterr().out
    assert "voc-inductive" in out and "skipped" in out
    loaded, classes, _ = load_checkpoint(tmp_path / "voc.safetensors")
    assert classes.names[15] == "pottedplant" and classes.setting == "inductive"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    make_openai_archive(tmp_path / "tiny-clip.pt")
    assert main(["convert", str(tmp_path / "tiny-clip.pt"), str(tmp_path / "clip.safetensors")]) == 0
    a, b = read_openai_clip(tmp_path / "tiny-clip.pt"), read_openai_clip(tmp_path / "clip.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "missing.pth" in err and "Traceback" not in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["convert", str(tmp_path / "junk.pth"), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "junk.pth" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_loading_weights_leaves_the_callers_random_stream_where_it_was(tmp_path):
    save_model(tmp_path / "model.safetensors", CascadeCLIP(tiny_model_config(with_text=True)))
    make_openai_archive(tmp_path / "clip.pt")
    authors_layout_file(CascadeCLIP(tiny_model_config(prompt_tokens=10)), tmp_path / "voc.pth")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    load_checkpoint(tmp_path / "model.safetensors")
    load_checkpoint(tmp_path / "voc.pth")
    load_text_encoder(tmp_path / "clip.pt")
    assert torch.equal(torch.random.get_rng_state(), before)
