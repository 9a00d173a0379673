"""The `xdpcap` command line: one `main(argv) -> int` that maps errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..agent import __version__
from .errors import XdpcapError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdpcap",
        description="Capture packets with XDP on many Linux hosts at once.",
    )
    parser.add_argument("--version", action="version", version=f"xdpcap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each command module adds its own sub-parser and sets `func`; keeping the
    # registration in the modules keeps this file free of every command's details.
    for module in _command_modules():
        module.register(sub)
    return parser


def _command_modules() -> list:
    from . import commands

    return commands.MODULES


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except XdpcapError as exc:
        print(f"xdpcap: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("xdpcap: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
