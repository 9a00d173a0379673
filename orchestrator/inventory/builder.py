"""Building an inventory: the three readers fill a `Builder`; `Builder.build()` resolves
the group tree and variable precedence (`Resolver`) and reads and checks every host's
connection settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, NoReturn

from ..errors import InventoryError
from .checks import (
    Problem,
    bad_chars,
    check_comm,
    check_container,
    check_direction,
    check_host_name,
    check_iface,
    check_interpreter,
    check_pin,
    check_remote_word,
    check_ssh_args,
    parse_bool,
    parse_pid,
    parse_port,
)
from .host_keys import expand_ranges, split_host_port
from .model import Group, Host, Inventory, Vars


class Var(NamedTuple):
    value: object
    line: int | None
    origin: str  # "host" or "group 'web'": where a wrong value came from, for the message


@dataclass
class GroupDraft:
    line: int | None
    vars: dict[str, Var] = field(default_factory=dict)
    children: dict[str, int | None] = field(default_factory=dict)  # child -> line linking it
    hosts: dict[str, None] = field(default_factory=dict)  # direct members, an ordered set


@dataclass
class _HostDraft:
    line: int | None
    vars: dict[str, Var] = field(default_factory=dict)


IMPLICIT_GROUPS = ("all", "ungrouped")


class Builder:
    """Collects groups, hosts and variables from any format; build() resolves them."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.groups: dict[str, GroupDraft] = {name: GroupDraft(None) for name in IMPLICIT_GROUPS}
        self.hosts: dict[str, _HostDraft] = {}

    def fail(self, line: int | None, message: str) -> NoReturn:
        where = f"{self.source}:{line}" if line else self.source
        # One line, always: a value with a newline must not split the message.
        raise InventoryError(f"{where}: {' '.join(message.split())}")

    def add_group(self, name: str, line: int | None) -> None:
        if not name or bad_chars(name):
            self.fail(line, f"group name {name!r} is empty or has whitespace or control characters")
        self.groups.setdefault(name, GroupDraft(line))

    def add_child(self, parent: str, child: str, line: int | None) -> None:
        if child == "all":
            self.fail(line, f"group 'all' cannot be a child of group '{parent}'")
        self.add_group(child, line)
        self.groups[parent].children.setdefault(child, line)

    def group_vars(self, group: str, variables: dict[str, Var]) -> None:
        self.groups[group].vars.update(variables)

    def add_host_key(
        self, group: str, key: str, line: int | None, variables: dict[str, Var]
    ) -> None:
        """A YAML or INI host key: may hold ranges and a port, which acts as a host-level var."""
        try:
            pattern, port_text = split_host_port(key)
            port = None if port_text is None else parse_port(port_text)
            names = expand_ranges(pattern)
        except Problem as problem:
            self.fail(line, f"group '{group}': {problem}")
        for name in names:
            # Ansible sets the key's port first, so an explicit ansible_port next to it wins.
            port_var = {} if port is None else {"ansible_port": Var(port, line, "host")}
            self.add_host(group, name, line, {**port_var, **variables})

    def add_host(self, group: str, name: str, line: int | None, variables: dict[str, Var]) -> None:
        try:
            check_host_name(name)
        except Problem as problem:
            self.fail(line, f"group '{group}': {problem}")
        self.hosts.setdefault(name, _HostDraft(line)).vars.update(variables)
        self.groups[group].hosts[name] = None

    def build(self) -> Inventory:
        resolver = Resolver(self)  # first: a cycle is a better message than "no hosts"
        if not self.hosts:
            self.fail(1, "inventory defines no hosts")
        return resolver.inventory()


class Resolver:
    """Turns a finished Builder into an Inventory: group tree, precedence, host settings."""

    def __init__(self, builder: Builder) -> None:
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
            if group not in IMPLICIT_GROUPS
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

    def _group(self, name: str, draft: GroupDraft, hosts: Mapping[str, Host]) -> Group:
        members = tuple(h.name for h in hosts.values() if name in h.groups)
        values = {key: var.value for key, var in draft.vars.items()}
        return Group(name, members, tuple(draft.children), Vars(values))

    def _host(self, name: str, draft: _HostDraft) -> Host:
        groups = self._host_groups(name)
        merged: dict[str, Var] = {}
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
    "process": ("xdpcap_process",),
    "pid": ("xdpcap_pid",),
    "comm": ("xdpcap_comm",),
    "container": ("xdpcap_container",),
}


class Vaulted:
    """An `!vault` value: kept opaque, since xdpcap cannot decrypt it."""

    def __repr__(self) -> str:
        return "<vault-encrypted>"


class _HostSettings:
    """Reads and checks one host's connection settings from its merged variables."""

    def __init__(
        self, builder: Builder, host: str, line: int | None, merged: dict[str, Var]
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
            user=self.text("user", check_remote_word),
            key_file=None if key_file is None else os.path.expanduser(key_file),
            ssh_common_args=self.text("ssh_common_args", check_ssh_args),
            become=self.flag("become"),
            become_user=self.text("become_user", check_remote_word),
            become_password=self.text("become_password", secret=True),
            python_interpreter=self.text("python_interpreter", check_interpreter),
            iface=self.text("iface", lambda _what, value: check_iface(value)),
            filter=self.text("filter"),
            direction=self.text("direction", check_direction),
            xdp_hook=self.text("xdp_hook", check_pin),
            process=self.flag("process") if self.pick("process") else None,
            pid=self.pid(),
            comm=self.text("comm", check_comm),
            container=self.text("container", check_container),
            groups=groups,
            vars=Vars({key: var.value for key, var in self.merged.items()}),
        )

    def pick(self, field_name: str) -> tuple[str, Var] | None:
        for name in _VAR_NAMES[field_name]:
            var = self.merged.get(name)
            if var is not None and var.value is not None:  # Ansible skips unset (None) values
                return name, var
        return None

    def fail(self, name: str, var: Var, message: str) -> NoReturn:
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
        if isinstance(value, Vaulted):
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
        if bad_chars(value.replace(" ", "")):
            self.fail(name, var, f"{shown} contains control characters")
        try:
            if check is not None:
                check(name, value)
        except Problem as problem:
            self.fail(name, var, str(problem))
        return value

    def address(self) -> str:
        address = self.text("address", check_remote_word)
        if address is not None:
            return address
        try:  # no ansible_host: ssh gets the inventory name itself
            check_remote_word("address", self.name)
        except Problem as problem:
            self.b.fail(self.line, f"host '{self.name}': {problem}; set ansible_host")
        return self.name

    def port(self) -> int | None:
        picked = self.pick("port")
        if picked is None:
            return None
        name, var = picked
        try:
            return parse_port(var.value)
        except Problem as problem:
            self.fail(name, var, str(problem))

    def pid(self) -> int | None:
        picked = self.pick("pid")
        if picked is None:
            return None
        name, var = picked
        try:
            return parse_pid(var.value)
        except Problem as problem:
            self.fail(name, var, str(problem))

    def flag(self, field_name: str) -> bool:
        picked = self.pick(field_name)
        if picked is None:
            return False
        name, var = picked
        try:
            return parse_bool(var.value)
        except Problem as problem:
            self.fail(name, var, str(problem))
