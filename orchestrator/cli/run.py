"""`xdpcap run`, `xdpcap check`: the controller's commands over an inventory.

Every value is validated before any host is contacted: a bad flag or inventory is one
line and exit 2, with nothing done anywhere.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ...agent import validate
from ...agent.command_line import (
    add_direction_argument,
    add_filter_arguments,
    add_process_arguments,
)
from ...agent.filter import spec as filter_spec
from ..errors import UsageError
from ..inventory import ansible as inventory_ansible
from ..inventory.checks import pin_path
from ..inventory.model import Host, format_host_list
from ..merge.live import BUFFER_BUDGET_BYTES, DEFAULT_IDLE_S
from ..remote.bundle import build_agent_bundle
from ..remote.filters import compile_for_hosts
from ..remote.host import CaptureSettings, RemoteHost
from ..remote.hostvars import capture_dir_of, interpreter_of, test_clock_env, validate_iface_for
from ..remote.ssh import SshSettings
from ..remote.state import HostState
from ..run.fanout import each_remote
from ..run.launch_gate import LaunchGate
from ..run.results import RunResult, print_result
from ..run.runner import READY_TIMEOUT_S, Run, RunOptions
from ..run.tables import check_table

DEFAULT_DURATION_S = 10.0
COUNT_ONLY_DURATION_S = 300.0  # --count alone still needs a deadline on every host


def add_inventory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i",
        "--inventory",
        required=True,
        help="Ansible inventory: YAML, INI or `ansible-inventory --list` JSON; with ansible-core "
        "installed, anything `ansible -i` takes (plugins, directories, vault, Jinja)",
    )
    parser.add_argument(
        "--inventory-reader",
        choices=inventory_ansible.READERS,
        help=f"who reads -i: ansible-core, the built-in reader, or auto (default; "
        f"also ${inventory_ansible.READER_ENV})",
    )
    parser.add_argument(
        "--vault-password-file",
        help="decrypt !vault values in the inventory (ansible reader)",
    )
    parser.add_argument("--iface", help="interface on every host (host var xdpcap_iface wins)")
    parser.add_argument("-l", "--limit", help="Ansible host pattern: web:&prod:!web03")
    parser.add_argument(
        "-f",
        "--forks",
        type=int,
        default=50,
        help="at most this many hosts prepared, and fetched, at once (default 50; fewer "
        "while launches slow down, e.g. on an overloaded controller)",
    )
    parser.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="trust and remember unknown host keys (never changed ones)",
    )
    parser.add_argument(
        "-K",
        "--ask-become-pass",
        action="store_true",
        help="ask for the sudo password (otherwise sudo -n)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="capture on every host of an inventory and merge",
        description="Capture with XDP on many hosts at once; merge by time.",
    )
    add_inventory_arguments(run)
    run.add_argument("--duration", type=float, help=f"seconds (default {DEFAULT_DURATION_S:g})")
    run.add_argument("--count", type=int, help="stop each host after N packets")
    run.add_argument("--snaplen", type=int, default=262144)
    run.add_argument("--sample-rate", type=int, default=1, metavar="N")
    run.add_argument("--xdp-mode", choices=("auto", "native", "skb"), default="auto")
    run.add_argument(
        "-w",
        "--write",
        dest="output",
        type=Path,
        help="merged pcapng (default RUN_FOLDER/merged.pcapng); '-': a live pcapng stream "
        "on stdout, in time order while the hosts capture (| wireshark -k -i -)",
    )
    run.add_argument(
        "--stream-idle",
        type=float,
        default=DEFAULT_IDLE_S,
        metavar="S",
        help="with -w -: a host silent this long is left out of the stream's time order "
        f"until it speaks again (default {DEFAULT_IDLE_S:g} s)",
    )
    run.add_argument(
        "--stream-buffer",
        type=int,
        default=BUFFER_BUDGET_BYTES >> 20,
        metavar="MiB",
        help="with -w -: the controller's memory for packets not yet in the stream; a slow "
        f"reader makes it skip (and count) beyond this (default {BUFFER_BUDGET_BYTES >> 20})",
    )
    run.add_argument("--runs-dir", type=Path, default=Path("xdpcap-runs"))
    run.add_argument("--no-clock-correction", action="store_true")
    run.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S,
        metavar="S",
        help="how long the others wait for a host that is not ready (default "
        f"{READY_TIMEOUT_S:g}); a host that is lost fails at once",
    )
    run.add_argument(
        "--reconnect-wait",
        type=float,
        default=30.0,
        help="seconds to retry a host whose connection died mid-capture",
    )
    run.add_argument(
        "--list-hosts",
        action="store_true",
        help="print the selected hosts and exit, connecting to none",
    )
    add_direction_argument(run, None)  # host var xdpcap_direction wins; else inout
    run.add_argument(
        "--xdp-hook",
        metavar="PIN",
        help="the pinned xdpcap hook map of the hosts' XDP program: inbound as it leaves "
        "that program, with its verdicts (host var xdpcap_xdp_hook wins; without either, "
        "a pinned hook is found, else inbound is captured after the program)",
    )
    # Host vars xdpcap_process, xdpcap_pid, xdpcap_comm and xdpcap_container win.
    add_process_arguments(run)
    add_filter_arguments(run)  # host var xdpcap_filter wins, as xdpcap_iface does
    run.set_defaults(func=run_command)

    check = sub.add_parser("check", help="preflight every host: can it capture?")
    add_inventory_arguments(check)
    check.set_defaults(func=check_command)


def select_hosts(args: argparse.Namespace) -> list[Host]:
    loaded = inventory_ansible.load(args.inventory, args.inventory_reader, args.vault_password_file)
    args.inventory_read_by = loaded.reader  # --list-hosts tells it
    hosts = loaded.inventory.select(args.limit)
    if not hosts:
        raise UsageError(f"{args.inventory}: no hosts selected")
    if args.forks < 1 or args.forks > 1000:
        raise UsageError(f"--forks must be between 1 and 1000, not {args.forks}")
    if args.iface is not None:
        validate.interface_name(args.iface)
    for host in hosts:  # every per-host value is checked before any host is contacted
        validate_iface_for(host, args.iface)
        capture_dir_of(host)
        test_clock_env(host)
        interpreter_of(host)
    return hosts


def _ssh_settings(args: argparse.Namespace) -> SshSettings:
    password = None
    if args.ask_become_pass:
        if not sys.stdin.isatty():
            raise UsageError("--ask-become-pass needs a terminal to ask on")
        password = getpass.getpass("BECOME password: ")
    return SshSettings(accept_new_host_keys=args.accept_new_host_keys, become_password=password)


def capture_settings(args: argparse.Namespace) -> CaptureSettings:
    duration = args.duration
    if duration is None:
        duration = COUNT_ONLY_DURATION_S if args.count is not None else DEFAULT_DURATION_S
    return CaptureSettings(
        duration_s=validate.duration(duration) or DEFAULT_DURATION_S,
        count=validate.count(args.count),
        snaplen=validate.snaplen(args.snaplen),
        sample_rate=validate.sample_rate(args.sample_rate),
        xdp_mode=args.xdp_mode,
        start_timeout_s=args.ready_timeout + 30.0,
    )


def check_output_paths(runs_dir: Path, output: Path | None) -> None:
    """Refuse unusable local paths before any host is contacted, not after the capture."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UsageError(f"--runs-dir {runs_dir} exists and is not a folder")
    if output is not None:
        if output.is_dir():
            raise UsageError(f"-w {output} is a folder, not a file")
        if not output.parent.is_dir():
            raise UsageError(f"-w {output}: folder {output.parent} does not exist")


