"""The `xdpcap merge` sub-command: merge capture files into one time-ordered pcapng.

Also runnable on its own (`python -m xdpcap.orchestrator.cli.merge IN... -w OUT`), which
the benchmark uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ...agent.errors import exit_status
from ..errors import UsageError
from ..follow.journeys import HostView, Journeys
from ..merge.captures import MergeReport, MergeSource, merge_captures
from ..run.follow import follow_and_merge, is_file_output, write_merge_summary

if TYPE_CHECKING:
    from ..clock.align import Alignment


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
    parser.add_argument(
        "-w",
        dest="output",
        required=True,
        metavar="OUT",
        help="output pcapng; - for standard output (a pipe: wireshark -k -i -), with no "
        "summary or page beside it",
    )
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
    parser.add_argument(
        "--no-journeys",
        dest="journeys",
        action="store_false",
        help="align the clocks only: no packet ids or journeys (with "
        "--no-clock-correction: --plain)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="merge by timestamp only, as mergecap does: no pass over the inputs, so no "
        "clock alignment, packet ids, journeys, summary or report page",
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


def _check_readable(inputs: Sequence[str]) -> None:
    """A missing or unreadable input is a typo on the command line, not a damaged capture:
    refuse it before anything is written (merge_captures would blame the output file)."""
    for path in inputs:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _check_output_is_not_an_input(inputs: Sequence[str], output: str) -> None:
    """The output is truncated before the inputs are read: writing over one would
    destroy the capture being merged."""
    out = Path(output)
    for path in inputs:
        same = out.exists() and out.samefile(path)
        if same or out.resolve() == Path(path).resolve():
            raise UsageError(f"-w {output} is also an input: it would be overwritten")


def handler(args: argparse.Namespace) -> int:
    names = _names(args.name, args.inputs)
    _check_readable(args.inputs)
    to_stdout = args.output == "-"
    if to_stdout:
        if sys.stdout.isatty():
            raise UsageError("-w -: standard output is a terminal, not a pipe or a file")
        args.output = "/dev/stdout"
    _check_output_is_not_an_input(args.inputs, args.output)
    plain = [MergeSource(path, name=names.get(path)) for path in args.inputs]
    if args.plain or not (args.journeys or args.clock_correction):
        report = merge_captures(plain, args.output, clock_correction=False)
        _print_warnings(report.warnings)
        _print_merged(report, len(plain))
        return 0

    def sources_for(alignment: Alignment | None) -> list[MergeSource]:
        if alignment is None:
            return plain
        return [
            replace(
                source,
                clock_offset_ns=alignment.shifts_ns[i],
                clock_note=alignment.describe(i),
                clock_drift_ppb=alignment.rates_ppb[i],
                clock_epoch_ns=alignment.epoch_ns,
            )
            for i, source in enumerate(plain)
        ]

    # Each input is a host as far as clocks go: the traffic they share aligns them. The
    # same pass follows the packets (their addresses: the files' interface descriptions,
    # else learned from the traffic). A MergeError (no usable input) is one line,
    # printed by main().
    labels = [names.get(path) or Path(path).stem for path in args.inputs]
    # run.json's and report.html's equivalents go beside a file, never beside standard
    # output, a pipe or a device (nothing is written into /dev).
    beside = not to_stdout and is_file_output(args.output)
    summary = Path(args.output).with_name(Path(args.output).name + ".json")

    def meanwhile(
        alignment: Alignment | None, journeys: Journeys, followed: dict | None
    ) -> tuple[Path | None, str | None]:
        """The summary and the page (its path, or why none), from the pass's results
        while the merge writes."""
        from ..report.page import write_beside

        if not beside:
            return None, None
        write_merge_summary(
            Path(args.output), alignment, followed, labels, args.inputs, journeys.packets
        )
        return write_beside(summary)

    try:
        report, _ = follow_and_merge(
            args.inputs,
            labels,
            [0] * len(plain),
            [HostView(label) for label in labels],
            Path(args.output).resolve() if beside else Path(args.output),
            sources_for,
            clock_correction=args.clock_correction,
            meanwhile=meanwhile,
            journeys_wanted=args.journeys,
        )
    except BaseException:
        if beside:
            for path in (summary, summary.with_suffix(".html")):  # of a merge that did not happen
                path.unlink(missing_ok=True)
        raise
    alignment = report.alignment
    summary_path = summary
    _print_warnings(report.warnings)
    if alignment is not None:
        print(f"xdpcap merge: {alignment.summary()}", file=sys.stderr)
    _print_merged(report, len(plain))
    if not beside:
        print("xdpcap merge: no summary or page beside standard output", file=sys.stderr)
        return 0
    print(f"xdpcap merge: journeys and clocks in {summary_path}", file=sys.stderr)
    page, problem = report.aside
    if problem:
        print(f"xdpcap merge: warning: {problem}", file=sys.stderr)
    else:
        print(f"xdpcap merge: report page {page}", file=sys.stderr)
    return 0


def _print_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"xdpcap merge: warning: {warning}", file=sys.stderr)


def _print_merged(report: MergeReport, inputs: int) -> None:
    print(
        f"xdpcap merge: {report.packets} packets from {inputs} inputs, "
        f"{len(report.interfaces)} interfaces -> {report.out_path}",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point with the same error mapping as `xdpcap`'s main."""
    from .main import _Parser  # bad flags: one line and exit 2, as under `xdpcap`

    parser = _Parser(prog="xdpcap merge")
    _add_arguments(parser)
    return exit_status(lambda: handler(parser.parse_args(argv)), interrupted="interrupted")


if __name__ == "__main__":
    sys.exit(main())
