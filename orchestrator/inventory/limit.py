"""``--limit`` patterns, as Ansible's: ``a,b`` or ``a:b`` union, ``a:&b`` intersection, ``a:!b``
exclusion, ``all`` or ``*``, globs (``web*``), ``~regex``, subscripts (``web[0]``, ``web[1:3]``).
A pattern that reads as one host (``2001:db8::1``, ``host:22``) is never split at its ':'.
The result keeps inventory order.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import InventoryError
from .host_keys import is_ipv6

if TYPE_CHECKING:  # model imports this module for Inventory.select
    from .model import Host, Inventory

__all__ = ["select_hosts", "split_pattern"]

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
    return is_ipv6(host) or _HOSTNAME.fullmatch(host) is not None


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


def select_hosts(inventory: Inventory, pattern: str) -> list[Host]:
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
