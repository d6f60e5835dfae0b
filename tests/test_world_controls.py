"""The demo's controls and tools: the seen-class shift's calibration rule, the linear probe, the shipped tiny CLIP."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import tokenize
from safetensors import safe_open

from cascadeclip.config import ClassesConfig
from cascadeclip.config.class_names import WORLD_CLASSES
from cascadeclip.config.presets import get_preset
from cascadeclip.evaluation import evaluate
from cascadeclip.factory import create_model, save_openai_archive
from cascadeclip.inference.text_embeddings import SINGLE_TEMPLATE
from cascadeclip.utils import IGNORE_INDEX
from cascadeclip.world import shipped
from cascadeclip.world.calibration import SHIFT_GRID, choose_shift, image_scores, sweep_shifts
from cascadeclip.world.dataset import write_dataset
from cascadeclip.world.pretrain import TinyClipConfig, build_clip, pretrain, pretraining_batch
from cascadeclip.world.probe import PURITY, fit_linear_probe, token_labels
from cascadeclip.world.protocol import WorldRecipe
from cascadeclip.world.scenes import render_scene, scene_rng, single_object, texture
from cascadeclip.world.shipped import pretrained_tiny_clip, shipped_clip, world_token_ids

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------------
# Calibration of the seen-class shift
# ---------------------------------------------------------------------------------------------------------------


def fake_scores() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two images of classes 0 (seen) and 1 (unseen) whose probabilities make every shift in (0.15, 0.21) exact:
    on unseen pixels the seen class leads by 0.15, on seen pixels it leads by 0.21."""
    label = torch.tensor([[0, 0, 1, 1]])
    seen_pixel, unseen_pixel = torch.tensor([0.70, 0.49]), torch.tensor([0.60, 0.45])
    scores = torch.stack([seen_pixel, seen_pixel, unseen_pixel, unseen_pixel], dim=1)[:, None, :]  # (2, 1, 4)
    return [(scores, label), (scores.clone(), label.clone())]


def test_the_calibration_rule_takes_the_smallest_shift_with_the_best_hiou():
    classes = ClassesConfig(dataset="world", names=("a", "b"), unseen=(1,))
    results = sweep_shifts(fake_scores(), classes, SHIFT_GRID)
    by_shift = dict(zip(SHIFT_GRID, results, strict=True))
    assert by_shift[0.0]["mIoU_unseen"] == 0 and by_shift[0.0]["hIoU"] == 0  # every unseen pixel goes to the seen class
    assert [s for s in SHIFT_GRID if by_shift[s]["hIoU"] == 100] == [0.16, 0.18, 0.2]
    assert by_shift[0.22]["mIoU_seen"] == 0  # past 0.21 every seen pixel goes to the unseen class
    assert choose_shift(SHIFT_GRID, results) == 0.16
    assert choose_shift((0.3, 0.1), [{"hIoU": 50.0}, {"hIoU": 50.0}]) == 0.1  # ties: the smallest shift
    assert choose_shift((0.0, 0.1), [{"hIoU": None}, {"hIoU": 1.0}]) == 0.1  # no hIoU counts as 0


def test_the_shift_sweep_equals_evaluating_at_each_shift(tmp_path):
    """The sweep subtracts shifts from scores computed once; the evaluation subtracts one shift inside the protocol.
    On a random world model both must give the same counts (integer pixel counts: exact)."""
    write_dataset(tmp_path, seed=0, size=64, train_count=1, val_count=3)
    cfg = get_preset("world-inductive")
    cfg.data.root = str(tmp_path)
    cfg.data.num_workers = 0
    clip_cfg = TinyClipConfig(steps=0, text_layers=1)
    save_openai_archive(build_clip(clip_cfg).eval(), tmp_path / "clip.pt", clip_cfg.image_size, 32)
    torch.manual_seed(0)
    model, _ = create_model(cfg.model, clip_weights=tmp_path / "clip.pt")  # random decoders
    shifts = (0.0, 0.1, 0.3)
    swept = sweep_shifts(image_scores(model, cfg, "val"), cfg.classes, shifts)
    for shift, result in zip(shifts, swept, strict=True):
        direct = evaluate(model, replace(cfg, classes=replace(cfg.classes, seen_score_shift=shift)))
        assert [c["IoU"] for c in result["per_class"]] == [c["IoU"] for c in direct["per_class"]]


# ---------------------------------------------------------------------------------------------------------------
# The linear probe
# ---------------------------------------------------------------------------------------------------------------


