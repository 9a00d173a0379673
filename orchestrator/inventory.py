"""Ansible inventories (YAML, INI, `ansible-inventory --list` JSON) and `--limit` patterns.

The rules follow Ansible, so the inventories network teams already keep work unchanged:

* YAML: top-level keys are groups; a group has only ``hosts`` (host -> vars or null), ``vars``
  and ``children`` (groups, recursively). ``all`` and ``ungrouped`` always exist.
* INI: ``[group]``, ``[group:vars]``, ``[group:children]``, ``host key=value ...`` lines.
* JSON: what ``ansible-inventory --list`` prints; keys under ``_meta`` other than ``hostvars``
  are ignored. Host names there are literal (no ranges, no ``:port``), as in Ansible.
* Host keys in YAML and INI may hold ranges (``web[01:03]``, ``db-[a:c]``, ``n[1:9:2]``) and a
  port (``host:2222``, ``[2001:db8::1]:2222``). A bare IPv6 address never carries a port.
* Variables: all < parent group < child group < host. Groups are applied in Ansible's order,
  sorted by (depth, ``ansible_group_priority``, name); a later group wins.

``--limit`` patterns, as Ansible's: ``a,b`` or ``a:b`` union, ``a:&b`` intersection, ``a:!b``
exclusion, ``all`` or ``*``, globs (``web*``), ``~regex``, subscripts (``web[0]``, ``web[1:3]``).
A pattern that reads as one host (``2001:db8::1``, ``host:22``) is never split at its ':'.
The result keeps inventory order.

Where xdpcap is stricter than Ansible, on purpose (Ansible only warns, and a capture would run on
the wrong hosts or with the wrong settings): unknown keys in a group, duplicate keys, empty or
reversed ranges, a ``--limit`` element that matches nothing, and checks on every value that
reaches ssh, sudo or the agent (port, address, user, interface). Jinja2 templates and ``!vault``
values are not evaluated: used in a connection setting, they are an error.
Every problem is one `InventoryError` line ``file:line: what``; secrets never appear in it.
"""

from __future__ import annotations

import ast
import fnmatch
import ipaddress
import itertools
import json
import math
import os
import re
import shlex
import string
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..agent import validate
from .errors import InventoryError, UsageError

__all__ = [
    "Group",
    "Host",
    "Inventory",
    "build_inventory",
    "check_structure",
    "format_host_list",
    "load_inventory",
    "parse_inventory_text",
    "split_pattern",
]

# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------

# Variable names whose values are hidden in every repr (become and SSH passwords, vault keys).
_SECRET_WORDS = ("pass", "secret", "token")


def _is_secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


