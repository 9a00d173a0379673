"""The fetch's SFTP session, opened while the host captures.

A session of its own on the host: opened after the capture, every fetch would wait for
it; opened during the capture window, nobody does. (The clock probe needs no session of
its own: the capture agent answers it, see RemoteHost.probe_clock.)

Ownership, so nothing leaks on any path: what is ready belongs to the Standby until
`take` hands it to the fetch, which closes it; `close` closes what nobody took; what the
opening thread finishes after `take` or `close` it closes itself, since nobody will use it.
"""

from __future__ import annotations

import contextlib
import threading

from fabric import Connection
from paramiko import SFTPClient

JOIN_WAIT_S = 5.0


class Standby:
    def __init__(self, conn: Connection, *, name: str) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._taken = False  # set by take() or close(): a later result is not wanted
        self._sftp: SFTPClient | None = None
        self._thread = threading.Thread(target=self._open, name=f"standby-{name}", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        # A failure only means the fetch opens its own, as it would without a standby:
        # it must never fail the host, so nothing is raised from this thread.
        sftp: SFTPClient | None = None
        with contextlib.suppress(Exception):
            sftp = self._conn.client.open_sftp()
        with self._lock:
            if not self._taken:
                self._sftp = sftp
                return
        _close(sftp)

    def take(self) -> SFTPClient | None:
        """The SFTP client if open and alive now, for the caller to use and close.

        Does not wait: what is still opening is the opening thread's to close.
        """
        with self._lock:
            self._taken = True
            sftp, self._sftp = self._sftp, None
        # A channel that died while idle (the session was closed) is of no use: the
        # caller opens a fresh one instead.
        if sftp is not None and sftp.get_channel().closed:
            _close(sftp)
            sftp = None
        return sftp

    def close(self) -> None:
        """Close what nobody took; the opening thread closes what it still opens."""
        _close(self.take())

    def join(self) -> None:
        """Wait (bounded) for the opening thread: after the connection is closed it ends fast."""
        self._thread.join(JOIN_WAIT_S)


def _close(sftp: SFTPClient | None) -> None:
    if sftp is not None:
        with contextlib.suppress(Exception):
            sftp.close()
