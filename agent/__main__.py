"""The agent's command line: `capture`, `preflight`, `clock`.

Runs with nothing but the host's python3 and bcc: from the zipapp the controller uploads
(`python3 xdpcap-agent.pyz capture ...`), or locally as `xdpcap capture`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, clock, validate
from .errors import UsageError, XdpcapError, os_error_line
from .protocol import EventSink

if TYPE_CHECKING:
    from .capture import CaptureOptions

# The capture and preflight modules (and what they import) load only for those
# commands: `clock --serve`, the controller's offset probe, and `xdpcap run`, which
# builds this parser, start a tenth of a second sooner without them.


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as every other bad input
        raise UsageError(message)


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """tcpdump's way to give a filter: trailing words, or -F FILE."""
    parser.add_argument(
        "expression",
        nargs="*",
        help="capture filter, in tcpdump's language (e.g. tcp port 443 and host 10.0.0.5)",
    )
    parser.add_argument(
        "-F", dest="filter_file", metavar="FILE", help="read the capture filter from FILE"
    )


def add_direction_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    """tcpdump's -Q: which directions to capture."""
    parser.add_argument(
        "-Q",
        "--direction",
        choices=validate.DIRECTIONS,
        default=default,
        help="in: what arrives (XDP), out: what is sent (tc egress), inout: both "
        "(the default, as tcpdump)",
    )


