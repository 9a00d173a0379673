"""Lab fixtures for the controller tests: a private lab, inventories derived from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from xdpcap.orchestrator.lab.namespaces import Lab

from .agent_helpers import tshark_fields


def unique_lab_name(tag: str) -> str:
    """Lowercase letters/digits, starting and ending with a letter, unique per test process."""
    digits = str(os.getpid() % 100000)
    letters = "".join("abcdefghij"[int(d)] for d in digits)
    return f"{tag}{letters}"


@contextmanager
def private_lab(tag: str, tmp_path: Path, hosts: int = 3) -> Iterator[Lab]:
    lab = Lab(unique_lab_name(tag), hosts=hosts, state_dir=tmp_path / "lab")
    with lab:
        yield lab


def xdpcap(
    *args: str, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xdpcap.orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def inventory_with(lab: Lab, tmp_path: Path, host_vars: dict[str, dict]) -> Path:
    """The lab's inventory with extra per-host variables."""
    data = yaml.safe_load(lab.inventory_path.read_text())
    group = next(iter(data.values()))
    for host, extra in host_vars.items():
        group["hosts"][host].update(extra)
    path = tmp_path / "inventory-extra.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@contextmanager
def _killed_after(procs: list[subprocess.Popen]) -> Iterator[None]:
    """Background traffic: every process is killed (and reaped) when the block ends."""
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def pings_between_all(lab: Lab, seconds: float) -> Iterator[None]:
    """Every host pings every other host's IPv4 address, 10 per second, in the background,
    for at most `seconds` (the block's end stops them: give a launch slowed by load room)."""
    procs = []
    for src in lab.hosts:
        for dst in lab.hosts:
            if src.name != dst.name:
                procs.append(
                    subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            src.namespace,
                            "ping",
                            "-q",
                            "-i",
                            "0.1",
                            "-w",
                            str(int(seconds)),
                            dst.ipv4,
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
    with _killed_after(procs):
        yield


def echo_pairs(merged: Path) -> tuple[list[tuple[int, int, str, str, str, str]], int]:
    """(request frame, reply frame, request iface, reply iface, pinger address, pinged
    address) per IPv4 ping seen on both sides, whatever their order in the file; and how
    many replies lack their request (possible only at the edges of the capture window)."""
    rows = tshark_fields(
        merged,
        "frame.number",
        "frame.interface_name",
        "icmp.type",
        "icmp.ident",
        "icmp.seq",
        "ip.src",
        "ip.dst",
        # Each packet once, where it arrived: with both directions captured, a packet
        # between two hosts is also in the file as it left its sender.
        display_filter="(icmp.type == 8 || icmp.type == 0) && frame.packet_flags_direction == 1",
    )
    requests: dict[tuple, tuple[int, str]] = {}
    replies: dict[tuple, tuple[int, str]] = {}
    for number, iface, kind, ident, seq, src, dst in rows:
        if kind == "8":
            requests[(ident, seq, src, dst)] = (int(number), iface)
        else:
            replies[(ident, seq, dst, src)] = (int(number), iface)
    pairs = [
        (requests[k][0], reply[0], requests[k][1], reply[1], k[2], k[3])
        for k, reply in replies.items()
        if k in requests
    ]
    return pairs, sum(1 for k in replies if k not in requests)


def run_in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# A UDP echo whose server answers 2 ms late. Kernel ping replies leave ~20 µs after the
# request arrives, closer than any clock-offset estimate over SSH can resolve (its error
# bound is ± half an SSH round trip, ~0.1 ms): on the skew test, requests and replies are
# spaced well beyond that bound, as they are on real networks with real link delay.
UDP_ECHO_PORT = 7077
_ECHO_SERVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
while True:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        break
    time.sleep(0.002)
    s.sendto(b"rep" + data[3:], peer)
"""
_ECHO_CLIENT = """
import socket, sys, time
name, port, seconds, targets = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    for t in targets:
        s.sendto(f"req-{name}-{t}-{n}".encode(), (t, port))
    n += 1
    time.sleep(0.05)
"""


@contextmanager
def delayed_udp_echo(lab: Lab, seconds: float) -> Iterator[None]:
    procs = []
    for host in lab.hosts:
        procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.namespace,
                    sys.executable,
                    "-c",
                    _ECHO_SERVER,
                    str(UDP_ECHO_PORT),
                    str(seconds + 5),
                ]
            )
        )
    for host in lab.hosts:
        targets = [h.ipv4 for h in lab.hosts if h.name != host.name]
        procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.namespace,
                    sys.executable,
                    "-c",
                    _ECHO_CLIENT,
                    host.name,
                    str(UDP_ECHO_PORT),
                    str(seconds),
                    *targets,
                ]
            )
        )
    with _killed_after(procs):
        yield


def udp_echo_pairs(merged: Path) -> list[tuple[int, int]]:
    """(request frame, reply frame) for every UDP echo seen on both hosts."""
    rows = tshark_fields(
        merged,
        "frame.number",
        "data.data",
        # Where each packet arrived (see echo_pairs).
        display_filter=f"udp.port == {UDP_ECHO_PORT} && frame.packet_flags_direction == 1",
    )
    requests: dict[bytes, int] = {}
    replies: dict[bytes, int] = {}
    for number, payload in rows:
        data = bytes.fromhex(payload.replace(":", ""))
        (requests if data.startswith(b"req") else replies)[data[3:]] = int(number)
    return [(requests[k], replies[k]) for k in replies if k in requests]


_UDP_SENDER = """
import socket, sys, time
rate, seconds, port = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
targets = sys.argv[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    for t in targets:
        s.sendto(b"xdpcap-test %d" % n, (t, port))
    n += 1
    pause = start + n / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)
"""


def udp_sender(namespace: str, rate: float, seconds: float, port: int, *targets: str) -> list[str]:
    """The argv of a process in `namespace` sending `rate` small UDP packets a second to
    each of `targets` for `seconds`."""
    argv = [sys.executable, "-c", _UDP_SENDER, str(rate), str(seconds), str(port), *targets]
    return ["ip", "netns", "exec", namespace, *argv]


@contextmanager
def udp_between_all(lab: Lab, rate: float, seconds: float, port: int = 7088) -> Iterator[None]:
    """Every host sends `rate` small UDP packets a second to every other host."""
    procs = []
    for host in lab.hosts:
        targets = [h.ipv4 for h in lab.hosts if h.name != host.name]
        procs.append(subprocess.Popen(udp_sender(host.namespace, rate, seconds, port, *targets)))
    with _killed_after(procs):
        yield


BECOME_PASSWORD = "Become-Pass-4471"


@contextmanager
def sudo_user(lab, *, nopasswd: bool) -> Iterator[str]:
    """A throw-away user with the lab key in its authorized_keys and a sudoers drop-in
    (the lab's hosts share this machine's users), removed with its home afterwards."""
    name = f"xdpcapt{os.getpid() % 100000}"
    sudoers = Path(f"/etc/sudoers.d/xdpcap-test-{name}")
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, timeout=30)
    try:
        home = Path(f"/home/{name}")
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(Path(f"{lab.key_path}.pub").read_text())
        shutil.chown(ssh_dir, name, name)
        shutil.chown(ssh_dir / "authorized_keys", name, name)
        subprocess.run(
            ["chpasswd"], input=f"{name}:{BECOME_PASSWORD}\n", text=True, check=True, timeout=30
        )
        rule = f"{name} ALL=(root) {'NOPASSWD: ' if nopasswd else ''}ALL\n"
        sudoers.write_text(rule)
        sudoers.chmod(0o440)
        yield name
    finally:
        sudoers.unlink(missing_ok=True)
        subprocess.run(["pkill", "-9", "-u", name], check=False, timeout=30)
        subprocess.run(["userdel", "-r", "-f", name], check=False, timeout=30, capture_output=True)
