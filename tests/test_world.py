"""The miniature world: scenes, its VOC-layout dataset, the tiny CLIP archive, and the whole demo chain (reduced)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from open_clip.tokenizer import tokenize

from cascadeclip.cli.main import main
from cascadeclip.config.class_names import WORLD_CLASSES, WORLD_COLOURS, WORLD_PATTERNS, WORLD_UNSEEN
from cascadeclip.config.dataset_file import load_dataset
from cascadeclip.config.presets import get_preset
from cascadeclip.data.datasets import list_samples, read_label
from cascadeclip.factory import create_model, save_openai_archive
from cascadeclip.world.calibration import SHIFT_GRID
from cascadeclip.world.dataset import write_dataset
from cascadeclip.world.pretrain import TinyClipConfig, build_clip, pretraining_batch
from cascadeclip.world.scenes import class_words, render_scene, scene_rng, texture
from cascadeclip.world.shipped import pretrained_tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_word_of_an_unseen_class_names_seen_classes():
    seen = [c for c in range(len(WORLD_CLASSES)) if c not in WORLD_UNSEEN]
    assert len(WORLD_CLASSES) == 20 and len(WORLD_UNSEEN) == 5
    for c in WORLD_UNSEEN:
        colour, pattern = class_words(c)
        assert WORLD_CLASSES[c] == f"{colour} {pattern}"
        assert sum(class_words(s)[0] == colour for s in seen) >= 3
        assert sum(class_words(s)[1] == pattern for s in seen) >= 3
    assert {class_words(c)[0] for c in seen} == set(WORLD_COLOURS)
    assert {class_words(c)[1] for c in seen} == set(WORLD_PATTERNS)


def test_scenes_are_deterministic_with_exact_masks_and_captions():
    a, b = render_scene(scene_rng(7, "train", 3)), render_scene(scene_rng(7, "train", 3))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.caption == b.caption
    other = render_scene(scene_rng(7, "val", 3))
    assert not np.array_equal(a.image, other.image)
    for i in range(20):
        scene = render_scene(scene_rng(0, "train", i))
        present = set(np.unique(scene.label).tolist()) - {0}
        assert present == {c + 1 for c in scene.classes}  # every painted object stays visible, nothing else
        assert all(WORLD_CLASSES[c] in scene.caption for c in scene.classes)
        # Objects are saturated colours on muted backgrounds: the label map follows what was painted. (Their marks,
        # up to half of an object, are near-white or near-black, hence the upper quartile.)
        saturation = scene.image.max(-1).astype(int) - scene.image.min(-1).astype(int)
        upper = [np.quantile(saturation[part], 0.75) for part in (scene.label > 0, scene.label == 0)]
        assert upper[0] > 2 * upper[1]


def test_pattern_marks_differ_in_brightness_within_a_colour():
    """Striped marks are light, dotted and checkered marks dark, so that the patterns of one colour differ in
    brightness as well as in layout. The same random stream gives the same shade and background to each pattern."""
    brightness = {}
    for pattern_index, pattern in enumerate(WORLD_PATTERNS):
        scene = texture(scene_rng(0, "train", 0), 4 * 4 + pattern_index)  # purple, each pattern
        assert class_words(scene.classes[0]) == ("purple", pattern) and (scene.label == scene.classes[0] + 1).all()
        assert WORLD_CLASSES[scene.classes[0]] in scene.caption
        brightness[pattern] = scene.image.mean()
    assert brightness["striped"] > brightness["plain"] + 20
    assert brightness["dotted"] < brightness["plain"] - 10 and brightness["checkered"] < brightness["dotted"] - 10


def test_pretraining_batches_mix_textures_single_objects_and_scenes():
    cfg = TinyClipConfig(batch_size=400)
    _, captions = pretraining_batch(cfg, step=0)
    single = sum(" and " not in c and "," not in c for c in captions) / len(captions)
    # Textures and single objects name one class; scenes of 1-4 objects name one class a quarter of the time.
    expected = (
        cfg.texture_fraction + cfg.single_object_fraction + (1 - cfg.texture_fraction - cfg.single_object_fraction) / 4
    )
    assert abs(single - expected) < 0.06  # 400 draws: binomial standard deviation about 0.02


def test_world_split_is_read_by_the_project_readers(tmp_path):
    write_dataset(tmp_path, seed=1, size=64, train_count=6, val_count=3, heldout_count=2)
    dataset = load_dataset("world")
    val = list_samples("world", tmp_path, "val")
    assert [s.name for s in val] == ["val_00000", "val_00001", "val_00002"]
    assert len(list_samples("world", tmp_path, "train")) == 6
    # Held-out scenes continue the training stream and are never listed for training.
    assert [s.name for s in list_samples("world", tmp_path, "heldout")] == ["train_00006", "train_00007"]
    for i, sample in enumerate(val):
        label = read_label(sample.label, dataset)
        expected = render_scene(scene_rng(1, "val", i)).label.astype(int) - 1  # reduce_zero_label
        assert np.array_equal(label, np.where(expected < 0, 255, expected))


def test_world_preset_refers_to_the_world_classes():
    cfg = get_preset("world-inductive")
    assert cfg.classes.dataset == "world" and cfg.classes.names == WORLD_CLASSES
    assert cfg.classes.unseen == WORLD_UNSEEN and cfg.model.image_encoder.grid_size == 8
    transductive = get_preset("world-transductive")
    assert transductive.train.iters == cfg.train.iters // 2
    assert cfg.train.keep_iterations == (cfg.train.iters // 2,)


def test_tiny_clip_archive_loads_like_openai_weights(tmp_path):
    cfg = TinyClipConfig(steps=0, text_layers=1)
    clip = build_clip(cfg).eval()
    save_openai_archive(clip, tmp_path / "tiny-clip.pt", cfg.image_size, cfg.context_length)
    model, report = create_model(get_preset("world-inductive").model, clip_weights=tmp_path / "tiny-clip.pt")
    assert all(
        not k.startswith(("backbone.transformer", "backbone.conv1", "text_encoder.")) for k in report.kept_initial
    )
    tokens = tokenize(["a photo of a red striped", "a photo of a blue dotted"], context_length=cfg.context_length)
    with torch.no_grad():
        # Same weights, same computation: only float rounding differs (1e-5 on unit-norm embeddings).
        torch.testing.assert_close(
            model.text_encoder(tokens), clip.encode_text(tokens, normalize=True), atol=1e-5, rtol=0
        )


def test_pretrained_tiny_clip_is_cached_by_its_configuration(tmp_path):
    cfg = TinyClipConfig(steps=2, batch_size=4, text_layers=1, zero_shot_images=1)
    path, facts = pretrained_tiny_clip(cfg, tmp_path, progress=False)
    assert len(facts["losses"]) == 2 and 0 <= facts["zero_shot_accuracy_unseen"] <= 1
    stamp = path.stat().st_mtime_ns
    again, _ = pretrained_tiny_clip(cfg, tmp_path, progress=False)
    assert again == path and again.stat().st_mtime_ns == stamp  # not retrained
    other, _ = pretrained_tiny_clip(dataclasses.replace(cfg, seed=1), tmp_path, progress=False)
    assert other != path


def reduced_demo(out, cache, *options):
    options = options if "--threads" in options else ("--threads", "1", *options)
    return main(["demo", "--smoke", "--out", str(out), "--cache", str(cache), *options])


REPORT_SECTIONS = ("## Results", "## Targets", "## Controls", "## Calibration of the seen-class shift", "## Time")
MODELS = {"cascade-inductive", "cascade-transductive", "single-inductive", "single-transductive"}


def check_report_structure(report, seeds: int) -> dict:
    """The report folder's files, sections and numbers, whatever their values; returns results.json."""
    text = (report / "report.md").read_text()
    for phrase in (*REPORT_SECTIONS, "cascade (3 stages)", "single last-layer decoder", "chance", "zero-shot"):
        assert phrase in text
    assert "labels of all classes, the unseen classes included" in text  # the calibration's use of labels, stated
    results = json.loads((report / "results.json").read_text())
    assert len(results["seeds"]) == seeds and len(results["per_seed"]) == seeds
    assert len(results["targets"]) == 5 and all(t["seeds"] == seeds for t in results["targets"])
    for run in results["per_seed"]:
        assert set(run["models"]) == MODELS
        assert set(run["calibration"]) == {"cascade-inductive", "single-inductive"}
        assert run["calibration"]["cascade-inductive"]["shift"] in SHIFT_GRID
        assert len(run["probe"]) == 2 and all(0 <= p["class"] <= 100 for p in run["probe"].values())
        assert run["supervised"]["mIoU"] is not None
    figures = results["figures"]
    assert all(len(stat["values"]) == seeds for stat in figures.values())
    assert "cascade - single inductive hIoU" in figures and "supervised mIoU" in figures
    assert (report / "predictions.png").stat().st_size > 0 and (report / "curves.png").stat().st_size > 0
    return results


