"""The `xdpcap merge` sub-command: merge capture files into one time-ordered pcapng.

Also runnable on its own (`python -m xdpcap.orchestrator.merge_cli IN... -w OUT`), which
the benchmark uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import MergeError, UsageError, XdpcapError
from .merge import MergeSource, merge_captures


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge pcapng/pcap files into one time-ordered pcapng",
        description="Merge pcapng and classic pcap files into one pcapng ordered by time, "
        "one interface per source interface.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=handler)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN", help="pcapng or pcap files")
    parser.add_argument("-w", dest="output", required=True, metavar="OUT", help="output pcapng")
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="FILE=NAME",
        help="interface name for FILE's packets (classic pcap files have none of their own)",
    )
    parser.add_argument(
        "--no-clock-correction",
        dest="clock_correction",
        action="store_false",
        help="keep timestamps as captured (offsets are still recorded)",
    )


def _names(pairs: Sequence[str], inputs: Sequence[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for pair in pairs:
        path, sep, name = pair.rpartition("=")
        if not sep or not path or not name:
            raise UsageError(f"--name wants FILE=NAME, got {pair!r}")
        if path not in inputs:
            raise UsageError(f"--name {pair!r}: {path} is not one of the inputs")
        names[path] = name
    return names


def handler(args: argparse.Namespace) -> int:
    names = _names(args.name, args.inputs)
    sources = [MergeSource(path, name=names.get(path)) for path in args.inputs]
    try:
        report = merge_captures(sources, args.output, clock_correction=args.clock_correction)
    except MergeError:
        print("xdpcap merge: nothing merged", file=sys.stderr)
        raise
    for warning in report.warnings:
        print(f"xdpcap merge: warning: {warning}", file=sys.stderr)
    print(
        f"xdpcap merge: {report.packets} packets from {len(sources)} inputs, "
        f"{len(report.interfaces)} interfaces -> {report.out_path}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point with the same error mapping as `xdpcap`'s main."""
    parser = argparse.ArgumentParser(prog="xdpcap merge")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return handler(args)
    except XdpcapError as exc:
        print(f"xdpcap: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
