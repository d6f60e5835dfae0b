"""`cascade-clip`: one entry point, one module per subcommand.

Each subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`. Bad input raises
`UserError`; it is printed as one line, without a traceback, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..utils import UserError

# command name -> module in cascadeclip.cli
SUBCOMMANDS = {
    "demo": "demo",
    "segment": "segment",
    "train": "train",
    "test": "test",
    "check-data": "check_data",
    "bench": "bench",
    "convert": "convert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade-clip", description="Cascade-CLIP zero-shot semantic segmentation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"cascadeclip.cli.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; `section.field=value` overrides may also follow the options of a command that takes them.

    (argparse alone stops filling a positional list once an option has come between its items.)
    """
    args, extra = parser.parse_known_args(argv)
    if (
        extra
        and isinstance(getattr(args, "overrides", None), list)
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    # Transparent huge pages for PyTorch's CPU tensors of 2 MB and more (read once, when PyTorch loads; the user's
    # setting wins). Each large activation is otherwise faulted in 4 kB at a time, which made the full-resolution
    # upsampling several times slower (benchmarks/NOTES.md, Transparent huge pages in the command line).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = parse_arguments(build_parser(), argv)
    try:
        return args.run(args)
    except UserError as err:
        print(f"cascade-clip {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cascade-clip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
