"""Training run folders: the user's files in them are never overwritten or deleted; resuming survives a cut-short
log line and a damaged newest checkpoint; --resume needs a run; one run per folder at a time."""

from __future__ import annotations

import json

import pytest
import torch

from cascadeclip.config import save_yaml
from cascadeclip.engine.run_directory import RunDirectory
from cascadeclip.engine.trainer import train
from cascadeclip.manifest import MANIFEST_NAME
from cascadeclip.utils import UserError

from hostile import cli, refused
from test_train import tiny_config


@pytest.fixture
def config_file(tmp_path):
    """A tiny 6-iteration run (checkpoints at 2, 4, 6) as a YAML file for the command line."""
    cfg = tiny_config(tmp_path, iters=6, checkpoint_interval=2, keep_checkpoints=0)
    save_yaml(cfg, tmp_path / "tiny.yaml")
    return tmp_path / "tiny.yaml"


def test_a_users_config_yaml_in_the_run_folder_is_never_overwritten(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("my own notes\n")
    refused(capsys, "train", config_file, "--run-dir", run, match="not written by cascade-clip (config.yaml)")
    refused(capsys, "train", config_file, "--run-dir", run, "--force", match="(config.yaml)")
    assert (run / "config.yaml").read_text() == "my own notes\n"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["config.yaml"]  # no run file


def test_force_deletes_only_what_the_run_wrote(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", config_file, "--run-dir", run)[0] == 0
    (run / "iter_notes.txt").write_text("mine")
    (run / "iter_99.safetensors").write_text("mine too")  # named like a checkpoint, not one of this run's
    assert cli(capsys, "train", config_file, "--run-dir", run, "--force")[0] == 0
    assert (run / "iter_notes.txt").read_text() == "mine" and (run / "iter_99.safetensors").read_text() == "mine too"
    assert (run / "iter_6.safetensors").is_file()
    assert "iter_99.safetensors" not in json.loads((run / MANIFEST_NAME).read_text())["files"]


def test_resume_needs_a_run(config_file, tmp_path, capsys):
    refused(capsys, "train", config_file, "--run-dir", tmp_path / "typo", "--resume", match="holds no run to resume")
    (tmp_path / "empty").mkdir()
    refused(capsys, "train", config_file, "--run-dir", tmp_path / "empty", "--resume", match="holds no run")
    assert not (tmp_path / "typo").exists()


def test_resume_after_a_cut_short_log_line(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", config_file, "--run-dir", run, "train.iters=4")[0] == 0
    with open(run / "log.jsonl", "a") as log:
        log.write('{"iter": 5, "loss": 0.3, "lo')  # a crash while appending
    code, _, err = cli(capsys, "train", config_file, "--run-dir", run, "--resume")
    assert code == 0 and "dropped 1 unreadable line(s)" in err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_resume_passes_over_a_damaged_newest_checkpoint(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", config_file, "--run-dir", run, "train.iters=4")[0] == 0
    state = run / "iter_4.state.pt"
    state.write_bytes(state.read_bytes()[:100])
    code, out, err = cli(capsys, "train", config_file, "--run-dir", run, "--resume")
    assert code == 0 and "resuming from iteration 2 instead" in err and "iter_4" in err
    assert "finished 6 iterations" in out and (run / "iter_6.safetensors").is_file()

    for name in ("iter_2.state.pt", "iter_4.state.pt", "iter_6.state.pt"):
        (run / name).write_bytes(b"")
    refused(capsys, "train", config_file, "--run-dir", run, "--resume", match="no complete checkpoint to resume from")


def test_a_second_run_in_the_same_folder_at_the_same_time_is_refused(config_file, tmp_path, capsys):
    run = RunDirectory(tmp_path / "run")
    with run.exclusive():
        refused(capsys, "train", config_file, "--run-dir", run.path, match="another run is writing into")
    assert cli(capsys, "train", config_file, "--run-dir", run.path)[0] == 0  # free again


def test_a_run_folder_written_before_manifests_is_still_a_run(tmp_path):
    cfg = tiny_config(tmp_path, iters=2, checkpoint_interval=2)
    train(cfg, tmp_path / "run", progress=False)
    (tmp_path / "run" / MANIFEST_NAME).unlink()
    with pytest.raises(UserError, match="already holds a finished run"):
        train(cfg, tmp_path / "run", progress=False)
    train(cfg, tmp_path / "run", force=True, progress=False)
    assert (tmp_path / "run" / "iter_2.safetensors").is_file()


def test_resume_refuses_settings_that_change_what_the_run_computes(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", config_file, "--run-dir", run, "train.iters=2")[0] == 0
    recorded = (run / "config.yaml").read_text()
    for override, key in (
        ("model.head.layers=1", "model.head.layers 3 in the run, 1 now"),
        ("train.lr=0.5", "train.lr"),
    ):
        refused(capsys, "train", config_file, "--run-dir", run, "--resume", override, match=key)
        assert (run / "config.yaml").read_text() == recorded  # the run's record stands
    # Where the data is read from, how the run is logged, and its length may change.
    code, out, _ = cli(
        capsys, "train", config_file, "--run-dir", run, "--resume", "data.num_workers=0", "train.log_interval=3"
    )
    assert code == 0 and "finished 6 iterations" in out


def test_a_huge_iteration_count_is_planned_without_listing_its_checkpoints(tmp_path):
    from cascadeclip.distributed import DistInfo
    from cascadeclip.engine.trainer import prepare_run

    cfg = tiny_config(tmp_path, iters=10**18, checkpoint_interval=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "iter_4.safetensors").write_text("mine")  # a planned checkpoint's name, the user's file
    (tmp_path / "run" / "iter_5.safetensors").write_text("mine too")  # not one the run writes
    with pytest.raises(UserError, match=r"not written by cascade-clip \(iter_4.safetensors\)"):
        prepare_run(cfg, tmp_path / "run", resume=False, force=False, dist_info=DistInfo(0, 1, 0, torch.device("cpu")))


def test_resuming_a_finished_run_says_so_and_a_shorter_one_is_refused(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", config_file, "--run-dir", run)[0] == 0
    code, out, _ = cli(capsys, "train", config_file, "--run-dir", run, "--resume")
    assert code == 0 and "had already finished its 6 iterations; nothing to do" in out and "nan" not in out
    refused(capsys, "train", config_file, "--run-dir", run, "--resume", "train.iters=4", match="at iteration 6, beyond")
