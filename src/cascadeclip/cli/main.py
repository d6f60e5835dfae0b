"""`cascade-clip`: one entry point, one module per subcommand.

Each subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.

Every failure is one line on stderr, never a traceback (unless asked for), and a non-zero exit status:
- 2: bad input (`UserError`: a file, an option, a configuration; the line says which and what to do), and bad
  command-line syntax (argparse);
- 3: anything else (an unexpected error: a bug, or a fault of the machine); the line says how to see the traceback:
  `--debug` (before or after the command name) or the environment variable CASCADECLIP_DEBUG=1;
- 130: interrupted (Ctrl-C).
A command may also exit with 1 for "ran, but found problems" (`test --skip-bad`, `check-data`). Warnings are printed
as one line each, prefixed like errors.

The command tunes the memory allocation of its own process (a library leaves this to its caller): PyTorch's
transparent huge pages for CPU tensors of 2 MB and more (`THP_MEM_ALLOC_ENABLE=1`, unless the user set it), and
glibc keeps freed memory for reuse (`inference.fast_path.keep_freed_memory`). Large activations are otherwise
faulted in page by page on every forward (measured effect: benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings

from ..utils import UserError

# command name -> module in cascadeclip.cli
SUBCOMMANDS = {
    "demo": "demo",
    "segment": "segment",
    "app": "app",
    "train": "train",
    "test": "test",
    "check-data": "check_data",
    "bench": "bench",
    "convert": "convert",
    "export": "export",
}
USER_ERROR_STATUS = 2
UNEXPECTED_ERROR_STATUS = 3
INTERRUPTED_STATUS = 130
DEBUG_ENV = "CASCADECLIP_DEBUG"
DEBUG_HELP = f"show the traceback of an error (also: {DEBUG_ENV}=1)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade-clip", description="Cascade-CLIP zero-shot semantic segmentation")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"cascadeclip.cli.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        # SUPPRESS: an absent --debug after the command must not reset one given before it.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        command.set_defaults(run=module.run)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; `section.field=value` overrides may also follow the options of a command that takes them.

    (argparse alone stops filling a positional list once an option has come between its items.)
    """
    args, extra = parser.parse_known_args(argv)
    if isinstance(getattr(args, "overrides", None), list):
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if e not in args.overrides]
        if extra and all("." in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)} (an override is section.field=value)")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    # PyTorch reads this once, when it loads: before anything imports it. The user's setting wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from ..inference.fast_path import keep_freed_memory

    keep_freed_memory()
    args = parse_arguments(build_parser(), argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    prefix = f"cascade-clip {args.command}"
    with warnings.catch_warnings():  # the previous warning display comes back when the command returns
        warnings.showwarning = lambda message, category, *_: print(f"{prefix}: warning: {message}", file=sys.stderr)
        try:
            return args.run(args)
        except UserError as err:
            _report(prefix, one_line(str(err)), debug)
            return USER_ERROR_STATUS
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return INTERRUPTED_STATUS
        except Exception as err:  # the one place that turns any failure into a line and an exit status
            _report(prefix, describe_unexpected(err), debug)
            return UNEXPECTED_ERROR_STATUS


def describe_unexpected(err: BaseException) -> str:
    """One line for an error that is not a `UserError`: what it is, and how to see more."""
    if _out_of_memory(err):
        what = (
            "out of memory; try smaller sizes (--short-side, bench --size, batch_size), fewer classes, "
            "or another --device"
        )
    elif isinstance(err, OSError) and err.strerror:
        what = f"{err.strerror}" + (f": {err.filename}" if err.filename else "")
    else:
        what = f"unexpected {type(err).__name__}: {one_line(str(err)) or '(no message)'}"
    return f"{what} (run again with --debug, or {DEBUG_ENV}=1, to see the traceback)"


def _out_of_memory(err: BaseException) -> bool:
    # PyTorch's CPU allocator raises a RuntimeError, not MemoryError, when an allocation fails.
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or (isinstance(err, RuntimeError) and "can't allocate memory" in str(err))
    )


def one_line(text: str, limit: int = 500) -> str:
    """The first non-empty line of `text`, at most `limit` characters."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _report(prefix: str, message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"{prefix}: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
