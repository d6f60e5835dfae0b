"""`cascade-clip app` in a real browser: the page served on 127.0.0.1 with a tiny random-weight model, driven in
headless Chromium (Debian's `chromium`) by Playwright. Opt in with `pytest -m browser` (CI runs it).

Needs the `[app]` and `[browser]` extras and /usr/bin/chromium (or $CASCADECLIP_CHROMIUM); without them the test
skips, unless $CASCADECLIP_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure.
$CASCADECLIP_APP_SCREENSHOT=FILE.png saves a picture of the page (docs/app.png is made so).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from cascadeclip.app import CSS, KEEP_PER_SESSION, SegmentationPage, build_app

from test_feature_reuse import count_calls, tiny_segmenter

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CASCADECLIP_CHROMIUM", "/usr/bin/chromium"))
# Headless, and nothing that reaches out of this machine (no update checks, sync or background requests).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000  # a shared 2-core machine; a request on the tiny model takes about a second when it is quiet


def require(what: str, present: bool) -> None:
    if present:
        return
    reason = f"{what} is missing: pip install -e '.[app,browser]' and apt-get install chromium"
    if os.environ.get("CASCADECLIP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} ($CASCADECLIP_REQUIRE_BROWSER=1 requires it)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(address of the page, its SegmentationPage), served in this process for the module's tests."""
    require("Gradio", importlib.util.find_spec("gradio") is not None)
    require("Playwright", importlib.util.find_spec("playwright") is not None)
    require(f"Chromium ({CHROMIUM})", CHROMIUM.is_file())
    folder = tmp_path_factory.mktemp("app")
    args = argparse.Namespace(random_weights=True, checkpoint=None, clip_weights=None)
    page = SegmentationPage(tiny_segmenter(folder / "cache"), args, folder / "out")
    app = build_app(page)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, css=CSS, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}", page
    finally:
        app.close()


@pytest.fixture
def browser_page(served):
    from playwright.sync_api import sync_playwright

    address, _ = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(address)
            yield tab
        finally:
            browser.close()


@pytest.fixture
def photo(tmp_path) -> Path:
    """A photo file to drop on the page: scikit-image's "chelsea.png" (a cat), copied into the test's folder."""
    path = tmp_path / "chelsea.png"
    shutil.copy(Path(skimage.data.__file__).parent / "chelsea.png", path)
    return path


def table_names(tab) -> list[str]:
    return tab.locator("#classes td.name").all_inner_texts()


def segment_names(tab, names: str) -> None:
    box = tab.locator("#names textarea")
    box.fill(names)
    box.press("Enter")


def fetch(tab, selector: str, attribute: str) -> bytes:
    """The file behind an element's link (`href`) or picture (`src`), as the browser would fetch it."""
    address = tab.locator(selector).first.get_attribute(attribute)
    response = tab.request.get(address)
    assert response.ok, address
    return response.body()


def overlay_picture(tab) -> Image.Image:
    """The overlay as the browser received it (the PNG the page shows)."""
    return Image.open(io.BytesIO(fetch(tab, "#overlay img", "src")))


