"""The agent's command line, in both directions: the parser, and `capture_argv`, the one
place that writes a capture's command line from typed options (the controller's launch,
the Ansible collection's agent module and the local `xdpcap capture` all use it).

Stdlib only: the collection's agent module imports it from the zipapp on the host.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from . import __version__, validate
from .errors import UsageError


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


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """Process attribution and selection by process (agent/process/)."""
    # Off by default. Its programs are the sampler's one compile, cached with it: on a
    # host of its own it costs +8 MB at the start (measured). But its hooks see every
    # socket of the kernel: a hundred agents sharing the lab's one kernel made the run
    # ~1.3 s slower with it (bench/run --process; BENCHMARKS.md).
    parser.add_argument(
        "--process",
        dest="process",
        action="store_true",
        default=None,
        help="attribute packets to processes: EPB comments naming the process and container "
        "that sent or received each packet (off by default; --pid, --comm and --container "
        "turn it on)",
    )
    parser.add_argument(
        "--no-process", dest="process", action="store_false", help="no process attribution"
    )
    parser.add_argument(
        "--pid",
        type=int,
        help="keep only packets of this process (its PID on the host, not inside a "
        "container's PID namespace); combines with the filter expression",
    )
    parser.add_argument(
        "--comm", metavar="NAME", help="keep only packets of processes of this name (15 bytes)"
    )
    parser.add_argument(
        "--container",
        metavar="ID|NAME",
        help="keep only packets of processes in this container (docker/podman name or id, "
        "containerd id), systemd unit, or cgroup path (/a/b)",
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
    add_process_arguments(parser)
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


@dataclass(frozen=True)
class CaptureArgs:
    """What a controller asks of a capture agent; None leaves the agent's default."""

    iface: str
    output: str
    duration_s: float | None = None
    count: int | None = None
    snaplen: int | None = None
    sample_rate: int | None = None
    xdp_mode: str | None = None
    direction: str = "inout"
    json_events: bool = True  # events on stdout for a controller
    wait_start: bool = False  # open the window on the controller's "start"
    start_at_ns: int | None = None  # or at this wall-clock instant
    start_timeout_s: float | None = None
    stream: bool = False  # frames to the controller as well (-w -)
    xdp_hook: str | None = None  # the pinned xdpcap hook map of the host's XDP program
    process: bool | None = None  # attribution: --process, --no-process (None: the default)
    pid: int | None = None  # select by process: --pid, --comm, --container
    comm: str | None = None
    container: str | None = None
    filter_args: tuple[str, ...] = ()  # CompiledFilter.agent_args(): programs, then words


def capture_argv(args: CaptureArgs) -> list[str]:
    """The agent's `capture` command line for `args`: parsed by build_parser() into the
    same values (a unit test holds the two together)."""
    argv = ["capture"]
    if args.json_events:
        argv.append("--json-events")
    if args.wait_start:
        argv.append("--wait-start")
    argv += ["-i", args.iface, "-w", args.output]
    for flag, value in (
        ("--duration", None if args.duration_s is None else repr(float(args.duration_s))),
        ("--snaplen", args.snaplen),
        ("--sample-rate", args.sample_rate),
        ("--xdp-mode", args.xdp_mode),
        ("--direction", validate.direction(args.direction)),
        ("--start-timeout", None if args.start_timeout_s is None else repr(args.start_timeout_s)),
        ("--start-at", args.start_at_ns),
        ("--count", args.count),
        ("--xdp-hook", args.xdp_hook),
        ("--pid", validate.pid(args.pid)),
        ("--container", validate.container(args.container)),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.stream:
        argv.append("--stream")
    if args.process is not None:
        argv.append("--process" if args.process else "--no-process")
    if args.comm is not None:  # one word: a login shell's name ("-bash") starts with '-'
        argv.append(f"--comm={validate.comm(args.comm)}")
    # The checked programs, then the expression as the trailing words (the agent checks
    # the programs again: it trusts nothing that arrives over the wire).
    return argv + list(args.filter_args)
