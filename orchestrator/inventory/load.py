"""The built-in reader's entry points: Ansible inventories (YAML, INI, `ansible-inventory
--list` JSON) read into an `Inventory`, the format told apart by content.

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

Where xdpcap is stricter than Ansible, on purpose (Ansible only warns, and a capture would run on
the wrong hosts or with the wrong settings): unknown keys in a group, duplicate keys, empty or
reversed ranges, a ``--limit`` element that matches nothing, and checks on every value that
reaches ssh, sudo or the agent (port, address, user, interface). Jinja2 templates and ``!vault``
values are not evaluated: used in a connection setting, they are an error.
Every problem is one `InventoryError` line ``file:line: what``; secrets never appear in it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from yaml.nodes import MappingNode

from ..errors import InventoryError
from .builder import Builder, Resolver, Var
from .ini import read_ini
from .model import Inventory
from .yaml_json import Doc, read_list_json, read_yaml

__all__ = [
    "GroupParts",
    "build_inventory",
    "check_structure",
    "load_inventory",
    "parse_inventory_text",
]


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
    builder = Builder(source)
    _read_any(builder, _read_text(source).lstrip("\ufeff"), Path(source).suffix.lower())
    Resolver(builder)  # group cycles
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
    builder = Builder(source)
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
    builder = Builder(source)
    for name, parts in groups.items():
        builder.add_group(name, None)
        builder.group_vars(
            name, {k: Var(v, None, f"group '{name}'") for k, v in parts.vars.items()}
        )
    for name, parts in groups.items():
        for child in parts.children:
            builder.add_child(name, child, None)
    for name, variables in host_vars.items():
        member_of = [g for g, parts in groups.items() if name in parts.hosts] or ["ungrouped"]
        for group in member_of:
            builder.add_host(
                group, name, None, {k: Var(v, None, "host") for k, v in variables.items()}
            )
    return builder.build()


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------

_YAML_SUFFIXES = (".yml", ".yaml")
# A '[section]' line: text that fails as YAML but has one is reported as INI.
_INI_SECTION_LINE = re.compile(r"^\s*\[.*\]\s*$", re.MULTILINE)
# YAML reads these as line breaks; inside a JSON string they would shift lines and change values.
_YAML_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _read_any(builder: Builder, text: str, suffix: str) -> None:
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
        doc = Doc(builder, text, json_mode=False)
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
        read_ini(builder, text)
    except InventoryError:
        if meant is not None:
            raise meant from None
        raise


def _read_flow_or_block_yaml(doc: Doc, builder: Builder, json_error: InventoryError | None) -> None:
    try:
        read_yaml(doc, builder)
    except InventoryError:
        # '{...}' in a .json file that is not JSON but happens to be flow YAML: JSON was meant.
        if json_error is not None:
            raise json_error from None
        raise


def _other_format_error(
    builder: Builder, text: str, suffix: str, yaml_error: InventoryError | None
) -> InventoryError | None:
    """The error to show if the INI reader fails too, or None to show the INI reader's."""
    if yaml_error is not None and (suffix in _YAML_SUFFIXES or not _INI_SECTION_LINE.search(text)):
        return yaml_error
    if suffix in _YAML_SUFFIXES:
        return InventoryError(f"{builder.source}:1: a YAML inventory must be a mapping of groups")
    if suffix == ".json":
        return InventoryError(f"{builder.source}:1: a JSON inventory must be an object")
    return None


def _read_json_text(builder: Builder, text: str, data: dict[str, object]) -> None:
    if any(ch in text for ch in _YAML_LINE_BREAKS):
        # Rare: fall back to a re-serialised copy and give up line numbers, not correctness.
        doc = Doc(builder, json.dumps(data, indent=1), json_mode=True, lines_known=False)
    else:
        # JSON allows tabs between tokens, YAML does not; raw tabs cannot occur inside JSON
        # strings, so replacing them keeps every value and every line number.
        doc = Doc(builder, text.replace("\t", " "), json_mode=True)
    if _is_list_json(data):
        read_list_json(doc, builder)
    else:
        read_yaml(doc, builder)  # a YAML-shaped inventory written as JSON


def _is_list_json(data: dict[str, object]) -> bool:
    """`ansible-inventory --list` shape: `_meta`, or groups whose hosts/children are lists."""

    def list_shaped(group: object) -> bool:
        if isinstance(group, list):
            return True
        return isinstance(group, dict) and any(
            isinstance(group.get(key), list) for key in ("hosts", "children")
        )

    return "_meta" in data or any(list_shaped(group) for group in data.values())
