"""Small helpers the lab's modules share: the lab's error, commands run without a shell,
`ip -j`, processes found and killed by pid, the machine-wide lock, atomic file writes and
inventories rendered as YAML.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import XdpcapError


class LabError(XdpcapError):
    """The lab cannot be built, reached or removed; the message names the lab and the object."""


LOCK_PATH = Path("/run/lock/xdpcap-lab.lock")
CMD_TIMEOUT = 10.0
LOCK_TIMEOUT = 60.0
KILL_GRACE = 3.0


def run(
    argv: Sequence[str],
    timeout: float = CMD_TIMEOUT,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ARGV (never through a shell) with a timeout; failures become one-line LabErrors."""
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{shlex.join(argv)}` timed out after {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found") from exc
    if check and proc.returncode != 0:
        detail = last_line(proc.stderr) or f"exit status {proc.returncode}"
        raise LabError(f"`{shlex.join(argv)}` failed: {detail}")
    return proc


def last_line(text: str) -> str:
    """The last non-blank line of TEXT, stripped ("" if none): a command's error in short."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def ip_json(*args: str) -> list[dict[str, Any]]:
    """`ip -j ARGS` parsed: one dict per object."""
    out = run(["ip", "-j", *args]).stdout.strip()
    # `ip -j netns list` prints nothing at all when there is no namespace.
    return json.loads(out) if out else []


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie counts as gone (it holds no namespace or port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def kill_pids(pids: Sequence[int], grace: float = KILL_GRACE) -> list[int]:
    """SIGTERM, wait up to GRACE, SIGKILL, wait again; return the pids that survived."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [pid for pid in pids if pid_alive(pid)]
            if not pids:
                return []
            time.sleep(0.05)
    return [pid for pid in pids if pid_alive(pid)]


@contextlib.contextmanager
def machine_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Serialise up/down of all labs: choosing a free lab index must not race another `up`."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another lab up/down holds {LOCK_PATH}") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically, so a crash never leaves half a state.json or inventory."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def read_text(path: Path) -> str:
    """PATH's text, or "" if it cannot be read (for error messages: a log that may be absent)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def render_yaml(inventory: dict[str, Any]) -> str:
    """An inventory dict as YAML text, keys in their order (the lab's and Vagrant's)."""
    return yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)
