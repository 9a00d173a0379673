"""The plan of a lab: its name's rules, every kernel object's name, its subnets and hosts.

Every kernel object name derives from the lab's NAME (see namespaces.py for the layout), so
several labs coexist and `down` finds the leftovers of a crashed `up` by name alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .system import LabError

DEFAULT_NAME = "lab"
DEFAULT_HOSTS = 3
MAX_HOSTS = 200  # host i gets .i in a /24 whose .254 is the bridge
IFNAMSIZ = 15  # longest Linux interface name, in bytes
STATE_BASE = Path("/var/tmp/xdpcap-lab")
BRIDGE_HOST_NUMBER = 254
MAX_LAB_INDEX = 255

# A name is lowercase letters and digits, starting and ending with a letter: since host
# numbers are appended, "lab1" + "1" and "lab" + "11" would otherwise both be "lab11".
_NAME_RE = re.compile(r"[a-z](?:[a-z0-9]*[a-z])?")


@dataclass(frozen=True)
class LabHost:
    """One namespace host: inventory name, namespace, addresses, root-side veth."""

    name: str
    namespace: str
    ipv4: str
    ipv6: str
    veth_root: str


# --------------------------------------------------------------------------- naming


def validate_name(name: str, hosts: int = DEFAULT_HOSTS) -> None:
    """Raise LabError unless NAME and the host count give valid, unambiguous kernel names."""
    if not _NAME_RE.fullmatch(name):
        raise LabError(
            f"lab name {name!r}: use lowercase letters and digits, "
            "starting and ending with a letter"
        )
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"lab {name}: --hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
    for ifname in (bridge_name(name), veth_name(name, hosts)):
        if len(ifname.encode()) > IFNAMSIZ:
            raise LabError(
                f"lab name {name!r} is too long: interface {ifname!r} exceeds {IFNAMSIZ} bytes"
            )


def namespace_name(name: str, number: int) -> str:
    """The network namespace of host NUMBER of lab NAME."""
    return f"xdpcap-{name}{number}"


def bridge_name(name: str) -> str:
    """The bridge of lab NAME in the root namespace."""
    return f"xc{name}-br"


def veth_name(name: str, number: int) -> str:
    """The root-side veth (a bridge port) of host NUMBER of lab NAME."""
    return f"xc{name}-{number}"


def namespace_pattern(name: str) -> re.Pattern[str]:
    """Matches the names of every namespace lab NAME may have made."""
    return re.compile(rf"xdpcap-{re.escape(name)}\d+")


def link_pattern(name: str) -> re.Pattern[str]:
    """Matches the names of every root-namespace link (veths, bridge) lab NAME may have made."""
    return re.compile(rf"xc{re.escape(name)}-(?:\d+|br)")


def lab_networks(index: int) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """The IPv4 /24 and IPv6 /64 of lab index INDEX (1..255)."""
    return (
        ipaddress.IPv4Network(f"198.18.{index}.0/24"),
        # The index is written in decimal digits so that lab 10 reads as ...:cafe:10:: and
        # 198.18.10.x alike; every value up to 255 is also a valid hex group.
        ipaddress.IPv6Network(f"fc00:dead:cafe:{index}::/64"),
    )


def plan_hosts(name: str, hosts: int, index: int) -> list[LabHost]:
    """The HOSTS hosts of lab NAME at lab index INDEX, numbered from 1."""
    v4, v6 = lab_networks(index)
    return [
        LabHost(
            name=f"{name}{i}",
            namespace=namespace_name(name, i),
            ipv4=str(v4[i]),
            ipv6=str(v6[i]),
            veth_root=veth_name(name, i),
        )
        for i in range(1, hosts + 1)
    ]


def default_state_dir(name: str) -> Path:
    """$XDPCAP_LAB_DIR/NAME, or /var/tmp/xdpcap-lab/NAME."""
    base = os.environ.get("XDPCAP_LAB_DIR")
    return (Path(base) if base else STATE_BASE) / name
