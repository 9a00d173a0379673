"""The inventory model: `Inventory`, `Host` and `Group`, their read-only variables (`Vars`,
whose repr hides secrets), and `format_host_list` for `--list-hosts`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .limit import select_hosts

__all__ = ["Group", "Host", "Inventory", "Vars", "format_host_list", "is_secret"]

# Variable names whose values are hidden in every repr (become and SSH passwords, vault keys).
_SECRET_WORDS = ("pass", "secret", "token")


def is_secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


class Vars(Mapping[str, object]):
    """Read-only variables whose repr hides secrets, so a logged Host never shows a password."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, object]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> object:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        shown = (f"{k!r}: {'<hidden>' if is_secret(k) else repr(v)}" for k, v in self.items())
        return "{" + ", ".join(shown) + "}"


@dataclass(frozen=True)
class Host:
    """One inventory host with the connection settings xdpcap uses, resolved and validated."""

    name: str
    address: str
    port: int | None
    user: str | None
    key_file: str | None
    ssh_common_args: str | None
    become: bool
    become_user: str | None
    become_password: str | None = field(repr=False)
    python_interpreter: str | None
    iface: str | None
    filter: str | None  # xdpcap_filter: this host's capture filter expression
    direction: str | None  # xdpcap_direction: in, out or inout
    # In precedence order: 'all' first, the deepest group last.
    groups: tuple[str, ...]
    # Every merged variable; kept out of the repr (and hides secrets in its own repr).
    vars: Mapping[str, object] = field(repr=False, hash=False)
    # xdpcap_xdp_hook: the pinned xdpcap hook map of the host's XDP program (inbound
    # through it, with verdicts); None: found by the agent, or after the program.
    xdp_hook: str | None = None
    # xdpcap_process (None: the run's choice), and xdpcap_pid, xdpcap_comm and
    # xdpcap_container: keep only that process's packets on this host (agent/process/).
    process: bool | None = None
    pid: int | None = None
    comm: str | None = None
    container: str | None = None


@dataclass(frozen=True)
class Group:
    """A group: its hosts (direct and from descendants, in inventory order) and its own vars."""

    name: str
    hosts: tuple[str, ...]
    children: tuple[str, ...]
    vars: Mapping[str, object] = field(hash=False)


@dataclass(frozen=True, eq=False)
class Inventory:
    """A parsed inventory: hosts in file order, groups including 'all' and 'ungrouped'."""

    path: str
    hosts: Mapping[str, Host]
    groups: Mapping[str, Group]

    def select(self, pattern: str | None) -> list[Host]:
        """Hosts a `--limit` pattern selects, in inventory order; None selects every host."""
        if pattern is None:
            return list(self.hosts.values())
        return select_hosts(self, pattern)


def format_host_list(hosts: list[Host], default_iface: str | None) -> str:
    """One aligned line per host, `name  address[:port]  iface`, for `--list-hosts`."""
    rows = [(h.name, _endpoint(h), h.iface or default_iface or "-") for h in hosts]
    if not rows:
        return ""
    name_width = max(len(row[0]) for row in rows)
    endpoint_width = max(len(row[1]) for row in rows)
    return "\n".join(
        f"{name:<{name_width}}  {endpoint:<{endpoint_width}}  {iface}"
        for name, endpoint, iface in rows
    )


def _endpoint(host: Host) -> str:
    if host.port is None:
        return host.address
    if ":" in host.address:  # IPv6: brackets keep the port apart from the address
        return f"[{host.address}]:{host.port}"
    return f"{host.address}:{host.port}"