def add_capture_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iface", "-i", required=True, help="interface to capture on")
    parser.add_argument("-w", "--write", dest="output", help="pcapng file to write")
    parser.add_argument("--duration", type=float, help="seconds to capture")
    parser.add_argument("--count", type=int, help="stop after this many packets are written")
    parser.add_argument(
        "--snaplen", type=int, default=262144, help="bytes of each packet to keep (default 262144)"
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=1,
        metavar="N",
        help="keep one packet in N, chosen at random (default 1: all)",
    )
    parser.add_argument("--xdp-mode", choices=("auto", "native", "skb"), default="auto")
    add_direction_argument(parser, "inout")
    parser.add_argument(
        "--egress-attach",
        choices=("auto", "tcx", "clsact"),
        default="auto",
        help="how the tc programs attach, at egress (and at ingress behind another XDP "
        "program) (auto: a tcx link where the kernel has it, 6.6+; else a clsact filter)",
    )
    parser.add_argument(
        "--rx-capture",
        choices=("auto", "xdp", "hook", "after-xdp"),
        default="auto",
        help="how inbound is captured (auto: our XDP program; beside another XDP program, "
        "through its xdpcap hook if one is pinned, else at tc ingress after it)",
    )
    parser.add_argument(
        "--xdp-hook",
        metavar="PIN",
        help="the pinned xdpcap hook map (bpf/xdpcap_hook.h) of the interface's XDP program: "
        "capture inbound as it leaves that program, with its verdicts",
    )
    parser.add_argument(
        "--buffer-pages",
        type=int,
        help="perf buffer pages per CPU, a power of two (default: 8 MiB per CPU, "
        "at most about 64 MiB in all)",
    )
    parser.add_argument(
        "--preflight",
        action="store_true",
        help="only check whether this host can capture, print JSON",
    )
    parser.add_argument("--print-bpf", action="store_true", help="print the BPF C source")
    parser.add_argument(
        "--no-bpf-cache",
        dest="bpf_cache",
        action="store_false",
        help="compile the sampler with bcc even when this host has it cached",
    )
    add_filter_arguments(parser)
    # Used by the controller, not by people.
    parser.add_argument(
        "--filter-cbpf", action="append", default=[], metavar="LINK=PROGRAM", help=argparse.SUPPRESS
    )
    parser.add_argument("--json-events", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--wait-start", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--start-at",
        type=int,
        metavar="WALL_CLOCK_NS",
        help="open the capture window at this wall-clock time (ns since the epoch), the "
        "same for every host of a fleet; at most "
        f"{validate.START_AT_PAST_S:g} s in the past, {validate.START_AT_FUTURE_S:g} s ahead",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xdpcap-agent", description="xdpcap's per-host capture agent")
    parser.add_argument("--version", action="version", version=f"xdpcap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_capture_arguments(sub.add_parser("capture", help="capture on one interface"))
    pre = sub.add_parser("preflight", help="print a JSON readiness report")
    pre.add_argument("--iface", "-i", required=True)
    pre.add_argument("--output-dir", default=".")
    clock_parser = sub.add_parser("clock", help="print this host's wall clock (ns) as JSON")
    clock_parser.add_argument(
        "--serve",
        action="store_true",
        help="answer each line on stdin with the clock (offset probe)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> CaptureOptions:
    from .capture import CaptureOptions
    from .filter import spec

    if not args.output:
        raise UsageError("-w FILE is required (the pcapng file to write)")
    if args.stream and not args.json_events:
        raise UsageError("--stream sends packets to a controller: it needs --json-events")
    expression = spec.expression_from(args.expression, args.filter_file)
    if args.buffer_pages is not None and (
        args.buffer_pages < 1 or args.buffer_pages & (args.buffer_pages - 1)
    ):
        raise UsageError(f"--buffer-pages must be a power of two, not {args.buffer_pages}")
    if args.start_at is not None and args.wait_start:
        raise UsageError("--start-at and --wait-start are two ways to start: give one")
    return CaptureOptions(
        iface=validate.interface_name(args.iface),
        output=Path(args.output),
        duration_s=validate.duration(args.duration),
        count=validate.count(args.count),
        snaplen=validate.snaplen(args.snaplen),
        sample_rate=validate.sample_rate(args.sample_rate),
        xdp_mode=args.xdp_mode,
        direction=args.direction,
        egress_attach=args.egress_attach,
        rx_capture=args.rx_capture,
        xdp_hook=args.xdp_hook,
        buffer_pages=args.buffer_pages,
        wait_start=args.wait_start,
        start_at_ns=(
            None
            if args.start_at is None
            else validate.start_at(args.start_at, clock.wall_clock_ns())
        ),
        start_timeout_s=validate.positive_number("--start-timeout", args.start_timeout, 3600),
        controller=args.json_events,
        debug_print_source=args.print_bpf,
        bpf_cache=args.bpf_cache,
        filter_expression=expression,
        filter_programs=spec.parse_program_args(args.filter_cbpf),
        stream=args.stream,
    )


def run_preflight(iface: str, output_dir: str) -> int:
    from .preflight import preflight

    report = preflight(validate.interface_name(iface), output_dir)
    print(json.dumps(report, indent=2))
    return 0 if report["verdict"] == "ok" else 1


def run_capture_command(args: argparse.Namespace) -> int:
    if args.preflight:
        return run_preflight(args.iface, str(Path(args.output).parent) if args.output else ".")
    events = EventSink(sys.stdout.fileno() if args.json_events else None)
    try:
        options = options_from_args(args)
        from .capture import run_capture

        summary = run_capture(options, events)
    except XdpcapError as exc:
        events.emit("error", message=str(exc))
        raise
    finally:
        events.close()
    print(summary.line(), file=sys.stderr)
    return 0


def _print_clock() -> int:
    print(json.dumps({"realtime_ns": clock.wall_clock_ns()}), flush=True)
    return 0


def serve_clock(max_rounds: int = 64) -> int:
    """The controller's NTP-style probe: it times each round trip and keeps the tightest."""
    _print_clock()
    for _ in range(max_rounds):
        if not sys.stdin.readline():
            break
        _print_clock()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "capture":
            return run_capture_command(args)
        if args.command == "preflight":
            return run_preflight(args.iface, args.output_dir)
        if args.command == "clock":
            return serve_clock() if args.serve else _print_clock()
    except XdpcapError as exc:
        print(f"xdpcap: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a file or folder the system refused: one line, not a traceback
        print(os_error_line(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
