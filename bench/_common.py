"""Helpers shared by the bench/ scripts: namespaces, processes with rusage, counters, tables.

Everything a benchmark creates is named with a prefix and removed in `finally` blocks, so
an interrupted run leaves nothing behind; `cleanup_prefix` also removes the leftovers of a
run that was killed outright.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

CMD_TIMEOUT = 30.0


def sh(*argv: str, timeout: float = CMD_TIMEOUT, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def in_ns(ns: str, *argv: str, timeout: float = CMD_TIMEOUT, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *argv, timeout=timeout, check=check)


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    model = models[0] if models else platform.machine()
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}"


def exit_on_sigterm() -> None:
    """SIGTERM ends the run through the normal exception path, so teardown runs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# -- namespaces -------------------------------------------------------------------------
def netns_names() -> list[str]:
    out = sh("ip", "-j", "netns", "list", check=False).strip()
    return [entry["name"] for entry in json.loads(out or "[]")]


def delete_netns(ns: str) -> None:
    """Kill whatever still runs in `ns`, then delete it (its veth ends go with it)."""
    for pid in sh("ip", "netns", "pids", ns, check=False).split():
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    sh("ip", "netns", "del", ns, check=False)


def cleanup_prefix(prefix: str) -> list[str]:
    removed = [ns for ns in netns_names() if ns.startswith(prefix)]
    for ns in removed:
        delete_netns(ns)
    return removed


@dataclass(frozen=True)
class Veth:
    """`rx_ns`/`rx_if` receive (the capture side); `tx_ns`/`tx_if` send."""

    rx_ns: str
    rx_if: str
    rx_mac: str
    tx_ns: str
    tx_if: str
    tx_mac: str

    def rx_counters(self) -> dict[str, int]:
        out = in_ns(self.rx_ns, "ip", "-s", "-j", "link", "show", "dev", self.rx_if)
        return json.loads(out)[0]["stats64"]["rx"]

    def xdp_attached(self) -> bool:
        out = in_ns(self.rx_ns, "ip", "-j", "link", "show", "dev", self.rx_if)
        return "xdp" in json.loads(out)[0]


@contextmanager
def veth_pair(prefix: str) -> Iterator[Veth]:
    rx_ns, tx_ns = f"{prefix}-rx", f"{prefix}-tx"
    try:
        for ns in (rx_ns, tx_ns):
            delete_netns(ns)  # a leftover of a killed run
            sh("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        in_ns(rx_ns, "ip", "link", "add", "brx0", "type", "veth", "peer", "name", "btx0")
        in_ns(rx_ns, "ip", "link", "set", "btx0", "netns", tx_ns)
        macs = {}
        for ns, ifname, ip in ((rx_ns, "brx0", "198.19.0.1"), (tx_ns, "btx0", "198.19.0.2")):
            in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", ifname)
            in_ns(ns, "ip", "link", "set", ifname, "up")
            link = json.loads(in_ns(ns, "ip", "-j", "link", "show", "dev", ifname))[0]
            macs[ifname] = link["address"]
        yield Veth(rx_ns, "brx0", macs["brx0"], tx_ns, "btx0", macs["btx0"])
    finally:
        for ns in (rx_ns, tx_ns):
            delete_netns(ns)


# -- processes --------------------------------------------------------------------------
@dataclass
class Finished:
    returncode: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    stdout: str
    stderr: str


@dataclass
class Tool:
    """A process whose output is collected in threads and whose rusage is kept at exit.

    `os.wait4` gives the CPU time and peak RSS of the process and of every child it
    waited for, without a wrapper process.
    """

    argv: Sequence[str]
    proc: subprocess.Popen = field(init=False)
    _out: list[str] = field(default_factory=list)
    _err: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _started: float = 0.0

    def start(self) -> Tool:
        self._started = time.monotonic()
        self.proc = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            thread = threading.Thread(target=_drain, args=(stream, sink), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def output(self) -> str:
        return "".join(self._out) + "".join(self._err)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        """True once `pattern` appears on stdout or stderr; False on timeout or exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.output()):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 60.0) -> Finished:
        """SIGINT (how a user stops a capture), then wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float) -> Finished:
        deadline = time.monotonic() + timeout
        status = usage = None
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                _, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.02)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - self._started
        for thread in self._threads:
            thread.join(5)
        return Finished(
            returncode=self.proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_mb=usage.ru_maxrss / 1024,
            stdout="".join(self._out),
            stderr="".join(self._err),
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with suppress(ChildProcessError):
                os.wait4(self.proc.pid, 0)


def _drain(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def pcap_packets(path: Path) -> tuple[int, bool | None]:
    """Packets in a pcap/pcapng file and whether they are in strict time order (capinfos)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0, None
    out = sh("capinfos", "-M", "-c", "-o", "-T", "-r", str(path), timeout=300)
    fields = out.strip().split("\t")
    order = {"True": True, "False": False}.get(fields[2].strip()) if len(fields) > 2 else None
    return int(fields[1]), order


# -- output -----------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def kpps(value: float) -> str:
    return f"{value / 1000:,.0f} k"


def ratio(value: float, peer: float) -> str:
    if peer:
        return f"{value / peer:.2f}×"
    return "∞ (peer lost at every rate)" if value else "–"
