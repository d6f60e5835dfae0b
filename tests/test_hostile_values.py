"""Values out of range, in the configuration and on the command line: refused before any work, the key or option
named."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cascadeclip.config import Config, ConfigError, TrainConfig, apply_overrides, validate
from cascadeclip.config.presets import resolve_config
from cascadeclip.utils import UserError

from hostile import cli, refused


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iters=-5", "train.iters must be >= 1, got -5"),
        ("train.lr=-1", "train.lr must be > 0, got -1.0"),
        ("train.accumulation_steps=0", "train.accumulation_steps must be >= 1, got 0"),
        ("train.crop_size=0", "train.crop_size must be >= 1, got 0"),
        ("train.crop_size=500", "train.crop_size (500) must be a multiple of model.image_encoder.patch_size (16)"),
        ("train.precision=fp8", "train.precision must be one of fp32, bf16, fp16, got 'fp8'"),
        ("train.betas=[0.9,1.5]", "train.betas must be a list of values in [0.0, 1.0)"),
        ("train.ratio_range=[2,1]", "ratio_range (2.0, 1.0) must be (low, high) with low <= high"),
        ("train.iters=true", "train.iters: expected int, got True"),
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
        ("test.stride=0", "test.stride must be >= 1, got 0"),
        ("test.stride=600", "test.stride (600) must not exceed test.crop_size (512)"),
        ("test.mode=bogus", "test.mode must be one of slide, whole, got 'bogus'"),
        ("test.short_side=100", "test.short_side (100) must be at least test.crop_size (512) in slide mode"),
        ("model.head.heads=3", "model.head.heads (3) must divide model.head.dim (512)"),
        ("model.image_encoder.tap_blocks=[7,3]", "tap_blocks (7, 3) must be increasing block indices"),
        ("model.image_encoder.prompt_dropout=1.5", "model.image_encoder.prompt_dropout must be in [0.0, 1.0)"),
        ("classes.unseen=[100]", "classes.unseen: [100] must be distinct class indices in 0..19"),
        ("classes.unseen=[3,3]", "classes.unseen: [3, 3] must be distinct class indices in 0..19"),
        ("classes.setting=semi", "classes.setting must be one of inductive, transductive"),
        ("classes.templates=many", "classes.templates: expected single, multi or a list of templates"),
    ],
)
def test_configuration_values_out_of_range_are_refused_with_their_key(override, message, tmp_path, capsys):
    with pytest.raises(UserError) as error:
        resolve_config("voc-inductive", [override])
    assert message in str(error.value)
    run_dir = tmp_path / "run"
    refused(capsys, "train", "voc-inductive", override, "--run-dir", run_dir, "--device", "cpu", match=message)
    assert not run_dir.exists()


def test_every_problem_is_listed_at_once():
    with pytest.raises(UserError) as error:
        resolve_config("voc-inductive", ["train.iters=0", "test.stride=0"])
    assert "train.iters" in str(error.value) and "test.stride" in str(error.value)


def test_a_configuration_built_in_python_is_checked_by_train(tmp_path):
    from cascadeclip.engine.trainer import train

    with pytest.raises(ConfigError, match="train.iters must be >= 1"):
        train(Config(train=TrainConfig(iters=0)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="names must list at least one class"):
        validate(Config())  # the typed defaults leave the classes to a preset or a file


def test_a_yaml_config_names_the_file_and_the_key(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: voc-inductive\ntrain:\n  lr: &rate 0.1\n  min_lr: *rate\n  iters: -1\n")
    refused(capsys, "train", path, "--run-dir", tmp_path / "r", match="mine.yaml: train.iters must be >= 1")
    path.write_text("train: !!python/object:os.system {}\n")
    refused(capsys, "train", path, "--run-dir", tmp_path / "r", match="cannot read config file")
    path.write_text("train:\n  1: 2\n")
    refused(capsys, "train", path, "--run-dir", tmp_path / "r", match="unknown field 1")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "x.png", "--classes", "a", "--short-side", "-5"], "argument --short-side: must be at least 1"),
        (["segment", "x.png", "--classes", "a", "--short-side", "0"], "argument --short-side: must be at least 1"),
        (["bench", "voc-inductive", "--size", "0"], "argument --size: must be at least 1, got 0"),
        (["bench", "voc-inductive", "--threads", "0"], "argument --threads: must be at least 1"),
        (["test", "voc-inductive", "--checkpoint", "c", "--workers", "-1"], "argument --workers: must be 0 or more"),
        (["check-data", "--workers", "x"], "argument --workers: 'x' is not a whole number"),
        (["demo", "--iters", "0"], "argument --iters: must be at least 1"),
    ],
)
def test_command_line_values_out_of_range(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(capsys, *argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bench_size_must_be_whole_patches(capsys):
    refused(capsys, "bench", "voc-inductive", "--size", "100", match="--size 100 must be a multiple of the patch size")


def test_devices_that_do_not_exist(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "x.png"
    from hostile import write_image

    write_image(image)
    segment = ["segment", image, "--classes", "a, b", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "o"]
    refused(capsys, *segment, "--device", "bogus", match="--device 'bogus' is not a device name")
    test = ["test", "voc-inductive", "--checkpoint", tiny_checkpoint, "--data-root", tmp_path]
    refused(capsys, *test, "--device", "bogus", match="is not a device name")
    if not torch.cuda.is_available():
        refused(capsys, *segment, "--device", "cuda", match="PyTorch sees no CUDA device")
        refused(capsys, "train", "voc-inductive", "--device", "cuda", match="PyTorch sees no CUDA device")
        refused(capsys, "demo", "--device", "cuda", "--smoke", match="PyTorch sees no CUDA device")
    assert not (tmp_path / "o").exists()


def test_an_embeddings_file_with_the_wrong_row_count_stops_training_before_the_model(tmp_path, capsys):
    np.save(tmp_path / "five.npy", np.ones((5, 512), dtype=np.float16))
    override = f"classes.text_embeddings={tmp_path / 'five.npy'}"
    refused(
        capsys,
        "train",
        "voc-inductive",
        override,
        "--run-dir",
        tmp_path / "run",
        "--device",
        "cpu",
        match="5 rows of class embeddings, but the configuration has 20 classes",
    )
    assert not (tmp_path / "run").exists()


def test_a_segment_option_out_of_range_is_named_as_typed(tiny_checkpoint, tmp_path, capsys):
    """--short-side sets the inference protocol's short_side; the error names the option the user gave."""
    from hostile import write_image

    image = write_image(tmp_path / "x.png")
    segment = ["segment", image, "--classes", "a, b", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "o"]
    line = refused(capsys, *segment, "--short-side", "10", match="--short-side (10) must be at least")
    assert "short_side" not in line and "--mode whole" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("root", ["2024", "[a, b]", "'quoted'", "x: y", "#x"])
