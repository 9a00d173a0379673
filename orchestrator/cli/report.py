"""The `xdpcap report` sub-command: a run's (or a merge's) tables on the terminal, and
its report.html written again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from ..report.load import load
from ..report.page import write_page
from ..report.tables import tables


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="print a run's tables and write its report.html",
        description="Print per-host accounting, the clock alignment and per host pair what "
        "left, arrived and was lost (and how long it took), and write report.html into the "
        "run folder (for a merge's OUTPUT.json: OUTPUT.html beside it).",
    )
    parser.add_argument(
        "source", type=Path, metavar="RUN_FOLDER", help="a run folder, or the .json of a merge"
    )
    parser.add_argument("--no-page", action="store_true", help="print the tables only")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    source = load(args.source)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or a file: whole rows, for grep
    for table in tables(source.data):
        console.print(table)
    if not args.no_page:
        try:
            path = write_page(source.data, source.page_path, source.title)
        except ImportError:
            print("xdpcap report: plotly is not installed: no report.html", file=sys.stderr)
            return 1
        print(f"xdpcap report: {path}", file=sys.stderr)
    return 0
