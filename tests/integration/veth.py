"""A veth pair between two fresh network namespaces, always torn down."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def sh(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def in_ns(
    ns: str, *argv: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *argv, timeout=timeout, check=check)


@dataclass(frozen=True)
class VethPair:
    """`capture_ns` holds `capture_if` (where XDP goes); `peer_ns` holds the sender."""

    capture_ns: str
    capture_if: str
    capture_ip: str
    peer_ns: str
    peer_if: str
    peer_ip: str

    def rx_packets(self) -> int:
        out = in_ns(
            self.capture_ns, "cat", f"/sys/class/net/{self.capture_if}/statistics/rx_packets"
        )
        return int(out.stdout)


@contextmanager
def veth_pair(tag: str) -> Iterator[VethPair]:
    """Namespaces xt<tag><pid>a/b joined by a veth; IPv4 10.213.<n>.1/.2, no IPv6 noise."""
    suffix = f"{tag}{os.getpid() % 10000}"
    pair = VethPair(
        f"xdpcap-t{suffix}a", "vcap0", "10.213.0.1", f"xdpcap-t{suffix}b", "vpeer0", "10.213.0.2"
    )
    try:
        for ns in (pair.capture_ns, pair.peer_ns):
            sh("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        in_ns(
            pair.capture_ns,
            "ip",
            "link",
            "add",
            pair.capture_if,
            "type",
            "veth",
            "peer",
            "name",
            pair.peer_if,
            "netns",
            pair.peer_ns,
        )
        for ns, ifname, ip in (
            (pair.capture_ns, pair.capture_if, pair.capture_ip),
            (pair.peer_ns, pair.peer_if, pair.peer_ip),
        ):
            in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", ifname)
            in_ns(ns, "ip", "link", "set", ifname, "up")
        yield pair
    finally:
        for ns in (pair.capture_ns, pair.peer_ns):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)