def test_the_data_root_of_train_is_taken_as_typed(root, monkeypatch, tmp_path, capsys):
    """--data-root sets data.root as the text given (a folder may be named like a YAML number, list or comment)."""
    import cascadeclip.cli.train

    given = []

    def stop(cfg):
        given.append(cfg.data.root)
        raise UserError("stopped before the run")

    monkeypatch.setattr(cascadeclip.cli.train, "check_training_inputs", stop)
    refused(capsys, "train", "voc-inductive", "--data-root", root, "--run-dir", tmp_path / "r", match="stopped before")
    assert given == [root]


def test_a_problem_across_keys_names_the_keys_as_written_in_a_yaml_file(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: voc-inductive\ntest:\n  short_side: 100\nmodel:\n  head:\n    heads: 3\n")
    line = refused(capsys, "train", path, "--run-dir", tmp_path / "r", match="mine.yaml: ")
    assert "test.short_side (100) must be at least test.crop_size (512) in slide mode" in line
    assert "model.head.heads (3) must divide model.head.dim (512)" in line


def test_clip_weights_with_a_random_start_are_refused_naming_both_keys(tmp_path, capsys):
    override = ["train.init=random", "train.clip_weights=/some.pt"]
    message = "train.clip_weights (/some.pt) is not read when train.init is random: set train.init=clip"
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_config("voc-inductive", override)
    refused(capsys, "train", "voc-inductive", *override, "--run-dir", tmp_path / "run", match=message)
    assert not (tmp_path / "run").exists()


def test_clip_weights_stay_allowed_where_they_are_read_or_harmless():
    resolve_config("voc-inductive", ["train.init=random"])  # the default file, left alone: smoke tests
    resolve_config("voc-inductive", ["train.clip_weights=/some.pt"])  # read by the CLIP start
    resolve_config("voc-transductive", ["train.clip_weights=/some.pt"])  # a checkpoint start, as the world demo's


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: voc-inductive\ntrain:\n  betas: [0.9, 0.99\n  iters: 5\n")
    where = "line 4, column 8: expected ',' or ']', but got ':' (while parsing a flow sequence at line 3, column 10)"
    refused(capsys, "train", path, "--run-dir", tmp_path / "r", match=f"cannot read config file {path}: {where}")
    with pytest.raises(ValueError) as error:  # a run's saved config.yaml, read back when it is resumed
        apply_overrides(Config(), [path])
    assert str(error.value) == f"cannot read config file {path}: {where}"