def test_reduced_demo_runs_the_whole_chain_and_writes_the_report(tmp_path, capsys):
    assert reduced_demo(tmp_path / "report", tmp_path / "cache") == 0
    report = tmp_path / "report"
    results = check_report_structure(report, seeds=1)
    for name in (*MODELS, "cascade-supervised"):
        assert (report / "runs" / name / "log.jsonl").is_file()
    assert results["figures"]["supervised mIoU"]["std"] is None  # one seed: no spread is claimed
    assert "wrote" in capsys.readouterr().out

    # Same seed, same numbers: a second run (tiny CLIP and dataset now cached) reproduces every figure of the runs,
    # also when they go to two worker processes of one thread each (--threads 2).
    assert reduced_demo(tmp_path / "again", tmp_path / "cache", "--threads", "2") == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())["per_seed"][0]
    for part in ("models", "calibration", "supervised", "chance"):
        assert again[part] == results["per_seed"][0][part]


def test_reduced_demo_over_two_seeds_reports_mean_and_spread(tmp_path):
    assert reduced_demo(tmp_path / "report", tmp_path / "cache", "--seeds", "2") == 0
    report = tmp_path / "report"
    results = check_report_structure(report, seeds=2)
    assert results["seeds"] == [0, 1]
    for seed in (0, 1):
        assert (report / f"seed-{seed}" / "runs" / "cascade-inductive" / "log.jsonl").is_file()
    # Seeds draw different worlds and CLIPs: the per-seed values differ, and mean and spread are theirs.
    stat = results["figures"]["clip zero-shot unseen"]
    assert stat["mean"] == pytest.approx(sum(stat["values"]) / 2)
    assert stat["std"] == pytest.approx(abs(stat["values"][0] - stat["values"][1]) / 2**0.5)
    assert results["per_seed"][0]["chance"] != results["per_seed"][1]["chance"]
    difference = results["figures"]["cascade - single transductive hIoU"]
    assert len(difference["values"]) == 2 and difference["std"] is not None
    assert " ± " in (report / "report.md").read_text()


def test_demo_refuses_zero_seeds_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's refusal, as for every count of the command line
        reduced_demo(tmp_path / "report", tmp_path / "cache", "--seeds", "0")
    assert exit_info.value.code == 2 and "argument --seeds: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_full_demo_reports_controls_calibration_and_targets(tmp_path):
    """The default demo end to end: the report's structure, and the inductive cascade's unseen mIoU at least 3x the
    world's chance level."""
    assert main(["demo", "--out", str(tmp_path / "report"), "--cache", str(tmp_path / "cache")]) == 0
    results = check_report_structure(tmp_path / "report", seeds=1)
    figures = results["figures"]
    chance = max(figures[f"chance {kind} mIoU(U)"]["mean"] for kind in ("uniform", "majority"))
    assert figures["cascade-inductive mIoU(U)"]["mean"] >= 3 * chance
