"""Process attribution end to end on the namespace lab: a sender process on one host sends
UDP and TCP (over a connection opened before the capture) to a listener process on
another; the merged file names each packet's process (EPB comments, read by tshark).

The lab's hosts are network namespaces on one kernel: the cgroup hooks see every
namespace's sockets, and the socket cookie keeps them apart; no PID namespaces, so the
PIDs the kernel reports are the ones Popen gives us.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from xdpcap.agent.process.procinfo import visible_cgroup2

from .agent_helpers import tshark_fields
from .lab_helpers import private_lab, xdpcap

TCP_PORT, UDP_PORT = 7301, 7302
SENDER_NAME, LISTENER_NAME = "xdpcap-sender", "xdpcap-listen"

_LISTENER = f"""
import ctypes, socket, threading
ctypes.CDLL(None).prctl(15, b"{LISTENER_NAME}", 0, 0, 0)
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", {TCP_PORT}))
t.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", {UDP_PORT}))
def serve():
    c, _ = t.accept()
    while c.recv(4096):
        pass
threading.Thread(target=serve, daemon=True).start()
print("listening", flush=True)
while True:
    u.recv(4096)
"""

# Connects at once (long before any capture starts), then sends on both sockets.
_SENDER = f"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, b"{SENDER_NAME}", 0, 0, 0)
dst = sys.argv[1]
tcp = socket.create_connection((dst, {TCP_PORT}), timeout=10)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("connected", flush=True)
while True:
    tcp.sendall(b"t" * 32)
    udp.sendto(b"u" * 32, (dst, {UDP_PORT}))
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with private_lab("who", tmp_path_factory.mktemp("wholab"), hosts=2) as lab:
        yield lab


@contextmanager
def own_cgroup() -> Iterator[Path]:
    """A cgroup of our own under the cgroup v2 hierarchy, removed at the end."""
    root = visible_cgroup2()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    path = root / f"xdpcap-who-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()  # its processes are gone by now


def _started(argv: list[str], ready: str, cgroup: Path | None = None) -> subprocess.Popen:
    def enter_cgroup() -> None:  # in the child, before exec: it and its exec stay there
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, preexec_fn=enter_cgroup, stdin=subprocess.DEVNULL
    )
    line = proc.stdout.readline().strip()
    if line != ready:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"{argv[4:6]} did not start: {line!r}")
    return proc


@contextmanager
def sender_and_listener(lab) -> Iterator[tuple[subprocess.Popen, subprocess.Popen, Path]]:
    """The listener on the lab's second host, the sender (in a cgroup of the test's) on
    the first, connected before anything is captured; all gone at the end."""
    sender_host, listener_host = lab.hosts[0], lab.hosts[1]
    procs: list[subprocess.Popen] = []
    with own_cgroup() as cgroup:
        try:
            netns = ["ip", "netns", "exec"]
            procs.append(
                _started([*netns, listener_host.namespace, sys.executable, "-c", _LISTENER],
                         "listening")
            )  # fmt: skip
            procs.append(
                _started(
                    [*netns, sender_host.namespace, sys.executable, "-c", _SENDER,
                     listener_host.ipv4],
                    "connected",
                    cgroup,
                )
            )  # fmt: skip
            yield procs[1], procs[0], cgroup
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(timeout=10)


def _run(lab, tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    result = xdpcap(
        "run", "-i", str(lab.inventory_path), "--duration", "3",
        "--runs-dir", str(tmp_path / "runs"), *extra,
        f"tcp port {TCP_PORT} or udp port {UDP_PORT}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    merged = Path(result.stdout.strip().splitlines()[-1])
    return merged, json.loads((merged.parent / "run.json").read_text())


def _sightings(merged: Path) -> list[tuple[str, str, str, str, str]]:
    """(interface, direction flags, protocol, ip.src, comments) of each data packet."""
    rows = tshark_fields(
        merged, "frame.interface_name", "frame.packet_flags_direction", "udp.dstport",
        "ip.src", "frame.comment",
        display_filter=f"udp.port == {UDP_PORT} || (tcp.port == {TCP_PORT} && tcp.len > 0)",
    )  # fmt: skip
    return [(i, d, "udp" if port else "tcp", src, comment) for i, d, port, src, comment in rows]


def test_each_packet_names_its_process_on_both_ends(lab, tmp_path: Path) -> None:
    sender_host, listener_host = lab.hosts[0], lab.hosts[1]
    with sender_and_listener(lab) as (sender, listener, cgroup):
        merged, run = _run(lab, tmp_path, "--process")
    for host in run["hosts"]:
        assert host["summary"]["unaccounted"] == 0
    sightings = _sightings(merged)
    out_on_sender = [
        s for s in sightings if s[0] == f"{sender_host.name}:eth0" and s[1] == "0x00000002"
    ]
    in_on_listener = [
        s for s in sightings if s[0] == f"{listener_host.name}:eth0" and s[1] == "0x00000001"
    ]
    # Both protocols, both ends; the TCP connection predates the capture.
    for seen, pid in ((out_on_sender, sender.pid), (in_on_listener, listener.pid)):
        assert {s[2] for s in seen} == {"udp", "tcp"}, seen[:4]
        for _iface, _direction, _proto, _src, comment in seen:
            assert comment.startswith(f"PID: {pid}\\nCmd: "), comment  # tshark shows \\n
    # The sender's own cgroup (the test's) is named; the listener's is not that one.
    assert all(f"Cgroup: /{cgroup.name}" in s[4] for s in out_on_sender)
    assert not any(cgroup.name in s[4] for s in in_on_listener)
    # The interface description says attribution was on.
    info = subprocess.run(["capinfos", str(merged)], capture_output=True, text=True, check=True)
    assert "process attribution on" in info.stdout


def test_comm_selects_exactly_that_process(lab, tmp_path: Path) -> None:
    sender_host, listener_host = lab.hosts[0], lab.hosts[1]
    with sender_and_listener(lab) as (sender, _listener, _cgroup):
        merged, run = _run(lab, tmp_path, "--comm", SENDER_NAME)
    sightings = _sightings(merged)
    assert sightings, "nothing of the sender's was written"
    # Only the sender's packets, on its own host; the listener's host wrote none.
    assert all(f"PID: {sender.pid}\\n" in s[4] for s in sightings), sightings[:4]
    assert {s[0] for s in sightings} == {f"{sender_host.name}:eth0"}
    by_name = {h["name"]: h["summary"] for h in run["hosts"]}
    for summary in by_name.values():
        assert summary["unaccounted"] == 0
    listener_summary = by_name[listener_host.name]
    assert listener_summary["written"] == 0 and listener_summary["filtered_out"] > 0