def run_command(
    args: argparse.Namespace,
    stream_to: Callable[[], int] | None = None,
    on_stream_closed: Callable[[], None] | None = None,
) -> int:
    """`xdpcap run`; `stream_to` opens where a live stream goes instead of stdout (the
    extcap's fifo), and `on_stream_closed` is told when that stream has ended."""
    capture = capture_settings(args)
    hosts = select_hosts(args)
    # Compiled here, before any host is contacted: a bad filter is one line, exit 2.
    filters = compile_for_hosts(
        hosts, filter_spec.expression_from(args.expression, args.filter_file)
    )
    if args.list_hosts:
        print(f"xdpcap: {args.inventory}: read by {args.inventory_read_by}", file=sys.stderr)
        print(format_host_list(hosts, args.iface))
        return 0
    validate.positive_number("--ready-timeout", args.ready_timeout, 3600)
    if args.xdp_hook is not None:
        pin_path("--xdp-hook", args.xdp_hook)
    if args.process is False and (args.pid is not None or args.comm or args.container):
        raise UsageError("--pid, --comm and --container select by process: not with --no-process")
    validate.positive_number("--reconnect-wait", args.reconnect_wait, 3600)
    validate.positive_number("--stream-idle", args.stream_idle, 3600)
    validate.positive_number("--stream-buffer", args.stream_buffer, 1 << 16)
    streaming = args.output is not None and str(args.output) == "-"
    if streaming and stream_to is None and sys.stdout.isatty():
        raise UsageError(
            "-w - writes a binary pcapng stream to stdout: pipe it into a reader "
            "(| wireshark -k -i -, | tshark -r -)"
        )
    output = None if streaming else args.output
    check_output_paths(args.runs_dir, output)
    options = RunOptions(
        iface=args.iface,
        capture=capture,
        forks=args.forks,
        runs_dir=args.runs_dir,
        output=output,
        clock_correction=not args.no_clock_correction,
        ready_timeout_s=args.ready_timeout,
        inventory_path=str(Path(args.inventory).resolve()),
        reconnect_wait_s=args.reconnect_wait,
        filters=filters,
        direction=args.direction,
        xdp_hook=args.xdp_hook,
        process=args.process,
        pid=validate.pid(args.pid),
        comm=validate.comm(args.comm),
        container=validate.container(args.container),
        stream_idle_s=args.stream_idle,
        stream_budget=args.stream_buffer << 20,
        on_stream_closed=on_stream_closed,
    )
    ssh = _ssh_settings(args)
    if streaming:
        options = replace(options, stream_fd=(stream_to or take_stdout)())
    return execute_run(hosts, options, ssh)


