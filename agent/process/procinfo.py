"""What /proc says about a process: its command, arguments, name and cgroup."""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .comments import ARGS_MAX

PRIVATE_MOUNTS = Path("/run/xdpcap")  # cgroup2-<pid>: our own mounts, where needed
_MNT_DETACH = 2


def visible_cgroup2(mounts: str = "/proc/self/mounts") -> Path | None:
    """Where the unified (v2) hierarchy is mounted in our mount namespace:
    /sys/fs/cgroup on a cgroup v2 host, /sys/fs/cgroup/unified on a hybrid one."""
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return Path(fields[1])
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def cgroup2_mount() -> Path | None:
    """The unified hierarchy's root, mounted by us under PRIVATE_MOUNTS where it is not
    visible (an agent started through `ip netns exec` has /sys remounted without the
    cgroup mounts); None where neither works. release_private_mount() undoes ours, and
    the next start removes one a killed agent left (clean_stale_mounts)."""
    found = visible_cgroup2()
    if found is not None:
        return found
    target = PRIVATE_MOUNTS / f"cgroup2-{os.getpid()}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"cgroup2", str(target).encode(), b"cgroup2", 0, None) != 0:
            raise OSError(ctypes.get_errno(), "mount cgroup2")
    except OSError:
        with contextlib.suppress(OSError):
            target.rmdir()
        return None
    return target


def _unmount(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(str(path).encode(), _MNT_DETACH)
    with contextlib.suppress(OSError):
        path.rmdir()


def release_private_mount() -> None:
    """Unmount the hierarchy cgroup2_mount() mounted for this process, if it did."""
    ours = PRIVATE_MOUNTS / f"cgroup2-{os.getpid()}"
    if cgroup2_mount.cache_info().currsize and cgroup2_mount() == ours:
        _unmount(ours)
        cgroup2_mount.cache_clear()


def clean_stale_mounts() -> None:
    """Unmount what agents that are gone (kill -9) left under PRIVATE_MOUNTS."""
    try:
        entries = list(PRIVATE_MOUNTS.glob("cgroup2-*"))
    except OSError:
        return
    for entry in entries:
        pid = entry.name.partition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            _unmount(entry)


@dataclass(frozen=True)
class ProcInfo:
    cmd: str  # the executable's path ("" when gone)
    args: list[str]
    cgroup: str  # the cgroup v2 path ("" when unknown)


def read_proc(pid: int, proc: str = "/proc") -> ProcInfo:
    base = f"{proc}/{pid}"
    try:
        cmd = os.readlink(f"{base}/exe")
    except OSError:
        cmd = ""
    try:
        with open(f"{base}/cmdline", "rb") as f:
            raw = f.read(ARGS_MAX * 4)
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    except OSError:
        args = []
    return ProcInfo(cmd, args, read_cgroup(pid, proc))


def read_cgroup(pid: int, proc: str = "/proc") -> str:
    """The process's cgroup v2 path ("0::/path" in /proc/<pid>/cgroup), or ""."""
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return ""


def read_comm(pid: int, proc: str = "/proc") -> bytes:
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n")[:15]
    except OSError:
        return b""


def cgroup_id(path: str, root: Path | None = None) -> int:
    """A cgroup's id as the kernel gives it to BPF: its folder's inode number (0: none)."""
    root = root or cgroup2_mount()
    if root is None:
        return 0
    try:
        return os.stat(root / path.lstrip("/")).st_ino
    except OSError:
        return 0
