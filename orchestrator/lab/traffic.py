"""Traffic between a lab's hosts (`xdpcap lab traffic`): ping over IPv4 and IPv6, TCP and
UDP echoes between every pair of hosts, and the report of what got through.

The echo server and client are the Python files in programs/, run inside the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import math
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .plan import LabHost
from .system import CMD_TIMEOUT, KILL_GRACE, LabError

if TYPE_CHECKING:
    from .namespaces import Lab

PROGRAMS = Path(__file__).resolve().parent / "programs"


def _program(name: str) -> str:
    """The source of programs/NAME.py, for `python3 -I -c`."""
    return (PROGRAMS / f"{name}.py").read_text()


def run_traffic(lab: Lab, seconds: float = 3.0) -> dict[str, Any]:
    """Ping (IPv4 and IPv6) and exchange TCP and UDP between every pair of LAB's hosts.

    Runs for about SECONDS (at least one round). Returns counts per pair; raises LabError
    naming the pairs where a kind of traffic never got through.
    """
    hosts = lab.require_up()
    if shutil.which("ping") is None:
        raise LabError("lab traffic needs ping (Debian package iputils-ping)")
    seconds = max(0.0, float(seconds))
    echo_client = _program("echo_client")
    with _Processes() as procs:
        ports = {h.name: _start_echo_server(lab.name, procs, h, seconds + 10.0) for h in hosts}
        clients = {}
        pings = {}
        for src in hosts:
            peers = [p for p in hosts if p.name != src.name]
            if not peers:
                continue
            targets = [f"{addr},{ports[p.name]}" for p in peers for addr in (p.ipv4, p.ipv6)]
            clients[src.name] = procs.start(
                src, [sys.executable, "-I", "-c", echo_client, f"{seconds:g}", *targets]
            )
            for peer in peers:
                for addr in (peer.ipv4, peer.ipv6):
                    pings[(src.name, peer.name, addr)] = procs.start(src, _ping_argv(addr, seconds))
        deadline = time.monotonic() + seconds + 15.0
        return _traffic_report(lab.name, procs, clients, pings, deadline)


def _start_echo_server(lab_name: str, procs: _Processes, host: LabHost, lifetime: float) -> int:
    """Start the echo server inside HOST for LIFETIME seconds; return the port it listens on."""
    argv = [sys.executable, "-I", "-c", _program("echo_server"), f"{lifetime:g}"]
    proc = procs.start(host, argv)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], CMD_TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        raise LabError(f"lab {lab_name}: echo server on {host.name} did not start")
    return int(line)


def _traffic_report(
    lab_name: str,
    procs: _Processes,
    clients: dict[str, subprocess.Popen[str]],
    pings: dict[tuple[str, str, str], subprocess.Popen[str]],
    deadline: float,
) -> dict[str, Any]:
    """Wait for the pings and clients until DEADLINE; their results, or a LabError."""
    report: dict[str, Any] = {"ping": {}, "tcp": {}, "udp": {}}
    failed: list[str] = []
    for (src, dst, addr), proc in pings.items():
        ok = procs.wait(proc, deadline) == 0
        report["ping"][f"{src}->{dst} {addr}"] = ok
        if not ok:
            failed.append(f"ping {src}->{addr}")
    for src, proc in clients.items():
        procs.wait(proc, deadline)
        assert proc.stdout is not None
        try:
            counts = json.loads(proc.stdout.read() or "{}")
        except ValueError:
            counts = {}
        for kind in ("tcp", "udp"):
            for addr, n in counts.get(kind, {}).items():
                report[kind][f"{src}->{addr}"] = n
                if n == 0:
                    failed.append(f"{kind} {src}->{addr}")
        if not counts:
            failed.append(f"tcp/udp client on {src}")
    if failed:
        raise LabError(f"lab {lab_name}: no traffic got through: {', '.join(failed)}")
    return report


def _ping_argv(addr: str, seconds: float) -> list[str]:
    """ping ADDR every 0.2 s for about SECONDS, bounded by ping's own deadline."""
    count = max(1, int(seconds / 0.2))
    deadline = math.ceil(seconds) + 2  # ping's own bound: it exits after this many seconds
    return ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-w", str(deadline), addr]


class _Processes:
    """Processes started inside namespaces; every one is killed and reaped on exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> _Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_GRACE)
            if proc.stdout is not None:
                proc.stdout.close()

    def start(self, host: LabHost, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start ARGV inside HOST's namespace, its stdout a text pipe."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._procs.append(proc)
        return proc

    @staticmethod
    def wait(proc: subprocess.Popen[str], deadline: float) -> int | None:
        """PROC's exit status, or None (and PROC killed) if it runs past DEADLINE."""
        try:
            return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            return None
