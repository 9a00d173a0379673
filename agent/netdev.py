"""What the host knows about one interface: index, driver, attached XDP program, drops."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import AgentError

SYS_NET = Path("/sys/class/net")
XDP_MODES = {1: "native", 2: "skb", 3: "hw", 4: "multi"}
IP_TIMEOUT_S = 5


@dataclass(frozen=True)
class AttachedProgram:
    prog_id: int
    name: str
    mode: str

    def describe(self) -> str:
        return f"id {self.prog_id} name {self.name!r} ({self.mode} mode)"


@dataclass(frozen=True)
class Interface:
    name: str
    ifindex: int
    driver: str
    mtu: int
    attached: AttachedProgram | None
    link_type: str = "ether"  # iproute2's name for the ARPHRD type: ether, none, ...


def _ip_link(name: str) -> dict:
    try:
        result = subprocess.run(
            ["ip", "-d", "-j", "link", "show", "dev", name],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise AgentError("the 'ip' command (iproute2) is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise AgentError(f"'ip link show dev {name}' did not answer in {IP_TIMEOUT_S} s") from exc
    if result.returncode != 0:
        raise AgentError(f"interface {name!r} does not exist on this host")
    return json.loads(result.stdout)[0]


def addresses(name: str) -> list[str]:
    """The interface's IP addresses ("10.0.0.1/24", "fd00::1/64"): what the controller
    needs to tell which captured packets were addressed to this host (journeys). Empty
    when `ip` cannot say: a capture never fails for want of them."""
    try:
        result = subprocess.run(
            ["ip", "-j", "addr", "show", "dev", name],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT_S,
            check=False,
        )
        entries = json.loads(result.stdout) if result.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return []
    found = []
    for entry in entries:
        for info in entry.get("addr_info", []):
            local, prefix = info.get("local"), info.get("prefixlen")
            # IPv6 link-local addresses are on every link: they name no host.
            if local and (info.get("family") == "inet" or info.get("scope") != "link"):
                found.append(f"{local}/{prefix}" if prefix is not None else local)
    return found


def _driver(name: str, link: dict) -> str:
    driver = SYS_NET / name / "device" / "driver"
    if driver.exists():
        return driver.resolve().name
    # Virtual devices (veth, bridge, vlan) have no bus driver; iproute2 names their kind.
    return str(link.get("linkinfo", {}).get("info_kind") or link.get("link_type") or "unknown")


def _attached(link: dict) -> AttachedProgram | None:
    xdp = link.get("xdp")
    if not xdp:
        return None
    prog = xdp.get("prog") or (xdp.get("attached") or [{}])[0].get("prog") or {}
    return AttachedProgram(
        int(prog.get("id", 0)), str(prog.get("name", "?")), XDP_MODES.get(xdp.get("mode"), "?")
    )


def inspect_interface(name: str) -> Interface:
    link = _ip_link(name)
    return Interface(
        name,
        int(link["ifindex"]),
        _driver(name, link),
        int(link.get("mtu", 0)),
        _attached(link),
        str(link.get("link_type", "ether")),
    )


def ifindex(name: str) -> int:
    """The interface's index, from sysfs (no `ip` process)."""
    try:
        return int((SYS_NET / name / "ifindex").read_text())
    except (OSError, ValueError):
        raise AgentError(f"interface {name!r} does not exist on this host") from None


def attached_program(name: str) -> AttachedProgram | None:
    return _attached(_ip_link(name))


def read_os_drops(name: str) -> int:
    """Frames the interface missed before XDP could see them: its receive ring overflowed.

    Counted over the capture window as the difference of two readings; virtual devices
    without a counter read 0. Not rx_dropped: the stack adds to it frames XDP already
    passed (unknown ethertypes such as LLDP, MPLS, PPPoE, STP), which the capture saw
    and wrote, so counting them as missed would count them twice.
    """
    total = 0
    for counter in ("rx_missed_errors", "rx_fifo_errors"):
        path = SYS_NET / name / "statistics" / counter
        try:
            total += int(path.read_text())
        except (OSError, ValueError):
            continue
    return total


def read_rx_packets(name: str) -> int:
    try:
        return int((SYS_NET / name / "statistics" / "rx_packets").read_text())
    except (OSError, ValueError):
        return 0
