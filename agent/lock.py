"""A per-interface lock on the host: one capture per interface at a time.

Network namespaces share /run, and every lab host has an eth0, so the lock is keyed by
the network namespace as well as the interface name. The kernel releases a flock when
the process dies, so a killed agent never leaves a lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import AgentError

LOCK_DIR = Path("/run/xdpcap")


class InterfaceLock:
    def __init__(self, iface: str, lock_dir: Path = LOCK_DIR) -> None:
        netns = os.stat("/proc/self/ns/net").st_ino
        self.path = lock_dir / f"{netns}-{iface}.lock"
        self.iface = iface
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AgentError(
                f"{self.iface}: another xdpcap capture is already running on it (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InterfaceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
