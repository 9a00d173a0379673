"""The agent's commands: `capture`, `preflight`, `clock` (the parser: command_line.py).

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

from . import clock, validate
from .command_line import build_parser
from .errors import UsageError, XdpcapError, exit_status
from .protocol import EventSink

if TYPE_CHECKING:
    from .capture import CaptureOptions

# The capture and preflight modules (and what they import) load only for those
# commands: `clock --serve`, the controller's offset probe, and `xdpcap run`, which
# builds this parser, start a tenth of a second sooner without them.


def options_from_args(args: argparse.Namespace) -> CaptureOptions:
    from .capture import CaptureOptions
    from .filter import spec
    from .process.selection import Selection

    if not args.output:
        raise UsageError("-w FILE is required (the pcapng file to write)")
    if args.stream and not args.json_events:
        raise UsageError("--stream sends packets to a controller: it needs --json-events")
    expression = spec.expression_from(args.expression, args.filter_file)
    if args.buffer_pages is not None and (
        args.buffer_pages < 1 or args.buffer_pages & (args.buffer_pages - 1)
    ):
        raise UsageError(f"--buffer-pages must be a power of two, not {args.buffer_pages}")
    selects = args.pid is not None or bool(args.comm) or bool(args.container)
    if args.process is False and selects:
        raise UsageError("--pid, --comm and --container select by process: not with --no-process")
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
        process=bool(args.process) or selects,
        selection=Selection(
            pid=validate.pid(args.pid),
            comm=validate.comm(args.comm),
            container=validate.container(args.container),
        ),
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


def _run_command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "capture":
        return run_capture_command(args)
    if args.command == "preflight":
        return run_preflight(args.iface, args.output_dir)
    if args.command == "clock":
        return serve_clock() if args.serve else _print_clock()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    return exit_status(lambda: _run_command(argv))


if __name__ == "__main__":
    sys.exit(main())
