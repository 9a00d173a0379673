"""Values that reach SSH, the agent or file names: checked once, here.

Host names, addresses and user names, interfaces, directions, ssh arguments, interpreters,
ports and booleans. A wrong value raises `Problem`; the caller adds the file, line and host
or group to the message.
"""

from __future__ import annotations

import re
import shlex

from ...agent import validate
from ..errors import UsageError


class Problem(Exception):
    """A value is wrong; the caller adds the file, line and host or group to the message."""


def bad_chars(text: str) -> bool:
    return any(ch.isspace() or not ch.isprintable() for ch in text)


def check_host_name(name: str) -> None:
    # The name becomes a file name (hosts/<name>.pcapng) and the pcapng interface name.
    if not name or name in (".", "..") or "/" in name or bad_chars(name):
        raise Problem(f"host name {name!r} is not usable (empty, '/', whitespace or control)")


def check_remote_word(what: str, value: str) -> None:
    # Addresses and user names are handed to ssh and sudo: a leading '-' would read as an option.
    if not value:
        raise Problem(f"{what} is empty")
    if value.startswith("-"):
        raise Problem(f"{what} {value!r} must not start with '-'")
    if bad_chars(value):
        raise Problem(f"{what} {value!r} contains whitespace or control characters")


def check_iface(value: str) -> None:
    """Linux dev_valid_name(): 1-15 bytes, not '.' or '..', no '/', ':' or whitespace."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= 15:
        raise Problem(f"interface {value!r} must be 1 to 15 bytes long")
    if value in (".", ".."):
        raise Problem(f"interface {value!r} is not a valid name")
    if any(ch in "/:" or ch.isspace() or not ch.isprintable() for ch in value):
        raise Problem(f"interface {value!r} contains '/', ':', whitespace or control characters")
    # Linux would take `eth0;id` or `-x`; xdpcap hands the name to a remote shell and the
    # agent, so it takes only what validate accepts: refused here, the message names the
    # file, line and host instead of an anonymous interface.
    try:
        validate.interface_name(value)
    except UsageError as exc:
        raise Problem(str(exc)) from None


_PIN_PATH = re.compile(r"/[A-Za-z0-9_./+-]+")


def check_pin(_what: str, value: str) -> None:
    # A path on the host's bpffs, passed as one word to the agent.
    if not _PIN_PATH.fullmatch(value) or "/../" in value + "/":
        raise Problem(f"{value!r} is not a plain absolute path (letters, digits, _ . / + -)")


def pin_path(what: str, value: str) -> str:
    """A bpffs pin given on the command line: the same rule as xdpcap_xdp_hook's."""
    try:
        check_pin(what, value)
    except Problem as exc:
        raise UsageError(f"{what}: {exc}") from None
    return value


def check_comm(_what: str, value: str) -> None:
    """xdpcap_comm: a process name as the kernel keeps it (validate.comm)."""
    try:
        validate.comm(value)
    except UsageError as exc:
        raise Problem(str(exc)) from None


def check_container(_what: str, value: str) -> None:
    """xdpcap_container: an id, name, systemd unit or cgroup path (validate.container)."""
    try:
        validate.container(value)
    except UsageError as exc:
        raise Problem(str(exc)) from None


def parse_pid(value: object) -> int:
    """xdpcap_pid: a host PID, as a number or digits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Problem(f"must be a process id, found {type(value).__name__}")
    if isinstance(value, str) and not value.isdigit():
        raise Problem(f"{value!r} is not a process id")
    try:
        return validate.pid(int(value))  # type: ignore[return-value]
    except UsageError as exc:
        raise Problem(str(exc)) from None


def check_direction(_what: str, value: str) -> None:
    if value not in validate.DIRECTIONS:
        raise Problem(f"{value!r} is not one of {', '.join(validate.DIRECTIONS)}")


def check_ssh_args(_what: str, value: str) -> None:
    # Read as ssh's command-line words (for UserKnownHostsFile): quoting must close.
    try:
        shlex.split(value)
    except ValueError as exc:
        raise Problem(f"{value!r} cannot be split into ssh arguments ({exc})") from None


def check_interpreter(_what: str, value: str) -> None:
    # Run on the host as the agent's interpreter, through sudo: a plain path or command
    # name, no arguments ('/usr/bin/env python3' included), no option.
    if not re.fullmatch(r"[A-Za-z0-9_./+-]+", value) or value.startswith("-"):
        raise Problem(
            f"interpreter {value!r} is not a plain path (letters, digits and _ . + - /, "
            "no spaces, not starting with '-')"
        )


def parse_port(value: object) -> int:
    # bool is an int in Python; `ansible_port: yes` is a mistake, not port 1.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Problem(f"port {value!r} is not a number")
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise Problem(f"port '{value}' is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise Problem(f"port '{value}' out of range 1-65535")
    return port


# Ansible's boolean(): what `ansible_become` may say.
_TRUE = frozenset({"y", "yes", "on", "1", "true", "t"})
_FALSE = frozenset({"n", "no", "off", "0", "false", "f"})


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise Problem(f"{value!r} is not a boolean (use true/false, yes/no, 1/0)")
