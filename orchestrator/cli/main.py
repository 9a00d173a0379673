"""The `xdpcap` command line: one `main(argv) -> int` that maps errors to exit codes."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from ...agent import __version__
from ...agent.errors import exit_status
from ..errors import UsageError
from .examples import add_examples


class _Parser(argparse.ArgumentParser):
    """Bad flags are one line naming the problem and exit 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (given the command word) just that command's part."""
    parser = _Parser(
        prog="xdpcap",
        description="Capture packets with XDP on many Linux hosts at once.",
    )
    parser.add_argument("--version", action="version", version=f"xdpcap {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    # Each command module adds its own sub-parser and sets `func`; keeping the
    # registration in the modules keeps this file free of every command's details.
    from .commands import modules_for

    for module in modules_for(command):
        module.register(sub)
    add_examples(parser)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The first word that is not an option: the command, if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)

    def command() -> int:
        args = build_parser(_command_word(words)).parse_args(words)
        return int(args.func(args))

    return exit_status(command, interrupted="interrupted")


def entry() -> None:
    code = main()
    # What is left is freed by the exit itself. Unfrozen, it is walked by the
    # interpreter's final garbage collections: a tenth of a second with paramiko and
    # rich loaded, after the work is done but before the command returns.
    gc.freeze()
    sys.exit(code)