def take_stdout() -> int:
    """stdout's pipe for the live stream alone: fd 1 goes to /dev/null, so no stray
    print can cut into the pcapng, and closing our copy is the reader's end of file."""
    sys.stdout.flush()
    fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    return fd


def execute_run(hosts: list[Host], options: RunOptions, ssh: SshSettings) -> int:
    run = Run(hosts, options, ssh)
    result: RunResult = run.execute()
    print_result(result, run.console)
    if result.merged is not None:
        # The merged file's path on stdout, for scripts; with -w -, stdout was the stream.
        print(result.merged, file=sys.stderr if options.stream_fd is not None else sys.stdout)
    return result.exit_code


def check_command(args: argparse.Namespace) -> int:
    from rich.console import Console  # here: `run` loads rich only once it has connected

    hosts = select_hosts(args)
    ssh = _ssh_settings(args)
    bundle = build_agent_bundle()
    run_id = secrets.token_hex(8)  # unused by check, which creates no run folder
    remotes = [
        RemoteHost(
            h, HostState(h.name, h.address, validate_iface_for(h, args.iface)), ssh, run_id=run_id
        )
        for h in hosts
    ]
    reports: dict[str, dict] = {}
    gate = LaunchGate(args.forks)  # a preflight costs a host what a launch does

    def check(remote: RemoteHost) -> None:
        try:
            with gate.slot():
                reports[remote.host.name] = remote.preflight(bundle)
        finally:
            remote.close()

    each_remote(remotes, check, args.forks)
    rows = [(r.host.name, reports.get(r.host.name), r.state.reason) for r in remotes]
    Console().print(check_table(rows))
    ok = sum(1 for _, report, _ in rows if report and report.get("verdict") == "ok")
    return 0 if ok == len(rows) else (3 if ok else 1)