class _Vars(Mapping[str, object]):
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
        shown = (f"{k!r}: {'<hidden>' if _is_secret(k) else repr(v)}" for k, v in self.items())
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
        return _select(self, pattern)


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and parse one inventory file (YAML, INI or JSON, told apart by content)."""
    source = os.fspath(path)
    return parse_inventory_text(_read_text(source), source)


def check_structure(path: str | os.PathLike[str]) -> None:
    """This reader's checks of an inventory file's structure alone, variables unresolved.

    For a static file that another reader (ansible-core's) reads: Ansible only warns about
    an unknown key in a group, a duplicate key, or a file it then reads as something else,
    and these are errors here. Templates and `!vault` values pass (they are not resolved).
    """
    source = os.fspath(path)
    builder = _Builder(source)
    _read_any(builder, _read_text(source).lstrip("\ufeff"), Path(source).suffix.lower())
    _Resolver(builder)  # group cycles
    if not builder.hosts:
        builder.fail(1, "inventory defines no hosts")


def _read_text(source: str) -> str:
    try:
        with open(source, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise InventoryError(f"{source}: inventory file not found") from None
    except IsADirectoryError:
        raise InventoryError(f"{source}: is a directory; give one inventory file") from None
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InventoryError(f"{source}: cannot read inventory: {exc.strerror}") from None
    return text


def parse_inventory_text(text: str, source: str = "<string>") -> Inventory:
    """Parse inventory text; `source` names it in messages and its suffix hints the format."""
    builder = _Builder(source)
    _read_any(builder, text.lstrip("\ufeff"), Path(source).suffix.lower())
    return builder.build()


class GroupParts(NamedTuple):
    """One group as another reader (ansible-core's) found it: its own members and variables."""

    children: tuple[str, ...]
    hosts: tuple[str, ...]  # direct members
    vars: Mapping[str, object]


def build_inventory(
    source: str, groups: Mapping[str, GroupParts], host_vars: Mapping[str, Mapping[str, object]]
) -> Inventory:
    """An Inventory from another reader's groups and per-host variables, in `host_vars` order.

    The same resolution and checks as a file read here (precedence, ungrouped, every value
    that reaches ssh, sudo or the agent); messages name `source` without a line number.
    """
    builder = _Builder(source)
    for name, parts in groups.items():
        builder.add_group(name, None)
        builder.group_vars(
            name, {k: _Var(v, None, f"group '{name}'") for k, v in parts.vars.items()}
        )
    for name, parts in groups.items():
        for child in parts.children:
            builder.add_child(name, child, None)
    for name, variables in host_vars.items():
        member_of = [g for g, parts in groups.items() if name in parts.hosts] or ["ungrouped"]
        for group in member_of:
            builder.add_host(
                group, name, None, {k: _Var(v, None, "host") for k, v in variables.items()}
            )
    return builder.build()


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


# --------------------------------------------------------------------------------------------
# Values that reach SSH, the agent or file names: checked once, here
# --------------------------------------------------------------------------------------------


class _Problem(Exception):
    """A value is wrong; the caller adds the file, line and host or group to the message."""


def _bad_chars(text: str) -> bool:
    return any(ch.isspace() or not ch.isprintable() for ch in text)


def _check_host_name(name: str) -> None:
    # The name becomes a file name (hosts/<name>.pcapng) and the pcapng interface name.
    if not name or name in (".", "..") or "/" in name or _bad_chars(name):
        raise _Problem(f"host name {name!r} is not usable (empty, '/', whitespace or control)")


def _check_remote_word(what: str, value: str) -> None:
    # Addresses and user names are handed to ssh and sudo: a leading '-' would read as an option.
    if not value:
        raise _Problem(f"{what} is empty")
    if value.startswith("-"):
        raise _Problem(f"{what} {value!r} must not start with '-'")
    if _bad_chars(value):
        raise _Problem(f"{what} {value!r} contains whitespace or control characters")


def _check_iface(value: str) -> None:
    """Linux dev_valid_name(): 1-15 bytes, not '.' or '..', no '/', ':' or whitespace."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= 15:
        raise _Problem(f"interface {value!r} must be 1 to 15 bytes long")
    if value in (".", ".."):
        raise _Problem(f"interface {value!r} is not a valid name")
    if any(ch in "/:" or ch.isspace() or not ch.isprintable() for ch in value):
        raise _Problem(f"interface {value!r} contains '/', ':', whitespace or control characters")
    # Linux would take `eth0;id` or `-x`; xdpcap hands the name to a remote shell and the
    # agent, so it takes only what validate accepts: refused here, the message names the
    # file, line and host instead of an anonymous interface.
    try:
        validate.interface_name(value)
    except UsageError as exc:
        raise _Problem(str(exc)) from None


def _check_direction(_what: str, value: str) -> None:
    if value not in validate.DIRECTIONS:
        raise _Problem(f"{value!r} is not one of {', '.join(validate.DIRECTIONS)}")


def _check_pin(_what: str, value: str) -> None:
    # A path on the host's bpffs, passed as one word to the agent.
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise _Problem(f"{value!r} is not an absolute path without spaces")


def _check_ssh_args(_what: str, value: str) -> None:
    # Read as ssh's command-line words (for UserKnownHostsFile): quoting must close.
    try:
        shlex.split(value)
    except ValueError as exc:
        raise _Problem(f"{value!r} cannot be split into ssh arguments ({exc})") from None


def _check_interpreter(_what: str, value: str) -> None:
    # Run on the host as the agent's interpreter, through sudo: a plain path or command
    # name, no arguments ('/usr/bin/env python3' included), no option.
    if not re.fullmatch(r"[A-Za-z0-9_./+-]+", value) or value.startswith("-"):
        raise _Problem(
            f"interpreter {value!r} is not a plain path (letters, digits and _ . + - /, "
            "no spaces, not starting with '-')"
        )


def _parse_port(value: object) -> int:
    # bool is an int in Python; `ansible_port: yes` is a mistake, not port 1.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Problem(f"port {value!r} is not a number")
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise _Problem(f"port '{value}' is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _Problem(f"port '{value}' out of range 1-65535")
    return port


# Ansible's boolean(): what `ansible_become` may say.
_TRUE = frozenset({"y", "yes", "on", "1", "true", "t"})
_FALSE = frozenset({"n", "no", "off", "0", "false", "f"})


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Problem(f"{value!r} is not a boolean (use true/false, yes/no, 1/0)")


# --------------------------------------------------------------------------------------------
# Host keys: ranges, ports, IPv6
# --------------------------------------------------------------------------------------------

# A numeric [x:y(:z)] range may stand for an IPv6 component ('2001:db8::[1:3]').
_NUMERIC_RANGE = re.compile(r"\[[0-9]+:[0-9]+(?::[0-9]+)?\]")
# Any [..] group, for splitting a host key into literal text and ranges.
_BRACKETED = re.compile(r"(\[[^\[\]]*\])")
# Ansible's alphabetic range order: [x:B] is x, y, z, A, B.
_LETTERS = string.ascii_letters
# Far beyond any real capture, small enough that a typo ([1:9999999]) fails fast.
_MAX_EXPANDED_HOSTS = 65536


def _is_ipv6(text: str) -> bool:
    candidate = _NUMERIC_RANGE.sub("0", text)
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _split_host_port(key: str) -> tuple[str, str | None]:
    """Split a host key into (host pattern, port text or None), as Ansible's parse_address does.

    '[addr]:port' brackets an IPv6 address (or a name); a bare IPv6 address has no port;
    otherwise one ':' outside [..] ranges separates the port.
    """
    bracketed = re.fullmatch(r"\[([^\[\]]+)\](?::(.*))?", key)
    if bracketed and (_is_ipv6(bracketed[1]) or (":" not in bracketed[1] and bracketed[2])):
        return bracketed[1], bracketed[2]
    if _is_ipv6(key):
        return key, None
    depth = 0
    colons = []
    for index, ch in enumerate(key):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == ":" and depth == 0:
            colons.append(index)
    if not colons:
        return key, None
    if len(colons) > 1:
        raise _Problem(
            f"host {key!r} has several ':'; write an IPv6 address with a port as [address]:port"
        )
    return key[: colons[0]], key[colons[0] + 1 :]


def _range_values(body: str) -> list[str]:
    """The values of one '[start:end(:step)]' range, numeric (zero padding kept) or a-z/A-Z."""
    bounds = body.split(":")
    if len(bounds) not in (2, 3):
        raise _Problem(f"range '[{body}]' must be [start:end] or [start:end:step]")
    start, end = bounds[0] or "0", bounds[1]  # Ansible reads an empty start as 0
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not re.fullmatch(r"[0-9]+", step_text) or int(step_text) == 0:
        raise _Problem(f"range '[{body}]' step must be a positive integer")
    step = int(step_text)
    if re.fullmatch(r"[0-9]+", start) and re.fullmatch(r"[0-9]+", end):
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        if width and len(end) != width:
            raise _Problem(f"range '[{body}]' is zero-padded: start and end need the same width")
        first, last = int(start), int(end)
        if last - first > _MAX_EXPANDED_HOSTS * step:
            raise _Problem(f"range '[{body}]' is larger than {_MAX_EXPANDED_HOSTS} hosts")
        values = [str(n).zfill(width) for n in range(first, last + 1, step)]
    elif len(start) == len(end) == 1 and start in _LETTERS and end in _LETTERS:
        values = list(_LETTERS[_LETTERS.index(start) : _LETTERS.index(end) + 1 : step])
    else:
        raise _Problem(f"range '[{body}]' must be numeric or single letters")
    if not values:
        raise _Problem(f"range '[{body}]' is empty: start is after end")
    return values


def _expand_ranges(pattern: str) -> list[str]:
    """Every host name a pattern with [x:y] ranges stands for, in order."""
    pieces: list[list[str]] = []
    for index, piece in enumerate(_BRACKETED.split(pattern)):
        if index % 2:
            pieces.append(_range_values(piece[1:-1]))
        elif "[" in piece or "]" in piece:
            raise _Problem(f"host {pattern!r} has an unbalanced '[' or ']'")
        else:
            pieces.append([piece])
    if math.prod(len(values) for values in pieces) > _MAX_EXPANDED_HOSTS:
        raise _Problem(f"host {pattern!r} expands to more than {_MAX_EXPANDED_HOSTS} hosts")
    return ["".join(parts) for parts in itertools.product(*pieces)]


# --------------------------------------------------------------------------------------------
# Building an inventory: the three readers fill a _Builder, build() resolves and validates
# --------------------------------------------------------------------------------------------


class _Var(NamedTuple):
    value: object
    line: int | None
    origin: str  # "host" or "group 'web'": where a wrong value came from, for the message


@dataclass
class _GroupDraft:
    line: int | None
    vars: dict[str, _Var] = field(default_factory=dict)
    children: dict[str, int | None] = field(default_factory=dict)  # child -> line linking it
    hosts: dict[str, None] = field(default_factory=dict)  # direct members, an ordered set


@dataclass
class _HostDraft:
    line: int | None
    vars: dict[str, _Var] = field(default_factory=dict)


_IMPLICIT_GROUPS = ("all", "ungrouped")


class _Builder:
    """Collects groups, hosts and variables from any format; build() resolves them."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.groups: dict[str, _GroupDraft] = {name: _GroupDraft(None) for name in _IMPLICIT_GROUPS}
        self.hosts: dict[str, _HostDraft] = {}

    def fail(self, line: int | None, message: str) -> NoReturn:
        where = f"{self.source}:{line}" if line else self.source
        # One line, always: a value with a newline must not split the message.
        raise InventoryError(f"{where}: {' '.join(message.split())}")

    def add_group(self, name: str, line: int | None) -> None:
        if not name or _bad_chars(name):
            self.fail(line, f"group name {name!r} is empty or has whitespace or control characters")
        self.groups.setdefault(name, _GroupDraft(line))

    def add_child(self, parent: str, child: str, line: int | None) -> None:
        if child == "all":
            self.fail(line, f"group 'all' cannot be a child of group '{parent}'")
        self.add_group(child, line)
        self.groups[parent].children.setdefault(child, line)

    def group_vars(self, group: str, variables: dict[str, _Var]) -> None:
        self.groups[group].vars.update(variables)

    def add_host_key(
        self, group: str, key: str, line: int | None, variables: dict[str, _Var]
    ) -> None:
        """A YAML or INI host key: may hold ranges and a port, which acts as a host-level var."""
        try:
            pattern, port_text = _split_host_port(key)
            port = None if port_text is None else _parse_port(port_text)
            names = _expand_ranges(pattern)
        except _Problem as problem:
            self.fail(line, f"group '{group}': {problem}")
        for name in names:
            # Ansible sets the key's port first, so an explicit ansible_port next to it wins.
            port_var = {} if port is None else {"ansible_port": _Var(port, line, "host")}
            self.add_host(group, name, line, {**port_var, **variables})

    def add_host(self, group: str, name: str, line: int | None, variables: dict[str, _Var]) -> None:
        try:
            _check_host_name(name)
        except _Problem as problem:
            self.fail(line, f"group '{group}': {problem}")
        self.hosts.setdefault(name, _HostDraft(line)).vars.update(variables)
        self.groups[group].hosts[name] = None

    def build(self) -> Inventory:
        resolver = _Resolver(self)  # first: a cycle is a better message than "no hosts"
        if not self.hosts:
            self.fail(1, "inventory defines no hosts")
        return resolver.inventory()


class _Resolver:
    """Turns a finished _Builder into an Inventory: group tree, precedence, host settings."""

    def __init__(self, builder: _Builder) -> None:
        self.b = builder
        self.parents = self._link_parentless_groups()
        self._check_cycles()
        self.depth: dict[str, int] = {}
        self.ancestors: dict[str, frozenset[str]] = {}
        self._place_ungrouped()

    def _link_parentless_groups(self) -> dict[str, list[str]]:
        # As Ansible's reconcile_inventory: a group nobody claims is a child of 'all'.
        parents: dict[str, list[str]] = {name: [] for name in self.b.groups}
        for name, draft in self.b.groups.items():
            for child in draft.children:
                parents[child].append(name)
        for name, found in parents.items():
            if name != "all" and not found:
                self.b.groups["all"].children[name] = None
                found.append("all")
        return parents

    def _check_cycles(self) -> None:
        done: set[str] = set()

        def visit(name: str, path: tuple[str, ...]) -> None:
            for child, line in self.b.groups[name].children.items():
                if child in path:
                    self.b.fail(line, f"group '{child}' is its own ancestor (via '{name}')")
                if child not in done:
                    visit(child, (*path, child))
            done.add(name)

        for name in self.b.groups:
            if name not in done:
                visit(name, (name,))

    def _depth(self, name: str) -> int:
        # Longest path from 'all', as Ansible's Group.depth: the deeper group wins.
        if name not in self.depth:
            found = self.parents[name]
            self.depth[name] = 1 + max(self._depth(p) for p in found) if found else 0
        return self.depth[name]

    def _ancestors(self, name: str) -> frozenset[str]:
        if name not in self.ancestors:
            above = (self._ancestors(p) for p in self.parents[name])
            self.ancestors[name] = frozenset({name}).union(*above)
        return self.ancestors[name]

    def _place_ungrouped(self) -> None:
        # A host is 'ungrouped' exactly when 'all' is its only other group, as in Ansible.
        named = {
            host
            for group, draft in self.b.groups.items()
            if group not in _IMPLICIT_GROUPS
            for host in draft.hosts
        }
        ungrouped = self.b.groups["ungrouped"].hosts
        for host in self.b.hosts:
            if host in named:
                ungrouped.pop(host, None)
            else:
                ungrouped.setdefault(host, None)

    def _priority(self, name: str) -> int:
        var = self.b.groups[name].vars.get("ansible_group_priority")
        if var is None:
            return 1
        if isinstance(var.value, int) and not isinstance(var.value, bool):
            return var.value
        if isinstance(var.value, str) and re.fullmatch(r"-?[0-9]+", var.value.strip()):
            return int(var.value)
        self.b.fail(
            var.line, f"group '{name}': ansible_group_priority {var.value!r} is not a number"
        )

    def _host_groups(self, host: str) -> list[str]:
        direct = [g for g, draft in self.b.groups.items() if host in draft.hosts]
        every = frozenset({"all"}).union(*(self._ancestors(g) for g in direct))
        return sorted(every, key=lambda g: (self._depth(g), self._priority(g), g))

    def inventory(self) -> Inventory:
        hosts = {name: self._host(name, draft) for name, draft in self.b.hosts.items()}
        groups = {name: self._group(name, draft, hosts) for name, draft in self.b.groups.items()}
        return Inventory(self.b.source, MappingProxyType(hosts), MappingProxyType(groups))

    def _group(self, name: str, draft: _GroupDraft, hosts: Mapping[str, Host]) -> Group:
        members = tuple(h.name for h in hosts.values() if name in h.groups)
        values = {key: var.value for key, var in draft.vars.items()}
        return Group(name, members, tuple(draft.children), _Vars(values))

    def _host(self, name: str, draft: _HostDraft) -> Host:
        groups = self._host_groups(name)
        merged: dict[str, _Var] = {}
        for group in groups:
            merged.update(self.b.groups[group].vars)
        merged.update(draft.vars)
        return _HostSettings(self.b, name, draft.line, merged).host(tuple(groups))


# The inventory variables behind each Host field, in the order the ssh and sudo plugins list
# them. Current ansible-core takes the first name that is set (older releases took the last),
# so the modern name beats its old alias: `ansible_host` over `ansible_ssh_host`.
_VAR_NAMES: dict[str, tuple[str, ...]] = {
    "address": ("ansible_host", "ansible_ssh_host"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "user": ("ansible_user", "ansible_ssh_user"),
    "key_file": ("ansible_private_key_file", "ansible_ssh_private_key_file"),
    "ssh_common_args": ("ansible_ssh_common_args",),
    "become": ("ansible_become",),
    "become_user": ("ansible_become_user", "ansible_sudo_user"),
    "become_password": ("ansible_become_password", "ansible_become_pass", "ansible_sudo_pass"),
    "python_interpreter": ("ansible_python_interpreter",),
    "iface": ("xdpcap_iface",),
    "filter": ("xdpcap_filter",),
    "direction": ("xdpcap_direction",),
    "xdp_hook": ("xdpcap_xdp_hook",),
}


class _Vaulted:
    """An `!vault` value: kept opaque, since xdpcap cannot decrypt it."""

    def __repr__(self) -> str:
        return "<vault-encrypted>"


class _HostSettings:
    """Reads and checks one host's connection settings from its merged variables."""

    def __init__(
        self, builder: _Builder, host: str, line: int | None, merged: dict[str, _Var]
    ) -> None:
        self.b = builder
        self.name = host
        self.line = line
        self.merged = merged

    def host(self, groups: tuple[str, ...]) -> Host:
        key_file = self.text("key_file")
        return Host(
            name=self.name,
            address=self.address(),
            port=self.port(),
            user=self.text("user", _check_remote_word),
            key_file=None if key_file is None else os.path.expanduser(key_file),
            ssh_common_args=self.text("ssh_common_args", _check_ssh_args),
            become=self.flag("become"),
            become_user=self.text("become_user", _check_remote_word),
            become_password=self.text("become_password", secret=True),
            python_interpreter=self.text("python_interpreter", _check_interpreter),
            iface=self.text("iface", lambda _what, value: _check_iface(value)),
            filter=self.text("filter"),
            direction=self.text("direction", _check_direction),
            xdp_hook=self.text("xdp_hook", _check_pin),
            groups=groups,
            vars=_Vars({key: var.value for key, var in self.merged.items()}),
        )

    def pick(self, field_name: str) -> tuple[str, _Var] | None:
        for name in _VAR_NAMES[field_name]:
            var = self.merged.get(name)
            if var is not None and var.value is not None:  # Ansible skips unset (None) values
                return name, var
        return None

    def fail(self, name: str, var: _Var, message: str) -> NoReturn:
        where = "" if var.origin == "host" else f" (set in {var.origin})"
        self.b.fail(var.line, f"host '{self.name}': {name}: {message}{where}")

    def text(
        self,
        field_name: str,
        check: Callable[[str, str], None] | None = None,
        *,
        secret: bool = False,
    ) -> str | None:
        picked = self.pick(field_name)
        if picked is None:
            return None
        name, var = picked
        value = var.value
        if isinstance(value, _Vaulted):
            self.fail(name, var, "is vault-encrypted; xdpcap cannot decrypt it")
        # YAML reads `ansible_user: 1000` as a number; Ansible would use it as text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.fail(name, var, f"must be a string, found {type(value).__name__}")
        shown = "value" if secret else repr(value)
        if "{{" in value or "{%" in value:
            self.fail(name, var, f"{shown} is a Jinja2 template; xdpcap does not evaluate them")
        if secret:
            if "\0" in value or "\n" in value:
                self.fail(name, var, "contains a NUL or newline")
            return value
        if _bad_chars(value.replace(" ", "")):
            self.fail(name, var, f"{shown} contains control characters")
        try:
            if check is not None:
                check(name, value)
        except _Problem as problem:
            self.fail(name, var, str(problem))
        return value

    def address(self) -> str:
        address = self.text("address", _check_remote_word)
        if address is not None:
            return address
        try:  # no ansible_host: ssh gets the inventory name itself
            _check_remote_word("address", self.name)
        except _Problem as problem:
            self.b.fail(self.line, f"host '{self.name}': {problem}; set ansible_host")
        return self.name

    def port(self) -> int | None:
        picked = self.pick("port")
        if picked is None:
            return None
        name, var = picked
        try:
            return _parse_port(var.value)
        except _Problem as problem:
            self.fail(name, var, str(problem))

    def flag(self, field_name: str) -> bool:
        picked = self.pick(field_name)
        if picked is None:
            return False
        name, var = picked
        try:
            return _parse_bool(var.value)
        except _Problem as problem:
            self.fail(name, var, str(problem))


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------

_YAML_SUFFIXES = (".yml", ".yaml")
# A '[section]' line: text that fails as YAML but has one is reported as INI.
_INI_SECTION_LINE = re.compile(r"^\s*\[.*\]\s*$", re.MULTILINE)
# YAML reads these as line breaks; inside a JSON string they would shift lines and change values.
_YAML_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _read_any(builder: _Builder, text: str, suffix: str) -> None:
    """Tell the format by content: a JSON object, else a YAML mapping, else INI.

    When nothing fits, the suffix and a leading '{' choose which error to report: a broken
    hosts.yml should say "invalid YAML", not what the INI reader made of it.
    """
    if not text.strip():
        builder.fail(1, "inventory is empty")
    looks_like_json = text.lstrip().startswith("{")
    json_error: InventoryError | None = None
    if looks_like_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            json_error = InventoryError(f"{builder.source}:{exc.lineno}: invalid JSON: {exc.msg}")
        except RecursionError:
            json_error = InventoryError(f"{builder.source}:1: invalid JSON: nested too deeply")
        else:
            _read_json_text(builder, text, data)
            return
    yaml_error: InventoryError | None = None
    try:
        doc = _Doc(builder, text, json_mode=False)
    except InventoryError as exc:
        yaml_error = exc
    else:
        if isinstance(doc.root, MappingNode):
            _read_flow_or_block_yaml(doc, builder, json_error if suffix == ".json" else None)
            return
    meant = json_error or _other_format_error(builder, text, suffix, yaml_error)
    if looks_like_json:
        assert meant is not None
        raise meant  # INI never starts with '{'
    try:
        _read_ini(builder, text)
    except InventoryError:
        if meant is not None:
            raise meant from None
        raise


def _read_flow_or_block_yaml(
    doc: _Doc, builder: _Builder, json_error: InventoryError | None
) -> None:
    try:
        _read_yaml(doc, builder)
    except InventoryError:
        # '{...}' in a .json file that is not JSON but happens to be flow YAML: JSON was meant.
        if json_error is not None:
            raise json_error from None
        raise


def _other_format_error(
    builder: _Builder, text: str, suffix: str, yaml_error: InventoryError | None
) -> InventoryError | None:
    """The error to show if the INI reader fails too, or None to show the INI reader's."""
    if yaml_error is not None and (suffix in _YAML_SUFFIXES or not _INI_SECTION_LINE.search(text)):
        return yaml_error
    if suffix in _YAML_SUFFIXES:
        return InventoryError(f"{builder.source}:1: a YAML inventory must be a mapping of groups")
    if suffix == ".json":
        return InventoryError(f"{builder.source}:1: a JSON inventory must be an object")
    return None


def _read_json_text(builder: _Builder, text: str, data: dict[str, object]) -> None:
    if any(ch in text for ch in _YAML_LINE_BREAKS):
        # Rare: fall back to a re-serialised copy and give up line numbers, not correctness.
        doc = _Doc(builder, json.dumps(data, indent=1), json_mode=True, lines_known=False)
    else:
        # JSON allows tabs between tokens, YAML does not; raw tabs cannot occur inside JSON
        # strings, so replacing them keeps every value and every line number.
        doc = _Doc(builder, text.replace("\t", " "), json_mode=True)
    if _is_list_json(data):
        _read_list_json(doc, builder)
    else:
        _read_yaml(doc, builder)  # a YAML-shaped inventory written as JSON


def _is_list_json(data: dict[str, object]) -> bool:
    """`ansible-inventory --list` shape: `_meta`, or groups whose hosts/children are lists."""

    def list_shaped(group: object) -> bool:
        if isinstance(group, list):
            return True
        return isinstance(group, dict) and any(
            isinstance(group.get(key), list) for key in ("hosts", "children")
        )

    return "_meta" in data or any(list_shaped(group) for group in data.values())


# --------------------------------------------------------------------------------------------
# YAML (and JSON, which is read through YAML nodes to keep line numbers)
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that knows Ansible's tags: !unsafe is a plain string, !vault stays opaque."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
_Loader.add_constructor("!vault", lambda loader, node: _Vaulted())

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "null" if node.tag == _NULL_TAG else "a scalar"


def _is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG)


class _Doc:
    """A composed document whose nodes keep line numbers for messages."""

    def __init__(
        self, builder: _Builder, text: str, *, json_mode: bool, lines_known: bool = True
    ) -> None:
        self.b = builder
        self.json_mode = json_mode
        self.lines_known = lines_known
        self._loader = _Loader(text)
        self._flattened: set[int] = set()
        try:
            self.root: Node | None = self._loader.get_single_node()
        except yaml.YAMLError as exc:
            self._yaml_fail(exc)
        except RecursionError:
            builder.fail(1, "YAML nesting is too deep")

    def _yaml_fail(self, exc: yaml.YAMLError) -> NoReturn:
        # Only the problem and its line: the str() of a YAML error spans several lines.
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            parts = [exc.context, exc.problem]
            message = "; ".join(part for part in parts if part)
            self.b.fail(mark.line + 1 if mark else 1, f"invalid YAML: {message}")
        self.b.fail(1, f"invalid YAML: {exc}")

    def line(self, node: Node) -> int | None:
        return node.start_mark.line + 1 if self.lines_known else None

    def pairs(self, node: MappingNode, what: str) -> list[tuple[str, Node, int | None]]:
        """(key, value node, key line) of a mapping; a duplicate key is an error."""
        if id(node) not in self._flattened:
            self._check_duplicates(node, what)
            if not self.json_mode:
                try:
                    self._loader.flatten_mapping(node)  # resolve YAML merge keys ('<<: *base')
                except yaml.YAMLError as exc:
                    self._yaml_fail(exc)
            self._flattened.add(id(node))
        result: dict[str, tuple[Node, int | None]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.b.fail(
                    self.line(key_node), f"{what}: a key must be a name, found {_kind(key_node)}"
                )
            result[key_node.value] = (value_node, self.line(key_node))
        return [(key, value, line) for key, (value, line) in result.items()]

    def _check_duplicates(self, node: MappingNode, what: str) -> None:
        seen: dict[str, int | None] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            if key_node.value in seen:
                first = seen[key_node.value]
                self.b.fail(
                    self.line(key_node),
                    f"{what}: duplicate key '{key_node.value}' (first at line {first})",
                )
            seen[key_node.value] = self.line(key_node)

    def value(self, node: Node) -> object:
        if self.json_mode:
            return _json_value(node)
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._yaml_fail(exc)

    def entries(
        self, node: Node, what: str, *, allow_string: bool
    ) -> list[tuple[str, Node | None, int | None]]:
        """A section (hosts, vars, children): null is empty; Ansible reads a string as one key."""
        if _is_null(node):
            return []
        if allow_string and isinstance(node, ScalarNode):
            return [(node.value, None, self.line(node))]
        if not isinstance(node, MappingNode):
            self.b.fail(self.line(node), f"{what} must be a mapping, found {_kind(node)}")
        return list(self.pairs(node, what))

    def variables(self, node: Node | None, what: str, origin: str) -> dict[str, _Var]:
        """Variables of a host or group; `what` names them in messages ("group 'web': vars")."""
        entries = [] if node is None else self.entries(node, what, allow_string=False)
        return {key: _Var(self.value(value), line, origin) for key, value, line in entries}


def _json_value(node: Node) -> object:
    if isinstance(node, MappingNode):
        return {key.value: _json_value(value) for key, value in node.value}
    if isinstance(node, SequenceNode):
        return [_json_value(item) for item in node.value]
    # Plain scalars in JSON are numbers, true, false and null: read them as JSON does
    # (YAML 1.1 would read 1e5 as a string).
    return json.loads(node.value) if node.style is None else node.value


def _read_yaml(doc: _Doc, builder: _Builder) -> None:
    assert isinstance(doc.root, MappingNode)  # checked by the caller
    for name, node, line in doc.pairs(doc.root, "inventory"):
        if name == "plugin":
            builder.fail(
                line,
                "this is an inventory plugin configuration; export it with "
                "'ansible-inventory -i FILE --list > hosts.json' and use that",
            )
        _read_yaml_group(doc, builder, name, node, line, parent=None)


def _read_yaml_group(
    doc: _Doc,
    builder: _Builder,
    name: str,
    node: Node | None,
    line: int | None,
    parent: str | None,
) -> None:
    builder.add_group(name, line)
    if parent is not None:
        builder.add_child(parent, name, line)
    if _is_null(node):
        return
    assert node is not None
    if not isinstance(node, MappingNode):
        builder.fail(
            doc.line(node),
            f"group '{name}' must be a mapping of hosts, vars and children, found {_kind(node)}",
        )
    where = f"group '{name}'"
    for key, value, key_line in doc.pairs(node, where):
        if key == "hosts":
            for host, host_node, host_line in doc.entries(
                value, f"{where}: hosts", allow_string=True
            ):
                what = f"{where}: host '{host}': variables"
                variables = doc.variables(host_node, what, "host")
                builder.add_host_key(name, host, host_line, variables)
        elif key == "vars":
            builder.group_vars(name, doc.variables(value, f"{where}: vars", where))
        elif key == "children":
            for child, child_node, child_line in doc.entries(
                value, f"{where}: children", allow_string=True
            ):
                _read_yaml_group(doc, builder, child, child_node, child_line, parent=name)
        else:
            builder.fail(
                key_line, f"{where}: unknown key '{key}' (a group has only hosts, vars, children)"
            )


def _read_list_json(doc: _Doc, builder: _Builder) -> None:
    assert isinstance(doc.root, MappingNode)
    meta: Node | None = None
    for name, node, line in doc.pairs(doc.root, "inventory"):
        if name == "_meta":
            meta = node
        else:
            _read_json_group(doc, builder, name, node, line)
    # After the groups: hostvars only describe hosts the groups list (Ansible ignores others).
    if meta is not None:
        _read_json_hostvars(doc, builder, meta)


def _read_json_group(doc: _Doc, builder: _Builder, name: str, node: Node, line: int | None) -> None:
    builder.add_group(name, line)
    where = f"group '{name}'"
    if isinstance(node, SequenceNode):  # the short form scripts print: "group": ["host", ...]
        key = ScalarNode("tag:yaml.org,2002:str", "hosts", node.start_mark, node.end_mark)
        node = MappingNode("tag:yaml.org,2002:map", [(key, node)], node.start_mark, node.end_mark)
    for key, value, key_line in doc.entries(node, where, allow_string=False):
        assert value is not None
        if key == "hosts":
            for host, host_line in _json_names(doc, value, f"{where}: hosts"):
                builder.add_host(name, host, host_line, {})
        elif key == "children":
            for child, child_line in _json_names(doc, value, f"{where}: children"):
                builder.add_child(name, child, child_line)
        elif key == "vars":
            builder.group_vars(name, doc.variables(value, f"{where}: vars", where))
        else:
            builder.fail(
                key_line, f"{where}: unknown key '{key}' (a group has only hosts, vars, children)"
            )


def _json_names(doc: _Doc, node: Node, what: str) -> list[tuple[str, int | None]]:
    if _is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        doc.b.fail(doc.line(node), f"{what} must be a list of names, found {_kind(node)}")
    names = []
    for item in node.value:
        # In JSON a quoted scalar is a string; plain ones are numbers, booleans or null.
        if not isinstance(item, ScalarNode) or item.style is None:
            doc.b.fail(doc.line(item), f"{what}: each entry must be a string, found {_kind(item)}")
        names.append((item.value, doc.line(item)))
    return names


def _read_json_hostvars(doc: _Doc, builder: _Builder, node: Node) -> None:
    for key, value, _ in doc.entries(node, "_meta", allow_string=False):
        if key != "hostvars":
            continue  # newer ansible-inventory adds keys xdpcap does not need
        assert value is not None
        for host, host_node, _host_line in doc.entries(
            value, "_meta: hostvars", allow_string=False
        ):
            if host in builder.hosts:
                variables = doc.variables(host_node, f"_meta: hostvars: '{host}'", "host")
                builder.hosts[host].vars.update(variables)


# --------------------------------------------------------------------------------------------
# INI
# --------------------------------------------------------------------------------------------

# '[name]' or '[name:type]', then an optional comment; a name has no ':', ']' or whitespace.
_INI_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")


def _ini_value(text: str) -> object:
    """Ansible reads an INI value as a Python literal when it is one (22 -> int), else as text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


class _IniReader:
    """Reads INI lines into a builder; remembers groups named before they are defined."""

    def __init__(self, builder: _Builder) -> None:
        self.b = builder
        self.group = "ungrouped"  # hosts before any section header are ungrouped
        self.kind = "hosts"
        self.defined = set(_IMPLICIT_GROUPS)
        # Groups only named in [x:vars] or [y:children]: an error unless defined later.
        self.pending: dict[str, tuple[int, str]] = {}

    def read(self, text: str) -> None:
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if line and line[0] not in "#;":
                self.line(line, number)
        for line_number, message in self.pending.values():
            self.b.fail(line_number, message)

    def line(self, line: str, number: int) -> None:
        section = _INI_SECTION.match(line)
        if section:
            self.section(section[1], section[2] or "hosts", number)
        elif line.startswith("[") and line.endswith("]"):
            self.b.fail(number, f"invalid section header {line!r} (no spaces or ':' in names)")
        elif self.kind == "hosts":
            self.host_line(line, number)
        elif self.kind == "vars":
            self.var_line(line, number)
        else:
            self.child_line(line, number)

    def section(self, group: str, kind: str, number: int) -> None:
        if kind not in ("hosts", "vars", "children"):
            self.b.fail(number, f"section [{group}:{kind}] has unknown type '{kind}'")
        self.group, self.kind = group, kind
        if kind == "vars":
            if group not in self.defined:
                message = f"section [{group}:vars] is for undefined group '{group}'"
                self.pending.setdefault(group, (number, message))
            return
        self.b.add_group(group, number)
        self.defined.add(group)
        self.pending.pop(group, None)

    def host_line(self, line: str, number: int) -> None:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            self.b.fail(number, f"group '{self.group}': cannot split host line: {exc}")
        if not tokens:
            return
        key, variables = tokens[0], {}
        for position, token in enumerate(tokens[1:], start=2):
            name, equals, value = token.partition("=")
            if not equals or not name:
                # The word itself is not shown: it may be a password missing its 'name='.
                self.b.fail(number, f"host '{key}': word {position} is not key=value")
            variables[name] = _Var(_ini_value(value), number, "host")
        self.b.add_host_key(self.group, key, number, variables)

    def var_line(self, line: str, number: int) -> None:
        name, equals, value = line.partition("=")
        if not equals or not name.strip():
            self.b.fail(number, f"section [{self.group}:vars]: expected key=value")
        if self.group in self.defined:
            self.b.add_group(self.group, number)
        else:  # still pending: keep the vars, the error comes at the end if never defined
            self.b.groups.setdefault(self.group, _GroupDraft(number))
        var = _Var(_ini_value(value.strip()), number, f"group '{self.group}'")
        self.b.group_vars(self.group, {name.strip(): var})

    def child_line(self, line: str, number: int) -> None:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            self.b.fail(number, f"section [{self.group}:children]: {exc}")
        if len(tokens) != 1:
            self.b.fail(number, f"section [{self.group}:children]: expected one group name")
        child = tokens[0]
        if child not in self.defined:
            message = f"section [{self.group}:children] includes undefined group '{child}'"
            self.pending.setdefault(child, (number, message))
        self.b.add_child(self.group, child, number)


def _read_ini(builder: _Builder, text: str) -> None:
    _IniReader(builder).read(text)


# --------------------------------------------------------------------------------------------
# --limit patterns
# --------------------------------------------------------------------------------------------

# A hostname label with optional [x:y(:z)] ranges, after Ansible's parsing/utils/addresses.py:
# starts with a word character or range, may hold '-' and '_', does not end with them.
_RANGE_RE = r"\[(?:[a-zA-Z]:[a-zA-Z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_LABEL_RE = rf"(?:\w|{_RANGE_RE})(?:[\w-]|{_RANGE_RE})*(?<![_-])"
_HOSTNAME = re.compile(rf"{_LABEL_RE}(?:\.{_LABEL_RE})*")

# The ':'-separated form: runs of anything but whitespace, ':' and brackets, or a whole
# bracketed expression, so 'web[1:3]:db' keeps its subscript.
_PATTERN_ELEMENT = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")

# An element may end in a subscript picking hosts by position: web[0], web[-1], web[1:3], web[2:].
_SUBSCRIPT = re.compile(
    r"(?P<expr>.+)\[(?:(?P<index>-?[0-9]+)|(?P<start>[0-9]+):(?P<end>[0-9]*))\]"
)


def _is_one_address(pattern: str) -> bool:
    """Would Ansible's parse_address() read this as one host (so its ':' do not separate)?"""
    bracketed = re.fullmatch(r"\[(.+)\]:[0-9]+", pattern)
    with_port = re.fullmatch(r"((?:[^:\[\]]|\[[^\]]*\])*):[0-9]+", pattern)
    host = bracketed[1] if bracketed else with_port[1] if with_port else pattern
    return _is_ipv6(host) or _HOSTNAME.fullmatch(host) is not None


def split_pattern(pattern: str) -> list[str]:
    """Split a --limit pattern into elements, as Ansible's split_host_pattern() does.

    ',' always separates. Without a ',', a pattern that reads as one host (an IPv6 address,
    'name:port', a name with [x:y] ranges) is one element; otherwise ':' separates, so
    'web:&prod:!web03' is ['web', '&prod', '!web03'] while '2001:db8::1' stays whole.
    """
    if "," in pattern:
        parts = pattern.split(",")
    elif _is_one_address(pattern.strip()):
        parts = [pattern]
    else:
        parts = _PATTERN_ELEMENT.findall(pattern)
    return [part.strip() for part in parts if part.strip()]


def _select(inventory: Inventory, pattern: str) -> list[Host]:
    """Union of plain elements, then '&' intersections, then '!' exclusions (Ansible's order)."""
    elements = split_pattern(pattern)
    if not elements:
        # `--limit "$HOSTS"` with HOSTS unset must not mean every host.
        raise InventoryError(
            f"{inventory.path}: --limit {pattern!r} is empty; leave it out to select every host"
        )
    plain = [e for e in elements if e[0] not in "&!"] or ["all"]
    chosen: set[str] = set()
    for element in plain:
        chosen.update(_match_element(inventory, pattern, element))
    for element in (e for e in elements if e[0] == "&"):
        chosen.intersection_update(_match_element(inventory, pattern, element[1:]))
    for element in (e for e in elements if e[0] == "!"):
        chosen.difference_update(_match_element(inventory, pattern, element[1:]))
    hosts = [host for name, host in inventory.hosts.items() if name in chosen]
    if not hosts:
        raise InventoryError(f"{inventory.path}: --limit {pattern!r} selects no host")
    return hosts


def _compile_element(inventory: Inventory, pattern: str, expr: str) -> Callable[[str], bool]:
    """'~regex' (matched from the start) or a shell glob, both case-sensitive as in Ansible."""
    try:
        compiled = re.compile(expr[1:] if expr.startswith("~") else fnmatch.translate(expr))
    except re.error as exc:
        raise InventoryError(
            f"{inventory.path}: --limit {pattern!r}: bad pattern {expr!r}: {exc}"
        ) from None
    return lambda name: compiled.match(name) is not None


def _match_element(inventory: Inventory, pattern: str, element: str) -> list[str]:
    """Host names one element (without '&' or '!') matches; nothing matching is an error."""
    if not element:
        raise InventoryError(f"{inventory.path}: --limit {pattern!r}: '&' or '!' needs a name")
    if element in inventory.hosts:  # a plain host name, IPv6 addresses included
        return [element]
    expr, pick = _split_subscript(element)
    matches = _compile_element(inventory, pattern, expr)
    groups = [group for name, group in inventory.groups.items() if matches(name)]
    names = [host for group in groups for host in group.hosts]
    # As Ansible: a name that is a group means the group; globs and regexes also try hosts.
    if not groups or expr.startswith("~") or any(ch in expr for ch in ".?*["):
        names.extend(host for host in inventory.hosts if matches(host))
    if not groups and not names:
        raise InventoryError(
            f"{inventory.path}: --limit {pattern!r}: {element!r} matches no group or host"
        )
    names = list(dict.fromkeys(names))
    if pick is None:
        return names
    return _apply_subscript(inventory, pattern, element, names, pick)


def _split_subscript(element: str) -> tuple[str, tuple[int, int | None] | None]:
    if element.startswith("~"):  # a regex keeps its brackets
        return element, None
    found = _SUBSCRIPT.fullmatch(element)
    if found is None:
        return element, None
    if found["index"] is not None:
        return found["expr"], (int(found["index"]), None)
    end = int(found["end"]) if found["end"] else -1
    return found["expr"], (int(found["start"]), end)


def _apply_subscript(
    inventory: Inventory,
    pattern: str,
    element: str,
    names: list[str],
    pick: tuple[int, int | None],
) -> list[str]:
    start, end = pick
    if end is None:
        if -len(names) <= start < len(names):
            return [names[start]]
    elif start < len(names):
        return names[start : len(names) if end == -1 else end + 1]
    raise InventoryError(
        f"{inventory.path}: --limit {pattern!r}: {element!r} is past the {len(names)} hosts matched"
    )
