"""The model's structure and behaviour beyond the golden cases: shapes, sizes, class counts, trainable set."""

from __future__ import annotations

import pytest
import torch

from cascadeclip.config import TextEncoderConfig, gaussian_stage_weights
from cascadeclip.config.presets import PRESETS, get_preset
from cascadeclip.inference.predict import predict_scores, seen_shift_vector, window_starts
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.modeling.zero_shot import training_losses
from cascadeclip.profiling.parameters import authors_parameter_counts, count_parameters

from conftest import tiny_model_config


def test_full_size_coco_parameter_counts_match_the_paper():
    """193.09 M total and 40.46 M trainable as the authors count, with their unused self-attention (docs/method.md,
    What is trained)."""
    cfg = get_preset("coco-inductive").model
    cfg.text_encoder = TextEncoderConfig()
    with torch.device("meta"):
        model = CascadeCLIP(cfg)
    counts = authors_parameter_counts(model)
    assert counts.total == 193_088_774
    assert counts.trainable == 40_463_622
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone = {n for n in trainable if n.startswith("backbone.")}
    assert backbone == {
        "backbone.prompt_embeddings",
        "backbone.deep_prompt_embeddings",
        "backbone.prompt_proj.weight",
        "backbone.prompt_proj.bias",
        "backbone.prompt_norm.weight",
        "backbone.prompt_norm.bias",
    }
    head = {n for n, _ in model.decode_head.named_parameters()}
    assert trainable - backbone == {f"decode_head.{n}" for n in head}
    assert count_parameters(model).trainable == 1_052_928 + sum(p.numel() for p in model.decode_head.parameters())


def test_nga_initial_weights():
    assert gaussian_stage_weights(3) == pytest.approx((0.1353, 0.6065, 1.0), abs=1e-4)


def test_gradients_reach_exactly_the_trainable_parameters(tiny_config):
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_config).train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 6, (2, 64, 64))
    labels[:, :8] = 255
    text = torch.nn.functional.normalize(torch.randn(6, 32), dim=-1)
    losses = training_losses(model, images, labels, text, seen=[0, 1, 2, 3], unseen=[4, 5], setting="inductive")
    (losses["loss_focal"] + losses["loss_dice"]).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # The last layer of each decoder contributes only its attention logits (q and k): its value path, output
    # projection, FFN and norms are trainable but, as in the reference, receive no gradient.
    last = tiny_config.head.layers - 1
    unused = {
        n
        for n in trainable
        if f".layers.{last}." in n and not any(f".layers.{last}.multihead_attn.{x}." in n for x in ("q", "k"))
    }
    assert unused
    assert with_grad == trainable - unused


