"""A web page to segment an image with any class names (`cascade-clip app`; needs the `[app]` extra, Gradio).

One drops an image, types class names and sees the overlay with its legend, each name's share of the image and its
scores; a slider sets the background threshold, a switch the inference mode (sliding windows or the whole image),
and the label PNG and JSON summary can be downloaded. They are the files of `cascade-clip segment`, written by its
own writer.

The image is encoded once (`Segmenter.set_image`): new names or a new threshold run only the head. One model serves
every visitor, one request at a time; when a visitor's image is not the one the model holds, it is encoded again.

Each request writes its files into a folder of its own under the page's temporary folder. Gradio serves copies of
them from its own cache, so a request's folder is needed only while it is answered: the page keeps the folders of
each visitor's (session's) latest `KEEP_PER_SESSION` requests, of the `MAX_SESSIONS` visitors heard from last, and
deletes a visitor's folders when they leave (Gradio's unload event). A server that runs for weeks holds at most
KEEP_PER_SESSION x MAX_SESSIONS request folders.

`SegmentationPage` does the work and knows nothing of Gradio, so that it can be tested directly; `build_app` lays
it out as a Gradio page.
"""

from __future__ import annotations

import argparse
import html
import shutil
import tempfile
import threading
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli.segment import PROTOCOL_OPTIONS, file_identity, output_paths, output_settings, write_outputs
from .config import ConfigError
from .data.images import load_image
from .segmenter import BACKGROUND_NAME, Prediction, Segmenter, check_class_names, parse_class_names
from .utils import UserError
from .visualize import palette

MODES = {"sliding windows (as the authors evaluate)": "slide", "whole image, one pass": "whole"}
# A visitor's latest requests whose files are kept: more than one, so that a request still being answered (a slider
# released while names were submitted) keeps its files until Gradio has copied them.
KEEP_PER_SESSION = 3
MAX_SESSIONS = 100  # visitors whose files are kept; the one heard from longest ago loses its files first


@dataclass
class PageResult:
    """What the page shows after a request; all None but `status` when the request failed."""

    status: str  # one line of HTML: what was done, or what was wrong and what to do
    overlay: Path | None = None  # the segment command's overlay picture (image, outlines, names, legend strip)
    table: str | None = None  # HTML: each name's colour, share, mean and highest score
    labels: Path | None = None  # the label PNG (palette; pixel value = index of the name, 255 = background)
    summary: Path | None = None  # the JSON summary