def test_token_labels_keep_tokens_mostly_covered_by_one_object():
    labels = np.full((1, 16, 16), IGNORE_INDEX)  # four tokens of 8x8
    labels[0, :8, :8] = 3  # token 0: all class 3
    labels[0, :8, 8:] = 5
    labels[0, :2, 8:] = IGNORE_INDEX  # token 1: 75% class 5, the rest background
    labels[0, 8:, :8] = 7
    labels[0, 8:, :3] = 2  # token 2: 62.5% class 7, mixed with class 2
    assert PURITY == 0.75
    assert token_labels(labels, patch=8, num_classes=20).tolist() == [[3, 5, -1, -1]]


def test_the_linear_probe_separates_linearly_separable_tokens():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 32, generator=generator) * 3
    labels = torch.arange(2000) % 20
    features = centres[labels] + torch.randn(2000, 32, generator=generator)
    probe = fit_linear_probe(features, labels, 20)
    with torch.no_grad():
        accuracy = (probe(features).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.99  # centres 3 sigma apart per dimension in 32 dimensions: separable with a wide margin


# ---------------------------------------------------------------------------------------------------------------
# The shipped tiny CLIP
# ---------------------------------------------------------------------------------------------------------------


def test_every_token_the_world_produces_is_kept():
    cfg = TinyClipConfig()
    kept = set(world_token_ids())
    texts = [SINGLE_TEMPLATE[0].format(name) for name in WORLD_CLASSES]
    texts += [render_scene(scene_rng(0, "train", i), num_objects=(1, 4)).caption for i in range(300)]
    texts += [single_object(scene_rng(0, "zero_shot", i), i % 20).caption for i in range(100)]
    texts += [texture(scene_rng(0, "pretrain", i), i % 20).caption for i in range(100)]
    texts += pretraining_batch(replace(cfg, batch_size=200), step=3)[1]
    used = set(tokenize(texts, context_length=cfg.context_length).flatten().tolist())
    assert used <= kept
    assert len(kept) < 100  # a few dozen of the 49,408 rows


def reduced_clip(**changes) -> TinyClipConfig:
    return TinyClipConfig(steps=2, batch_size=4, zero_shot_images=1, **changes)


def test_the_regeneration_command_writes_a_file_that_loads_as_the_pretrained_clip(tmp_path, monkeypatch):
    out = tmp_path / "tiny_clip.safetensors"
    assert shipped.main(["--out", str(out), "--steps", "2", "--batch-size", "4", "--zero-shot-images", "1"]) == 0
    cfg = reduced_clip()
    clip, facts = shipped_clip(cfg, out)
    assert len(facts["losses"]) == 2
    reference, losses = pretrain(cfg, progress=False)  # pretraining is deterministic on the CPU
    assert losses == facts["losses"]
    tokens = tokenize([SINGLE_TEMPLATE[0].format(name) for name in WORLD_CLASSES], context_length=cfg.context_length)
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        # The same weights, the unused token rows aside: the same numbers, bit for bit.
        assert torch.equal(clip.encode_text(tokens), reference.encode_text(tokens))
        assert torch.equal(clip.encode_image(images), reference.encode_image(images))
    assert shipped_clip(reduced_clip(seed=1), out) is None  # another configuration: not this file

    # Through the cache: the shipped file is used for its own configuration, without pretraining...
    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained although the shipped file holds this configuration")

    monkeypatch.setattr(shipped, "pretraining_facts", no_pretraining)
    path, facts = pretrained_tiny_clip(cfg, tmp_path / "cache", progress=False, shipped=out)
    assert facts["source"] == "shipped with the package" and path.is_file()
    # ... and any other configuration is pretrained.
    with pytest.raises(AssertionError, match="pretrained although"):
        pretrained_tiny_clip(reduced_clip(lr=2e-3), tmp_path / "cache", progress=False, shipped=out)


def test_the_package_ships_the_tiny_clip_of_the_default_recipe():
    """The demo's default recipe finds its CLIP in the package (no pretraining), in at most 5 MB. A change of the
    world or of the default configuration must come with a regenerated file (see `cascadeclip.world.shipped`)."""
    assert shipped.SHIPPED_FILE.is_file()
    assert shipped.SHIPPED_FILE.stat().st_size <= 5e6
    with safe_open(str(shipped.SHIPPED_FILE), framework="pt") as f:
        assert f.get_tensor("kept_token_ids").tolist() == world_token_ids()
    found = shipped_clip(WorldRecipe().clip)
    assert found is not None, "the shipped file was made with another configuration or world version: regenerate it"
    clip, facts = found
    assert facts["zero_shot_accuracy_unseen"] > 0.5  # a pretrained CLIP, far above chance (1/20)
    prompts = tokenize([SINGLE_TEMPLATE[0].format(name) for name in WORLD_CLASSES], context_length=32)
    with torch.no_grad():
        text = F.normalize(clip.encode_text(prompts), dim=-1)
    assert (text @ text.T).fill_diagonal_(0).max() < 0.999  # the class names stay distinct
