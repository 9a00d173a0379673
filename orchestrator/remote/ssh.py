"""SSH to one inventory host with Fabric, the way a careful operator expects.

- ~/.ssh/config, keys and the SSH agent are honoured (Fabric/paramiko do that).
- Host keys are checked: Fabric's default trusts any key (AutoAddPolicy) and loads no
  known_hosts at all, so we load ~/.ssh/known_hosts and any UserKnownHostsFile (from
  ssh_config or `ansible_ssh_common_args`) and refuse unknown keys, unless the operator
  opted in to accept-new. A changed key is always refused.
- Every remote command is built from validated values with shlex quoting.
"""

from __future__ import annotations

import functools
import shlex
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection

from ..errors import RemoteError
from ..inventory.model import Host

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts").expanduser()
CONNECT_TIMEOUT_S = 10
COMMAND_TIMEOUT_S = 60


@dataclass(frozen=True)
class SshSettings:
    accept_new_host_keys: bool = False
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    become_password: str | None = None  # from --ask-become-pass; never logged


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's StrictHostKeyChecking=accept-new: learn unknown keys, never changed ones.

    paramiko raises BadHostKeyException for a changed key before any policy is asked,
    so this only ever sees hosts that are not known at all.
    """

    def __init__(self, save_to: Path) -> None:
        self._save_to = save_to

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self._save_to.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._save_to.open("a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _common_args_options(common_args: str | None) -> dict[str, str]:
    """-o Key=Value pairs from ansible_ssh_common_args, keys lower-cased like ssh_config."""
    options: dict[str, str] = {}
    if not common_args:
        return options
    words = shlex.split(common_args)
    for i, word in enumerate(words):
        value = None
        if word == "-o" and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith("-o") and len(word) > 2:
            value = word[2:]
        if value and "=" in value:
            key, _, val = value.partition("=")
            options[key.strip().lower()] = val.strip()
    return options


_NO_FILE = ("/dev/null", "none")


def known_hosts_files(host: Host, ssh_config: dict) -> list[Path]:
    files = [DEFAULT_KNOWN_HOSTS]
    for source in (
        ssh_config.get("userknownhostsfile"),
        _common_args_options(host.ssh_common_args).get("userknownhostsfile"),
    ):
        if source:
            # "/dev/null" (Vagrant's, and many copied configs) would make every key
            # unknown and --accept-new-host-keys learn into nothing: skip it, so keys
            # are checked against, and learnt into, the user's own known_hosts.
            files.extend(Path(p).expanduser() for p in str(source).split() if p not in _NO_FILE)
    return files


def parsed_known_hosts(path: Path) -> paramiko.HostKeys:
    """A known_hosts file, parsed once per version of it for the whole run: read per
    host, a large one costs each of a hundred connects its parse."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return paramiko.HostKeys()
    return _parse_known_hosts(str(path), stat.st_mtime_ns, stat.st_size)


_PARSE_LOCK = threading.Lock()  # the connects run in parallel: one parse, the rest wait


def _parse_known_hosts(path: str, mtime_ns: int, size: int) -> paramiko.HostKeys:
    with _PARSE_LOCK:
        return _parse_once(path, mtime_ns, size)


@functools.lru_cache(maxsize=16)
def _parse_once(path: str, _mtime_ns: int, _size: int) -> paramiko.HostKeys:
    return paramiko.HostKeys(path)


def connect(host: Host, settings: SshSettings) -> Connection:
    """Open a verified connection to `host`, or raise RemoteError with the reason."""
    connect_kwargs: dict = {
        "banner_timeout": settings.connect_timeout_s,
        "auth_timeout": settings.connect_timeout_s,
    }
    if host.key_file:
        connect_kwargs["key_filename"] = [host.key_file]
    conn = Connection(
        host=host.address,
        user=host.user,
        port=host.port,
        connect_timeout=int(settings.connect_timeout_s),
        connect_kwargs=connect_kwargs,
        config=Config(overrides={"run": {"hide": True, "warn": True, "in_stream": False}}),
    )
    files = known_hosts_files(host, conn.ssh_config)
    client = conn.client
    # What paramiko looks the server's key up by (after ~/.ssh/config's HostName, Port).
    name = conn.host if conn.port == 22 else f"[{conn.host}]:{conn.port}"
    for path in files:
        try:
            entry = parsed_known_hosts(path).lookup(name)
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{host.name}: cannot read known_hosts {path}: {exc}") from exc
        for key_type, key in (entry or {}).items():
            client.get_host_keys().add(name, key_type, key)
    if settings.accept_new_host_keys:
        client.set_missing_host_key_policy(_AcceptNewPolicy(files[-1]))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise RemoteError(
            f"{host.name}: host key CHANGED for {host.address} (got {exc.key.get_name()} "
            f"{exc.key.get_fingerprint().hex()}): refusing to connect; if the change is "
            "expected, remove the old key from known_hosts"
        ) from exc
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise RemoteError(
                f"{host.name}: host key of {host.address} is not in known_hosts "
                f"({', '.join(str(f) for f in files)}): verify it and add it, or pass "
                "--accept-new-host-keys"
            ) from exc
        raise RemoteError(f"{host.name}: SSH to {host.address} failed: {exc}") from exc
    except (socket.timeout, TimeoutError) as exc:
        raise RemoteError(f"{host.name}: SSH to {host.address} timed out") from exc
    except OSError as exc:
        raise RemoteError(
            f"{host.name}: cannot connect to {host.address}: {exc.strerror or exc}"
        ) from exc
    return conn


def quote_command(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def run(
    conn: Connection,
    argv: Sequence[str],
    *,
    timeout: float = COMMAND_TIMEOUT_S,
    host: Host | None = None,
) -> tuple[int, str, str]:
    """Run a command; returns (exit status, stdout, stderr). Never raises on a non-zero exit."""
    try:
        result = conn.run(quote_command(argv), timeout=timeout)
    except Exception as exc:  # invoke raises CommandTimedOut and transport errors
        name = host.name if host else conn.host
        raise RemoteError(f"{name}: {argv[0]} failed: {type(exc).__name__}: {exc}") from exc
    return result.exited, result.stdout, result.stderr


def sudo_failure(stderr: str) -> str | None:
    """A clear reason when sudo would have prompted for a password."""
    if "a password is required" in stderr or "a terminal is required" in stderr:
        return (
            "sudo needs a password on this host: pass --ask-become-pass, or allow "
            "passwordless sudo for this user"
        )
    if "incorrect password" in stderr.lower() or "Sorry, try again" in stderr:
        return "sudo refused the become password"
    return None