class SegmentationPage:
    """The page's work: encode the current image when it changes, segment it into the names, write the files.

    Args:
        segmenter: the model; its `mode` is switched by the page.
        args: the command line (weights and their paths, recorded in the JSON as `cascade-clip segment` does).
        out: folder for the files offered for download (a fresh subfolder per request; the page deletes the
            subfolders it made, see the module's docstring, and nothing else).
    """

    def __init__(self, segmenter: Segmenter, args: argparse.Namespace, out: Path):
        self.segmenter = segmenter
        self.args = args
        self.out = Path(out)
        self.random_weights = bool(args.random_weights)
        self._lock = threading.Lock()  # one model, one image held: requests take turns
        self._encoded_key: tuple[str, str] | None = None  # (image file, mode) the segmenter holds
        # The request folders kept, per session, oldest first; the session heard from longest ago first.
        self._folders: OrderedDict[str, deque[Path]] = OrderedDict()

    def segment(
        self, image_file: str | None, names_text: str, threshold: float, mode: str, session: str = ""
    ) -> PageResult:
        """Segment the image file into the comma-separated names; `threshold` 0 means no background. `session`
        tells visitors apart (Gradio's session hash), so that each keeps the files of its latest requests."""
        try:
            if not image_file:
                raise UserError("drop an image on the left, or click there to choose one")
            names_text = (names_text or "").strip()
            names = check_class_names(parse_class_names(names_text) if names_text else [])
            background = float(threshold) if threshold and threshold > 0 else None
            if background is not None and BACKGROUND_NAME in (n.casefold() for n in names):
                raise UserError(f"a class is named {BACKGROUND_NAME!r} and the background threshold is set; drop one")
            if mode not in MODES.values():
                raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES.values())}")
            with self._lock:
                self._encode(image_file, mode)
                prediction = self.segmenter.predict(names, background=background, scores=False)
                return self._write(Path(image_file), prediction, background, session)
        except UserError as err:
            return PageResult(status=f"<b>Error:</b> {html.escape(str(err), quote=False)}")
        except Exception as err:  # shown in one line; the traceback goes to the server's log only
            traceback.print_exc()
            return PageResult(status=f"<b>Error:</b> {type(err).__name__}: {html.escape(str(err), quote=False)}")

    def _encode(self, image_file: str, mode: str) -> None:
        """Run the image encoder unless the segmenter already holds this image in this mode."""
        key = (str(image_file), mode)
        if key == self._encoded_key:
            return
        try:
            image = load_image(image_file)
        except UserError:
            raise UserError(
                f"{Path(image_file).name} cannot be read as an image; drop a JPEG, PNG, WebP, BMP, GIF or TIFF file"
            ) from None
        self._encoded_key = None
        try:
            self.segmenter.mode = mode
        except ConfigError as err:  # e.g. a --short-side given for whole images, too small for windows
            raise err.renamed(PROTOCOL_OPTIONS | {"mode": "the inference mode"}) from None
        self.segmenter.set_image(image)
        self._encoded_key = key

    def end_session(self, session: str) -> None:
        """Delete the files of a visitor who left (Gradio's unload event: the page was closed or reloaded)."""
        with self._lock:
            for folder in self._folders.pop(session, ()):
                shutil.rmtree(folder, ignore_errors=True)

    def _new_folder(self, session: str) -> Path:
        """A fresh folder for a request of `session`; the folders beyond the latest KEEP_PER_SESSION of the session,
        and those of sessions beyond the MAX_SESSIONS heard from last, are deleted."""
        self.out.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="request-", dir=self.out))
        kept = self._folders.pop(session, deque())
        kept.append(folder)
        self._folders[session] = kept  # heard from last
        stale = [kept.popleft() for _ in range(len(kept) - KEEP_PER_SESSION)]
        while len(self._folders) > MAX_SESSIONS:
            stale += self._folders.popitem(last=False)[1]
        for old in stale:  # only folders made here, by mkdtemp inside `out`
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def _write(self, image_file: Path, prediction: Prediction, background: float | None, session: str) -> PageResult:
        """The segment command's files for this request, in a folder of its own, and the page's table."""
        folder = self._new_folder(session)
        paths = output_paths(folder, image_file, with_scores=False)
        settings = output_settings(self.args, self.segmenter, prediction.names, background, scores=False)
        colors = palette(len(prediction.names))
        write_outputs(image_file, self.segmenter.image, prediction, paths, colors, settings, file_identity(image_file))
        found = int((prediction.pixel_share > 0).sum())
        status = f"{found} of {len(prediction.names)} names found."
        if self.random_weights:
            status += " RANDOM WEIGHTS: the labels are noise."
        table = class_table(prediction, colors, background)
        return PageResult(status, paths["overlay"], table, paths["labels"], paths["summary"])


def class_table(prediction: Prediction, colors: np.ndarray, background: float | None) -> str:
    """An HTML table of the names, largest share first: colour, name, share of the image, mean score over its
    pixels, highest score anywhere; then the background's share when a threshold was set."""
    order = sorted(range(len(prediction.names)), key=lambda i: -prediction.pixel_share[i])
    rows = [
        "<tr><td><span class='swatch' style='background:#{:02x}{:02x}{:02x}'></span></td>".format(*colors[i])
        + f"<td class='name'>{html.escape(prediction.names[i])}</td>"
        + f"<td>{100 * prediction.pixel_share[i]:.1f}%</td>"
        + f"<td>{prediction.mean_score[i]:.3f}</td><td>{prediction.max_score[i]:.3f}</td></tr>"
        for i in order
    ]
    if background is not None:
        rows.append(
            "<tr><td><span class='swatch'></span></td>"
            + f"<td class='name'>{BACKGROUND_NAME} (no name &ge; {background:.2f})</td>"
            + f"<td>{100 * prediction.background_share:.1f}%</td><td></td><td></td></tr>"
        )
    header = "<tr><th></th><th>name</th><th>share</th><th>mean score</th><th>highest score</th></tr>"
    return f"<table class='classes'>{header}{''.join(rows)}</table>"


