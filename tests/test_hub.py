"""Weights by name from the Hugging Face Hub, offline: `convert --hub-dir` writes the folder to publish, the tests lay
it out in a Hub cache they build under a temporary HF_HOME, and `Segmenter.from_pretrained("org/name")` and
`segment --checkpoint org/name` load it from there with HF_HUB_OFFLINE=1. No test makes a network call."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from cascadeclip import Segmenter
from cascadeclip.cli.main import main
from cascadeclip.factory import CheckpointError, load_checkpoint, save_hub_folder
from cascadeclip.model_card import AUTHORS_REPOSITORY
from cascadeclip.modeling.cascade_clip import CascadeCLIP
from cascadeclip.utils import sha256_of

from conftest import tiny_model_config

REPO = "someone/tiny-cascade"


def tiny_model(seed: int) -> CascadeCLIP:
    torch.manual_seed(seed)
    return CascadeCLIP(tiny_model_config(prompt_tokens=10, with_text=True)).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state = b.state_dict()
    return a.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in a.state_dict().items())


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, CascadeCLIP]:
    """(the folder `convert --hub-dir` wrote from an authors'-layout file, the model in that file)."""
    work = tmp_path_factory.mktemp("convert")
    model = tiny_model(seed=0)
    torch.save({"meta": {}, "state_dict": model.state_dict()}, work / "voc_inductive.pth")
    command = ["convert", str(work / "voc_inductive.pth"), "--hub-dir", str(work / "hub")]
    assert main([*command, "--preset", "voc-inductive", "--repo-id", REPO]) == 0
    return work / "hub", model


def put_in_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> Path:
    """Lay `folder` out as the Hugging Face cache holds a downloaded model: refs/main names a snapshot holding the
    files. Returns the snapshot folder."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def hub_home(tmp_path, monkeypatch, published) -> Path:
    """A temporary HF_HOME whose cache holds the published folder as REPO, offline."""
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1 before anything imports it
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))  # read once, at import
    monkeypatch.setenv("CASCADECLIP_CACHE", str(tmp_path / "cache"))
    put_in_hub_cache(home, REPO, published[0])
    return home


def test_convert_writes_weights_configuration_and_a_model_card(published, tmp_path, capsys):
    folder, model = published
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded, classes, _ = load_checkpoint(folder / "model.safetensors")
    assert same_weights(loaded, model) and classes.dataset == "voc" and len(classes.names) == 20
    config = json.loads((folder / "config.json").read_text())
    assert config["classes"]["names"] == list(classes.names) and config["info"]["preset"] == "voc-inductive"
    assert config["model_config"]["image_encoder"]["prompt_tokens"] == 10
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-nc-4.0\n") and "CC BY-NC 4.0" in card and AUTHORS_REPOSITORY in card
    assert f'Segmenter.from_pretrained("{REPO}")' in card and f"--checkpoint {REPO}" in card
    assert "aeroplane" in card and "pottedplant *(unseen)*" in card and "voc_inductive.pth" in card

    capsys.readouterr()
    source = tmp_path / "again.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict()}, source)
    assert main(["convert", str(source), "--hub-dir", str(folder), "--preset", "voc-inductive"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err  # nothing published is overwritten
    assert main(["convert", str(source)]) == 2
    assert "--hub-dir" in capsys.readouterr().err


def test_from_pretrained_by_name_loads_from_the_hub_cache(hub_home, published):
    segmenter = Segmenter.from_pretrained(REPO, device="cpu")
    assert same_weights(segmenter.model, published[1])
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    assert segmenter.predict(image, ["cat", "dog"]).labels.shape == (48, 80)


def test_a_local_path_wins_over_a_hub_name(hub_home, tmp_path, monkeypatch):
    local = tiny_model(seed=1)
    save_hub_folder(tmp_path / REPO, local, None, source="test")
    monkeypatch.chdir(tmp_path)
    assert same_weights(Segmenter.from_pretrained(REPO, device="cpu").model, local)


def test_a_name_that_is_neither_local_nor_cached_fails_clearly_offline(hub_home, tmp_path, capsys):
    with pytest.raises(CheckpointError, match=r"someone/absent is neither a local file nor in the Hugging Face cache"):
        Segmenter.from_pretrained("someone/absent", device="cpu")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    args = ["segment", str(image), "--classes", "cat", "--checkpoint", "someone/absent", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE=1" in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_segment_command_takes_a_hub_name(published, tmp_path):
    """In a new process, as a user runs it: HF_HOME and HF_HUB_OFFLINE are read when huggingface_hub loads."""
    home = tmp_path / "hf_home"
    snapshot = put_in_hub_cache(home, REPO, published[0])
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(image)
    env = os.environ | {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "CASCADECLIP_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "cascadeclip", "segment", str(image), "--classes", "cat, rug"]
    command += ["--checkpoint", REPO, "--device", "cpu", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "photo.json").read_text())
    # The outputs record the weights by content: the file the name resolved to in the hub cache.
    assert summary["settings"]["checkpoint"]["sha256"] == sha256_of(snapshot / "model.safetensors")