def test_drop_an_image_type_names_and_change_them(browser_page, served, photo):
    tab, (_, page) = browser_page, served
    encoder_calls = count_calls(page.segmenter.model.backbone)
    tab.locator("#image input[type=file]").set_input_files(str(photo))
    segment_names(tab, "cat, rug, wall")
    tab.wait_for_function("document.querySelectorAll('#classes td.name').length == 3")
    assert sorted(table_names(tab)) == ["cat", "rug", "wall"]
    assert "names found" in tab.locator("#status").inner_text()
    first = overlay_picture(tab)
    assert first.width == 451 and first.height > 300  # the image at its size, the legend strip below
    assert all(name in first.text["Description"] for name in ("cat", "rug", "wall"))
    labels = Image.open(io.BytesIO(fetch(tab, "#labels_file a", "href")))  # the downloads
    assert labels.mode == "P" and labels.size == (451, 300)
    summary = json.loads(fetch(tab, "#summary_file a", "href"))
    assert [c["name"] for c in summary["classes"]] == ["cat", "rug", "wall"]
    encoded = len(encoder_calls)
    assert encoded >= 1

    segment_names(tab, "dog, sky")
    tab.wait_for_function("document.querySelectorAll('#classes td.name').length == 2")
    assert sorted(table_names(tab)) == ["dog", "sky"]
    second = overlay_picture(tab)
    assert "dog" in second.text["Description"] and "rug" not in second.text["Description"]
    assert len(encoder_calls) == encoded  # new names ran the head only
    if os.environ.get("CASCADECLIP_APP_SCREENSHOT"):  # 128 colours keep the picture small
        picture = Image.open(io.BytesIO(tab.screenshot(full_page=True))).convert("RGB").quantize(128)
        picture.save(os.environ["CASCADECLIP_APP_SCREENSHOT"], optimize=True)

    segment_names(tab, "cat,,dog")
    tab.locator("#status", has_text="Error").wait_for()
    assert "class name number 2 of 3 is empty" in tab.locator("#status").inner_text()
    assert tab.locator("#classes td.name").count() == 0  # the previous result is not left beside the error


def test_a_file_that_is_not_an_image_gets_a_message(browser_page, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    segment_names(browser_page, "cat")
    browser_page.locator("#status", has_text="drop an image").wait_for()  # names, no image yet
    browser_page.locator("#image input[type=file]").set_input_files(str(notes))
    browser_page.locator("#status", has_text="notes.jpg cannot be read as an image").wait_for()


def test_names_typed_while_a_request_runs_are_segmented_after_it(browser_page, served, photo, monkeypatch):
    tab, (_, page) = browser_page, served
    segment = page.segment

    def slow_segment(*args, **kwargs):
        time.sleep(2)  # long enough for the next names to arrive while this request runs
        return segment(*args, **kwargs)

    monkeypatch.setattr(page, "segment", slow_segment)
    tab.locator("#image input[type=file]").set_input_files(str(photo))
    tab.locator("#status", has_text="Error").wait_for()  # the image is in; no names yet
    segment_names(tab, "cat, first")
    segment_names(tab, "cat, second")  # while the first request runs
    tab.wait_for_function(
        "[...document.querySelectorAll('#classes td.name')].some(e => e.innerText == 'second')", timeout=30_000
    )
    assert sorted(table_names(tab)) == ["cat", "second"]


def test_a_visitor_keeps_only_their_latest_files_and_takes_them_along_when_leaving(served, photo):
    from playwright.sync_api import sync_playwright

    address, page = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            tab = browser.new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(address)
            tab.locator("#image input[type=file]").set_input_files(str(photo))
            for i in range(KEEP_PER_SESSION + 2):
                segment_names(tab, f"cat, kept {i}")
                tab.wait_for_function(
                    f"[...document.querySelectorAll('#classes td.name')].some(e => e.innerText == 'kept {i}')"
                )
            mine = folders_naming(page.out, "kept ")
            assert len(mine) == KEEP_PER_SESSION
        finally:
            browser.close()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while any(p.exists() for p in mine) and time.monotonic() < deadline:  # Gradio's unload event, once the tab is gone
        time.sleep(0.2)
    assert not any(p.exists() for p in mine)


def folders_naming(out: Path, text: str) -> set[Path]:
    """The request folders whose summaries name a class containing `text`: this test's, not the folders of other
    tests' requests that finish while it runs."""
    return {folder for folder in out.glob("request-*") if any(text in read_or_empty(f) for f in folder.glob("*.json"))}


def read_or_empty(file: Path) -> str:
    """The file's text, or "" when it was deleted since it was listed (another visitor's folder, as they leave)."""
    try:
        return file.read_text()
    except FileNotFoundError:
        return ""
