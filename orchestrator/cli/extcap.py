"""`xdpcap extcap`: xdpcap as a Wireshark capture interface, and its install/uninstall.

Wireshark (and tshark, dumpcap) runs every program in its extcap folder with
`--extcap-interfaces`, then `--extcap-dlts` and `--extcap-config` for the interfaces
they list, and finally `--capture --fifo PATH` with the configured arguments and the
capture-filter box as `--extcap-capture-filter`. The capture is `xdpcap run ... -w -`
with the fifo for stdout: one pcapng stream, an interface per host:iface, in time order.
Wireshark stops it with SIGTERM (or by closing the fifo); either stops every agent as
Ctrl-C does, and the run folder is fetched and merged as always.

The launcher that `install` writes is a two-line shell script naming this Python and
this package; `uninstall` removes it only if it is ours (its marker line).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from ...agent import __version__, validate
from ...agent.filter import spec as filter_spec
from ..errors import UsageError, XdpcapError

INTERFACE = "xdpcap"
LAUNCHER_NAME = "xdpcap"
MARKER = "# xdpcap extcap launcher: `xdpcap extcap uninstall` removes it"
DEFAULT_DURATION_S = 60
DEFAULT_RUNS_DIR = "~/xdpcap-runs"
LOG_NAME = "xdpcap-extcap.log"  # in the runs folder: what the run said
HELP_URL = "https://github.com/xdpcap/xdpcap#live-capture-in-wireshark"

# The configuration dialog: (call, display, type, extra fields, tooltip).
CONFIG: list[tuple[str, str, str, str, str]] = [
    ("--inventory", "Inventory", "fileselect", "{mustexist=true}{required=true}",
     "Ansible inventory (YAML, INI or ansible-inventory --list JSON)"),
    ("--limit", "Limit", "string", "", "Ansible host pattern, e.g. web:&prod:!web03"),
    ("--iface", "Interface", "string", "",
     "interface on every host (the host variable xdpcap_iface wins)"),
    ("--duration", "Duration (s)", "unsigned", f"{{default={DEFAULT_DURATION_S}}}",
     "how long every host captures"),
    ("--count", "Count", "unsigned", "", "stop each host after this many packets"),
    ("--snaplen", "Snaplen", "unsigned", "{default=262144}", "bytes of each packet to keep"),
    ("--direction", "Direction", "selector", "", "in: arriving (XDP), out: sent (tc egress)"),
    ("--runs-dir", "Run folders", "string", f"{{default={DEFAULT_RUNS_DIR}}}",
     "where each run's host captures and merged.pcapng are kept"),
]  # fmt: skip
DIRECTION_VALUES = (("inout", "in and out", True), ("in", "in", False), ("out", "out", False))


# -- the folder and the launcher ---------------------------------------------------------
def extcap_folder() -> Path:
    """Wireshark's personal extcap folder where its version has one, else the global one
    (Wireshark 4.0, as in Debian 12, has only "Extcap path"), as `tshark -G folders` says."""
    try:
        out = subprocess.run(
            ["tshark", "-G", "folders"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"cannot ask tshark for its extcap folder ({exc}): pass --folder") from exc
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    for key in ("personal extcap path", "extcap path", "global extcap path"):
        if found.get(key):
            return Path(found[key].split(":")[0])
    raise UsageError("tshark -G folders names no extcap folder: pass --folder")


def launcher_text() -> str:
    python = Path(sys.executable).absolute()
    command = f'exec {_shell_quote(str(python))} -m xdpcap.orchestrator extcap "$@"'
    return f"#!/bin/sh\n{MARKER}\n{command}\n"


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def install(folder: Path) -> Path:
    path = folder / LAUNCHER_NAME
    if path.exists() and MARKER not in _read(path):
        raise UsageError(f"{path} exists and is not xdpcap's launcher: not replacing it")
    if not folder.is_dir():
        raise UsageError(f"extcap folder {folder} does not exist")
    tmp = path.with_name(f".{LAUNCHER_NAME}.{os.getpid()}.tmp")
    tmp.write_text(launcher_text())
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


def uninstall(folder: Path) -> Path | None:
    path = folder / LAUNCHER_NAME
    if not path.exists():
        return None
    if MARKER not in _read(path):
        raise UsageError(f"{path} is not xdpcap's launcher: leaving it")
    path.unlink()
    return path


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[:4096]
    except OSError:
        return ""


# -- Wireshark's questions ---------------------------------------------------------------
def interfaces_text() -> str:
    return (
        f"extcap {{version={__version__}}}{{help={HELP_URL}}}\n"
        f"interface {{value={INTERFACE}}}{{display=xdpcap: many hosts over SSH, "
        "merged in time order}\n"
    )


def dlts_text() -> str:
    # The stream has an interface block per host:iface with its own link type; Ethernet
    # is what most are.
    return "dlt {number=1}{name=EN10MB}{display=Ethernet (an interface per host)}\n"


def config_text() -> str:
    lines = []
    for number, (call, display, kind, extra, tooltip) in enumerate(CONFIG):
        lines.append(
            f"arg {{number={number}}}{{call={call}}}{{display={display}}}{{type={kind}}}"
            f"{extra}{{tooltip={tooltip}}}"
        )
    direction = next(i for i, row in enumerate(CONFIG) if row[0] == "--direction")
    for value, display, default in DIRECTION_VALUES:
        lines.append(
            f"value {{arg={direction}}}{{value={value}}}{{display={display}}}"
            f"{{default={'true' if default else 'false'}}}"
        )
    return "\n".join(lines) + "\n"


def filter_problem(expression: str) -> str | None:
    """Why the capture-filter box's text is not a filter (None: it is)."""
    try:
        filter_spec.compile_filter(filter_spec.expression_text(expression))
    except XdpcapError as exc:
        return str(exc)
    return None