@pytest.mark.parametrize("num_classes", [1, 3, 171])
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (96, 32)])
def test_whole_and_sliding_window_on_several_sizes(tiny_config, num_classes, size):
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_config).eval()
    text = torch.nn.functional.normalize(torch.randn(num_classes, 32), dim=-1)
    shift = seen_shift_vector(num_classes, list(range(num_classes // 2)), 0.1)
    image = torch.randn(1, 3, *size)
    whole = predict_scores(model, image, text, shift, mode="whole")
    assert whole.shape == (1, num_classes, *size)
    slide = predict_scores(
        model, image, text, shift, mode="slide", crop=32, stride=16, out_size=(size[0] + 5, size[1] + 3)
    )
    assert slide.shape == (1, num_classes, size[0] + 5, size[1] + 3)
    assert torch.isfinite(slide).all()
    # Windows batched or one by one: the same scores (no interaction across the windows of a batch).
    one_by_one = predict_scores(model, image, text, shift, mode="slide", crop=32, stride=16, window_batch=1)
    batched = predict_scores(model, image, text, shift, mode="slide", crop=32, stride=16, window_batch=64)
    torch.testing.assert_close(one_by_one, batched, atol=1e-5, rtol=0)


def test_window_starts_follow_the_reference_grid():
    # n = max(H - crop + stride - 1, 0) // stride + 1, the last window clamped to end at the border.
    assert window_starts(512, 512, 426) == [0]
    assert window_starts(683, 512, 426) == [0, 171]
    assert window_starts(1000, 512, 426) == [0, 426, 488]
    assert window_starts(300, 512, 426) == [0]


def test_sliding_window_equals_whole_image_when_one_window_covers_it(tiny_config):
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_config).eval()
    text = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    image = torch.randn(1, 3, 64, 64)
    whole = predict_scores(model, image, text, mode="whole")
    slide = predict_scores(model, image, text, mode="slide", crop=64, stride=53)
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=0)


def test_single_decoder_baseline_builds_and_runs():
    cfg = tiny_model_config()
    cfg.head.stages = ((6,),)
    model = CascadeCLIP(cfg).eval()
    assert not any(n.startswith("weights_s") for n, _ in model.decode_head.named_parameters())
    out = model(torch.randn(1, 3, 64, 64), torch.randn(4, 32))
    assert out.shape == (1, 4, 64, 64)


def test_inconsistent_configuration_is_rejected():
    cfg = tiny_model_config()
    cfg.head.dim = 48
    with pytest.raises(ValueError, match="output_dim"):
        CascadeCLIP(cfg)


def test_image_size_must_be_a_multiple_of_the_patch(tiny_config):
    model = CascadeCLIP(tiny_config).eval()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 60, 64), torch.randn(2, 32))


def test_presets_are_the_authors_configurations():
    # world: cascadeclip.world; coco-to-<dataset> beyond VOC and Context: the open-vocabulary test sets
    open_vocabulary = {f"coco-to-{d}" for d in ("ade150", "ade847", "pc459", "cityscapes", "voc21", "context60")}
    authors = {name: p for name, p in PRESETS.items() if not name.startswith("world-") and name not in open_vocabulary}
    assert len(authors) == 8 and open_vocabulary < set(PRESETS)
    voc = get_preset("voc-inductive")
    assert [voc.classes.names[i] for i in voc.classes.unseen] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert len(get_preset("coco-inductive").classes.unseen) == 15
    assert len(get_preset("context-inductive").classes.unseen) == 10
    tokens = {name: p.model.image_encoder.prompt_tokens for name, p in authors.items()}
    assert tokens == {
        "voc-inductive": 10,
        "voc-transductive": 10,
        "context-inductive": 35,
        "context-transductive": 35,
        "coco-inductive": 50,
        "coco-transductive": 50,
        "coco-to-voc": 50,
        "coco-to-context": 50,
    }
    assert get_preset("voc-transductive").train.batch_size == 32
    assert get_preset("coco-to-voc").classes.unseen == ()
    assert get_preset("voc-transductive").classes.test_seen_shift == 0.0
    assert get_preset("voc-inductive").classes.test_seen_shift == 0.1


def test_config_from_preset_yaml_and_overrides(tmp_path):
    from cascadeclip.config.presets import resolve_config
    from cascadeclip.utils import UserError

    (tmp_path / "small.yaml").write_text(
        "preset: voc-inductive\ntrain:\n  iters: 50\nmodel:\n  image_encoder:\n    width: 64\n    heads: 4\n"
    )
    cfg = resolve_config(str(tmp_path / "small.yaml"), ["train.lr=0.001", "model.head.stages=[[6]]"])
    assert cfg.name == "voc-inductive" and cfg.train.iters == 50 and cfg.train.lr == 0.001
    assert cfg.model.image_encoder.width == 64 and cfg.model.head.stages == ((6,),)
    assert cfg.classes.names[0] == "aeroplane"
    with pytest.raises(UserError, match="unknown field 'itrs'"):
        resolve_config("voc-inductive", ["train.itrs=3"])
    with pytest.raises(UserError, match="neither a preset"):
        resolve_config("no-such-thing")
