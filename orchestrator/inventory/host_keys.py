"""Host keys in YAML and INI inventories: `[x:y(:z)]` ranges (``web[01:10]``,
``db-[a:c]``), a port (``host:2222``, ``[2001:db8::1]:2222``), and IPv6 addresses.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
import string

from .checks import Problem

# A numeric [x:y(:z)] range may stand for an IPv6 component ('2001:db8::[1:3]').
_NUMERIC_RANGE = re.compile(r"\[[0-9]+:[0-9]+(?::[0-9]+)?\]")
# Any [..] group, for splitting a host key into literal text and ranges.
_BRACKETED = re.compile(r"(\[[^\[\]]*\])")
# Ansible's alphabetic range order: [x:B] is x, y, z, A, B.
_LETTERS = string.ascii_letters
# Far beyond any real capture, small enough that a typo ([1:9999999]) fails fast.
_MAX_EXPANDED_HOSTS = 65536


def is_ipv6(text: str) -> bool:
    candidate = _NUMERIC_RANGE.sub("0", text)
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def split_host_port(key: str) -> tuple[str, str | None]:
    """Split a host key into (host pattern, port text or None), as Ansible's parse_address does.

    '[addr]:port' brackets an IPv6 address (or a name); a bare IPv6 address has no port;
    otherwise one ':' outside [..] ranges separates the port.
    """
    bracketed = re.fullmatch(r"\[([^\[\]]+)\](?::(.*))?", key)
    if bracketed and (is_ipv6(bracketed[1]) or (":" not in bracketed[1] and bracketed[2])):
        return bracketed[1], bracketed[2]
    if is_ipv6(key):
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
        raise Problem(
            f"host {key!r} has several ':'; write an IPv6 address with a port as [address]:port"
        )
    return key[: colons[0]], key[colons[0] + 1 :]


def _range_values(body: str) -> list[str]:
    """The values of one '[start:end(:step)]' range, numeric (zero padding kept) or a-z/A-Z."""
    bounds = body.split(":")
    if len(bounds) not in (2, 3):
        raise Problem(f"range '[{body}]' must be [start:end] or [start:end:step]")
    start, end = bounds[0] or "0", bounds[1]  # Ansible reads an empty start as 0
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not re.fullmatch(r"[0-9]+", step_text) or int(step_text) == 0:
        raise Problem(f"range '[{body}]' step must be a positive integer")
    step = int(step_text)
    if re.fullmatch(r"[0-9]+", start) and re.fullmatch(r"[0-9]+", end):
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        if width and len(end) != width:
            raise Problem(f"range '[{body}]' is zero-padded: start and end need the same width")
        first, last = int(start), int(end)
        if last - first > _MAX_EXPANDED_HOSTS * step:
            raise Problem(f"range '[{body}]' is larger than {_MAX_EXPANDED_HOSTS} hosts")
        values = [str(n).zfill(width) for n in range(first, last + 1, step)]
    elif len(start) == len(end) == 1 and start in _LETTERS and end in _LETTERS:
        values = list(_LETTERS[_LETTERS.index(start) : _LETTERS.index(end) + 1 : step])
    else:
        raise Problem(f"range '[{body}]' must be numeric or single letters")
    if not values:
        raise Problem(f"range '[{body}]' is empty: start is after end")
    return values


def expand_ranges(pattern: str) -> list[str]:
    """Every host name a pattern with [x:y] ranges stands for, in order."""
    pieces: list[list[str]] = []
    for index, piece in enumerate(_BRACKETED.split(pattern)):
        if index % 2:
            pieces.append(_range_values(piece[1:-1]))
        elif "[" in piece or "]" in piece:
            raise Problem(f"host {pattern!r} has an unbalanced '[' or ']'")
        else:
            pieces.append([piece])
    if math.prod(len(values) for values in pieces) > _MAX_EXPANDED_HOSTS:
        raise Problem(f"host {pattern!r} expands to more than {_MAX_EXPANDED_HOSTS} hosts")
    return ["".join(parts) for parts in itertools.product(*pieces)]