# -- the capture -------------------------------------------------------------------------
def run_argv(args: argparse.Namespace) -> list[str]:
    """The `xdpcap run` command line the capture amounts to."""
    if not args.inventory:
        raise UsageError("extcap: --inventory is required (the Ansible inventory)")
    argv = ["run", "-i", args.inventory, "-w", "-"]
    argv += ["--runs-dir", os.path.expanduser(args.runs_dir or DEFAULT_RUNS_DIR)]
    argv += ["--duration", str(args.duration or DEFAULT_DURATION_S)]
    for flag, value in (
        ("--limit", args.limit),
        ("--iface", args.iface),
        ("--count", args.count),
        ("--snaplen", args.snaplen),
        ("--direction", args.direction),
    ):
        if value not in (None, ""):
            argv += [flag, str(value)]
    if args.extcap_capture_filter and args.extcap_capture_filter.strip():
        argv += ["--", args.extcap_capture_filter]
    return argv


def capture(args: argparse.Namespace) -> int:
    from .main import build_parser

    if not args.fifo:
        raise UsageError("extcap: --capture needs --fifo PATH")
    run_args = build_parser("run").parse_args(run_argv(args))
    with _log_to(run_args.runs_dir / LOG_NAME) as log:
        code = _run_into(args.fifo, run_args)
    if code != 0:
        # Wireshark shows what an extcap writes on stderr: one line, the rest is in the log.
        print(f"xdpcap: the capture ended with exit code {code}; see {log}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[Path]:
    """stderr (the live table, the report) into the runs folder's log while capturing:
    Wireshark takes anything an extcap writes there for an error. A usage error is
    raised after stderr is back, so its one line reaches Wireshark."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _run_into(fifo: str, run_args: argparse.Namespace) -> int:
    """`xdpcap run -w -` with the fifo for stdout; SIGTERM is Wireshark's Ctrl-C."""
    from .run import run_command

    stream_open = threading.Event()
    stream_open.set()

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        # Wireshark's "stop": stop every agent as Ctrl-C would. Once the stream has
        # ended (the window is over) the fetch and merge finish undisturbed.
        if stream_open.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run_command(
            run_args,
            stream_to=lambda: os.open(fifo, os.O_WRONLY),
            on_stream_closed=stream_open.clear,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the command -------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "extcap",
        help="Wireshark capture interface: install, uninstall (and what Wireshark calls)",
        description="`xdpcap extcap install` makes xdpcap a capture interface in Wireshark "
        "and tshark (interface 'xdpcap'); `xdpcap extcap uninstall` removes it.",
    )
    parser.add_argument("action", nargs="?", choices=("install", "uninstall"))
    parser.add_argument("--folder", type=Path, help="extcap folder (default: tshark -G folders)")
    # Wireshark's calls.
    for flag in ("--extcap-interfaces", "--extcap-dlts", "--extcap-config", "--capture"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in ("--extcap-interface", "--extcap-version", "--fifo", "--extcap-capture-filter"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    # The configuration (config_text).
    parser.add_argument("--inventory", help=argparse.SUPPRESS)
    parser.add_argument("--limit", help=argparse.SUPPRESS)
    parser.add_argument("--iface", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--snaplen", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--direction", choices=validate.DIRECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--runs-dir", help=argparse.SUPPRESS)
    parser.set_defaults(func=extcap_command)


def extcap_command(args: argparse.Namespace) -> int:
    if args.action == "install":
        path = install(args.folder or extcap_folder())
        print(f"installed {path}: Wireshark and tshark now list the interface '{INTERFACE}'")
        return 0
    if args.action == "uninstall":
        path = uninstall(args.folder or extcap_folder())
        print(f"removed {path}" if path else "not installed: nothing to remove")
        return 0
    if args.extcap_interfaces:
        sys.stdout.write(interfaces_text())
        return 0
    if args.extcap_interface not in (None, INTERFACE):
        raise UsageError(f"extcap: unknown interface {args.extcap_interface!r}")
    if args.extcap_dlts:
        sys.stdout.write(dlts_text())
        return 0
    if args.extcap_config:
        sys.stdout.write(config_text())
        return 0
    if args.capture:
        return capture(args)
    if args.extcap_capture_filter is not None:
        # Wireshark checks the capture-filter box: any output says why it is not valid.
        problem = filter_problem(args.extcap_capture_filter)
        if problem:
            sys.stdout.write(problem + "\n")
        return 0
    raise UsageError("extcap: say install or uninstall (the rest is for Wireshark)")