def _undecoded(preprocess):
    """An image input's preprocessing that hands over the uploaded file's path without decoding it, so that a file
    that is not an image gets this page's message (from `load_image`) instead of Gradio's bare "Error". (Set on the
    instance: a subclass of a Gradio component makes Gradio write a .pyi file beside this module.)"""

    def path_of(payload):
        if payload is None or payload.path is None:  # nothing, or pasted data: Gradio's own handling
            return preprocess(payload)
        return payload.path

    return path_of


CSS = """
#classes .swatch {display: inline-block; width: 1em; height: 1em; border: 1px solid #000; vertical-align: middle}
#classes table {border-collapse: collapse} #classes td, #classes th {padding: 2px 10px; text-align: left}
"""


def build_app(page: SegmentationPage):
    """The Gradio page (`gradio.Blocks`) around `page`: image and names on the left, the result on the right.
    Launch it with `css=CSS`."""
    import gradio as gr

    title = "Cascade-CLIP: segment an image with any class names"
    with gr.Blocks(title=title, analytics_enabled=False) as app:  # no usage reports sent anywhere
        gr.Markdown(f"## {title}")
        if page.random_weights:
            gr.Markdown("**RANDOM WEIGHTS** (`--random-weights`): the segmentations are meaningless.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath",
                    sources=["upload", "clipboard"],
                    label="Image (drop or click)",
                    elem_id="image",
                    height=360,
                )
                image.preprocess = _undecoded(image.preprocess)
                names = gr.Textbox(
                    label="Class names, separated by commas (Enter to segment)",
                    placeholder="cat, sofa, floor, window",
                    elem_id="names",
                )
                threshold = gr.Slider(
                    0, 0.95, value=0, step=0.01, label="Background threshold (0 = off)", elem_id="threshold"
                )
                mode = gr.Radio(list(MODES.items()), value="slide", label="Inference", elem_id="mode")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                status = gr.HTML("Drop an image and type class names.", elem_id="status")
                overlay = gr.Image(type="filepath", label="Segmentation", elem_id="overlay", interactive=False)
                table = gr.HTML(elem_id="classes")
                with gr.Row():
                    labels = gr.File(label="Label PNG", elem_id="labels_file")
                    summary = gr.File(label="JSON summary", elem_id="summary_file")

        def run(image_file, names_text, threshold_value, mode_value, request):
            result = page.segment(image_file, names_text, threshold_value, mode_value, request.session_hash)
            files = (str(p) if p is not None else None for p in (result.overlay, result.labels, result.summary))
            overlay_file, labels_file, summary_file = files
            return result.status, overlay_file, result.table, labels_file, summary_file

        def leave(request):
            page.end_session(request.session_hash)

        # Gradio hands the request (and its session) to a parameter annotated gr.Request. It reads the annotation
        # as an object; this module's annotations are strings (gradio is imported in this function only).
        run.__annotations__ = leave.__annotations__ = {"request": gr.Request}
        inputs, outputs = [image, names, threshold, mode], [status, overlay, table, labels, summary]
        # "always_last": a request made while another is running runs after it, with the latest inputs (Gradio's
        # default for a submit or click ignores it, so names typed meanwhile would be lost).
        for event in (image.change, names.submit, button.click, threshold.release, mode.change):
            event(run, inputs, outputs, trigger_mode="always_last")
        app.unload(leave)
    return app
