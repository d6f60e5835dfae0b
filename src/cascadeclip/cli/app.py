"""`cascade-clip app`: a local web page to segment images with any class names (Gradio; the `[app]` extra)."""

from __future__ import annotations

import argparse
import importlib.util
import socket
import tempfile
from pathlib import Path

from ..utils import UserError
from .segment import add_model_arguments, build_segmenter

HELP = "a web page to segment images with any class names: drop an image, type names, see and download the result"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default: %(default)s, this machine only; 0.0.0.0 serves every network interface)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    add_model_arguments(parser)


def check_address(host: str, port: int) -> None:
    """UserError unless a server can listen on host:port (checked before the model is loaded)."""
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise UserError(
            f"cannot serve on {host}:{port} ({err.strerror or err}); choose another --port or --host"
        ) from None


def run(args: argparse.Namespace) -> int:
    check_address(args.host, args.port)  # the options first, whether or not Gradio is installed
    if importlib.util.find_spec("gradio") is None:
        raise UserError("the web page needs Gradio: pip install 'cascadeclip[app]'")
    from ..app import CSS, SegmentationPage, build_app

    segmenter = build_segmenter(args)  # bad weights stop here, before anything is served
    with tempfile.TemporaryDirectory(prefix="cascadeclip-app-") as out:
        page = SegmentationPage(segmenter, args, Path(out))
        print(f"serving on http://{args.host}:{args.port} (Ctrl+C stops)")
        build_app(page).launch(server_name=args.host, server_port=args.port, css=CSS, quiet=True)
    return 0
