"""Validation of values that reach the kernel or a remote shell.

Shared by the agent and the controller, so a value is refused with the same words on
both sides, before anything runs.
"""

from __future__ import annotations

from .errors import UsageError

IFNAMSIZ = 16  # includes the terminating NUL: names are at most 15 bytes

# Generous but finite bounds: absurd values are mistakes, not requests.
MAX_DURATION_S = 7 * 24 * 3600
MAX_COUNT = 10**12
MAX_SNAPLEN = 262144
MIN_SNAPLEN = 14  # an Ethernet header
MAX_SAMPLE_RATE = 1 << 31


# Linux itself accepts almost any byte in a name (dev_valid_name() refuses only '/', ':',
# whitespace and "."/".."); we accept the characters real interface names use, so that
# no name can carry shell syntax to a host, and none can start with '-' (an option).
_IFNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-")


def interface_name(name: str) -> str:
    """Accept a name Linux accepts and that is safe on a command line."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        raise UsageError("interface name is empty")
    if len(raw) >= IFNAMSIZ:
        raise UsageError(f"interface name {name!r} is longer than 15 bytes")
    if name in (".", ".."):
        raise UsageError(f"interface name {name!r} is not allowed")
    for ch in name:
        if ch not in _IFNAME_CHARS:
            raise UsageError(
                f"interface name {name!r} contains {ch!r}: only letters, digits and _ . + - "
                "are accepted"
            )
    if name.startswith("-"):
        raise UsageError(f"interface name {name!r} starts with '-'")
    return name


def positive_number(what: str, value: float, maximum: float) -> float:
    if value != value or value <= 0 or value > maximum:  # value != value: NaN
        raise UsageError(f"{what} must be greater than 0 and at most {maximum:g}, not {value:g}")
    return value


def duration(value: float | None) -> float | None:
    return None if value is None else positive_number("--duration", value, MAX_DURATION_S)


def count(value: int | None) -> int | None:
    return None if value is None else int(positive_number("--count", value, MAX_COUNT))


def snaplen(value: int) -> int:
    if not MIN_SNAPLEN <= value <= MAX_SNAPLEN:
        raise UsageError(f"--snaplen must be between {MIN_SNAPLEN} and {MAX_SNAPLEN}, not {value}")
    return value


def sample_rate(value: int) -> int:
    if not 1 <= value <= MAX_SAMPLE_RATE:
        raise UsageError(f"--sample-rate must be between 1 and {MAX_SAMPLE_RATE}, not {value}")
    return value


# -Q/--direction and xdpcap_direction, as tcpdump's -Q.
DIRECTIONS = ("in", "out", "inout")


def direction(value: str) -> str:
    if value not in DIRECTIONS:
        raise UsageError(f"direction {value!r}: expected one of {', '.join(DIRECTIONS)}")
    return value


# --start-at: the window's absolute start (wall-clock ns). A little in the past is the
# time the agent took to start; more is a stale or mistyped value. Far ahead would hold
# the interface (attached, locked) for nothing.
START_AT_PAST_S = 2.0
START_AT_FUTURE_S = 600.0


def start_at(value: int, now_ns: int) -> int:
    """An absolute start time, checked against this host's wall clock `now_ns`."""
    ahead_s = (value - now_ns) / 1e9
    if ahead_s < -START_AT_PAST_S:
        raise UsageError(
            f"--start-at {value} is {-ahead_s:.1f} s in the past on this host's clock "
            f"(at most {START_AT_PAST_S:g} s allowed): is the host's clock synchronised?"
        )
    if ahead_s > START_AT_FUTURE_S:
        raise UsageError(
            f"--start-at {value} is {ahead_s:.1f} s ahead of this host's clock "
            f"(at most {START_AT_FUTURE_S:g} s allowed)"
        )
    return value


# --pid, --comm, --container (and xdpcap_pid, xdpcap_comm, xdpcap_container): which
# processes' packets a capture keeps (agent/process/selection.py).
MAX_PID = 1 << 22  # PID_MAX_LIMIT
COMM_LEN = 15  # the kernel keeps 15 bytes of a process name
# Container ids, names, systemd units and cgroup paths: what they use, and nothing a
# shell would read ("/" for a cgroup path).
_CONTAINER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@:/")


def pid(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_PID:
        raise UsageError(f"--pid must be between 1 and {MAX_PID}, not {value}")
    return value


def comm(value: str | None) -> str | None:
    if value is not None and not 1 <= len(value.encode("utf-8", "surrogateescape")) <= COMM_LEN:
        raise UsageError(f"--comm {value!r}: a process name is 1 to {COMM_LEN} bytes")
    return value


def container(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > 255 or value.startswith("-"):
        raise UsageError(f"--container {value!r}: an id, name, systemd unit or cgroup path")
    for ch in value:
        if ch not in _CONTAINER_CHARS:
            raise UsageError(
                f"--container {value!r} contains {ch!r}: only letters, digits and _ . - @ : / "
                "are accepted"
            )
    return value
