"""The web page's work without a browser (`app.SegmentationPage`): what it shows, the files it offers, that new names
or a new threshold do not run the image encoder again, and errors as one line on the page (tiny random model, CPU).
The page in a real browser: tests/test_app_browser.py."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

import cascadeclip.app
from cascadeclip.app import KEEP_PER_SESSION, SegmentationPage, build_app
from cascadeclip.cli.main import main
from cascadeclip.segmenter import MAX_CLASSES

from test_feature_reuse import count_calls, tiny_segmenter


@pytest.fixture
def page(tmp_path) -> SegmentationPage:
    args = argparse.Namespace(random_weights=True, checkpoint=None, clip_weights=None)
    # one window per encoder call, so that the calls count the windows
    return SegmentationPage(tiny_segmenter(tmp_path / "cache", window_batch=1), args, tmp_path / "out")


@pytest.fixture
def photo(tmp_path) -> str:
    path = tmp_path / "upload" / "chelsea.png"  # what the page receives: the path of the uploaded file
    path.parent.mkdir()
    shutil.copy(Path(skimage.data.__file__).parent / "chelsea.png", path)
    return str(path)


def test_the_page_shows_the_segment_commands_files_and_a_table_of_the_names(page, photo):
    result = page.segment(photo, "cat, rug , wall", 0, "slide")
    assert " of 3 names found" in result.status
    assert "RANDOM WEIGHTS" in result.status
    overlay = Image.open(result.overlay)
    assert overlay.width == 451 and overlay.height > 300  # the image, the legend strip below it
    assert all(name in overlay.text["Description"] for name in ("cat", "rug", "wall"))
    labels = np.array(Image.open(result.labels))
    summary = json.loads(Path(result.summary).read_text())
    assert labels.shape == (300, 451) and set(np.unique(labels)) <= {0, 1, 2}
    assert [c["name"] for c in summary["classes"]] == ["cat", "rug", "wall"]
    assert summary["settings"]["checkpoint"] == "random" and summary["background"] is None
    for c in summary["classes"]:  # the table shows the JSON's share of each name
        assert c["name"] in result.table and f"{100 * c['pixel_share']:.1f}%" in result.table


def test_new_names_and_thresholds_run_only_the_head_and_a_new_mode_or_image_the_encoder(page, photo, tmp_path):
    encoder_calls = count_calls(page.segmenter.model.backbone)
    page.segment(photo, "cat, rug", 0, "slide")
    windows = len(encoder_calls)  # 451x300 at the tiny model's 64-pixel short side: two windows
    assert windows == 2
    first = page.segment(photo, "cat, rug, wall", 0, "slide")
    with_background = page.segment(photo, "cat, rug, wall", 0.9, "slide")  # random weights: nothing reaches 0.9
    assert len(encoder_calls) == windows
    assert (np.array(Image.open(with_background.labels)) == 255).all() and "background" in with_background.table
    assert not (np.array(Image.open(first.labels)) == 255).any()
    page.segment(photo, "cat, rug, wall", 0, "whole")
    assert len(encoder_calls) == windows + 1  # the whole image in one pass
    other = tmp_path / "other.png"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    page.segment(str(other), "cat", 0, "whole")
    assert len(encoder_calls) == windows + 2


@pytest.mark.parametrize(
    "image, names, threshold, message",
    [
        (None, "cat", 0, "drop an image"),
        ("photo", "", 0, "no class names given"),
        ("photo", "cat,,dog", 0, "class name number 2 of 3 is empty"),
        ("photo", ", ".join(f"thing {i}" for i in range(MAX_CLASSES + 1)), 0, "at most 255"),
        ("photo", "cat, background", 0.5, "named 'background'"),
        ("not an image", "cat", 0, "notes.png cannot be read as an image"),
    ],
)
def test_errors_are_one_line_on_the_page(page, photo, tmp_path, image, names, threshold, message):
    if image == "not an image":
        image = tmp_path / "notes.png"
        image.write_text("shopping list")
    elif image == "photo":
        image = photo
    result = page.segment(image, names, threshold, "slide")
    assert result.status.startswith("<b>Error:</b>") and message in result.status and "\n" not in result.status
    assert result.overlay is result.labels is result.summary is result.table is None
    assert page.segment(photo, "cat", 0, "slide").overlay is not None  # the page still works afterwards


def test_a_mode_the_launch_options_do_not_allow_is_an_error_in_their_names(tmp_path, photo):
    args = argparse.Namespace(random_weights=True, checkpoint=None, clip_weights=None)
    # launched as `cascade-clip app --mode whole --short-side 32`: too small for the tiny model's 64-pixel windows
    segmenter = tiny_segmenter(tmp_path / "cache", mode="whole", short_side=32)
    page = SegmentationPage(segmenter, args, tmp_path / "out")
    result = page.segment(photo, "cat", 0, "slide")
    assert result.status.startswith("<b>Error:</b> --short-side (32) must be at least the window size (64)")
    assert "the inference mode whole" in result.status and "short_side" not in result.status
    assert page.segment(photo, "cat", 0, "whole").overlay is not None  # whole images still work


def request_folders(page: SegmentationPage) -> set[Path]:
    return {p for p in page.out.iterdir() if p.is_dir()}


def test_each_visitor_keeps_the_files_of_their_latest_requests_only(page, photo, tmp_path):
    """A long-running server does not pile up a folder per request: the latest few per session stay, a visitor who
    leaves takes theirs along, and nothing else is deleted."""
    beside = tmp_path / "beside.txt"  # a file next to the page's folder, and the upload: never touched
    beside.write_text("keep")
    first = page.segment(photo, "cat, rug", 0, "slide", session="a")
    later = [page.segment(photo, f"cat, thing {i}", 0, "slide", session="a") for i in range(KEEP_PER_SESSION + 1)]
    other = page.segment(photo, "dog", 0, "slide", session="b")
    kept = later[-KEEP_PER_SESSION:]
    assert request_folders(page) == {r.labels.parent for r in [*kept, other]}
    assert not first.labels.parent.exists() and not later[0].summary.exists()
    assert all(r.overlay.is_file() and r.labels.is_file() and r.summary.is_file() for r in [*kept, other])
    page.segment(photo, "cat", 0, "slide")  # without a session (a direct call): bounded all the same
    assert len(request_folders(page)) == KEEP_PER_SESSION + 2

    page.end_session("a")
    assert {r.labels.parent for r in kept}.isdisjoint(request_folders(page))
    assert other.summary.is_file() and len(request_folders(page)) == 2
    page.end_session("nobody")  # a visitor who never asked for anything
    assert Path(photo).is_file() and beside.read_text() == "keep"


def test_the_visitors_heard_from_longest_ago_lose_their_files_first(page, photo, monkeypatch):
    monkeypatch.setattr(cascadeclip.app, "MAX_SESSIONS", 2)
    results = {session: page.segment(photo, "cat", 0, "slide", session=session) for session in "abc"}
    assert request_folders(page) == {results["b"].labels.parent, results["c"].labels.parent}


def test_the_gradio_page_tells_the_requests_session_and_its_end(page, photo):
    gr = pytest.importorskip("gradio")
    from gradio.utils import get_type_hints, is_special_typed_parameter

    app = build_app(page)
    handlers = list(app.fns.values())
    assert all(is_special_typed_parameter("request", get_type_hints(h.fn)) for h in handlers)  # Gradio fills it in
    leave = [h.fn for h in handlers if any(target[1] == "unload" for target in h.targets)]
    segment = [h.fn for h in handlers if h.fn not in leave]
    assert len(leave) == 1 and len(segment) == 5
    visitor = gr.Request(session_hash="visitor")
    status, overlay, *_ = segment[0](photo, "cat, rug", 0, "slide", visitor)
    assert "names found" in status and Path(overlay).parent in request_folders(page)
    leave[0](visitor)
    assert not Path(overlay).exists() and request_folders(page) == set()


def test_the_command_refuses_a_port_in_use_before_loading_anything(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["app", "--random-weights", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "Traceback" not in err and "RANDOM" not in err


def test_a_host_that_does_not_resolve_is_named_with_the_resolvers_reason(capsys, monkeypatch):
    def unresolved(address):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_server", unresolved)  # no name service is asked: the machine may have none
    assert main(["app", "--random-weights", "--host", "nosuchhost.invalid"]) == 2
    err = capsys.readouterr().err
    assert "cannot serve on nosuchhost.invalid:7860 (Name or service not known)" in err and "Unknown error" not in err
