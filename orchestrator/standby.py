"""The fetch's SFTP session and clock probe, opened while the host captures.

Each is a session of its own on the host; the clock probe's costs a login shell and a
Python start (a few tenths of a second). Opened after the capture, every fetch would
wait for them; opened during the capture window, nobody does. Only the opening happens
early: the probe's timed rounds still run after the capture (see run.py).

Ownership, so nothing leaks on any path: what is ready belongs to the Standby until
`take` hands it to the fetch, which closes it; `close` closes what nobody took; what the
opening thread finishes after `take` or `close` it closes itself, since nobody will use it.
"""

from __future__ import annotations

import contextlib
import threading

from fabric import Connection
from paramiko import SFTPClient

from .clock import ClockProbe

JOIN_WAIT_S = 5.0


class Standby:
    def __init__(self, conn: Connection, probe_command: str | None, *, name: str) -> None:
        self._conn = conn
        self._probe_command = probe_command
        self._name = name
        self._lock = threading.Lock()
        self._taken = False  # set by take() or close(): later results are not wanted
        self._sftp: SFTPClient | None = None
        self._probe: ClockProbe | None = None
        self._thread = threading.Thread(target=self._open, name=f"standby-{name}", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        # Any failure only means the fetch opens its own, as it would without a standby:
        # it must never fail the host, so nothing is raised from this thread.
        sftp: SFTPClient | None = None
        probe: ClockProbe | None = None
        if self._probe_command is not None:
            with contextlib.suppress(Exception):
                # Sent first: the host starts the probe's shell and Python while SFTP opens.
                probe = ClockProbe(self._conn, self._probe_command, name=self._name)
        with contextlib.suppress(Exception):
            sftp = self._conn.client.open_sftp()
        if probe is not None:
            try:
                probe.wait_up()
            except Exception:
                probe.close()
                probe = None
        with self._lock:
            if not self._taken:
                self._sftp, self._probe = sftp, probe
                return
        _close(sftp, probe)

    def take(self) -> tuple[SFTPClient | None, ClockProbe | None]:
        """What is open and alive now, for the caller to use and close; None for the rest.

        Does not wait: what is still opening is the opening thread's to close.
        """
        with self._lock:
            self._taken = True
            sftp, probe = self._sftp, self._probe
            self._sftp = self._probe = None
        # A channel that died while idle (its agent exited, the session was closed) is
        # of no use: the caller opens a fresh one instead.
        if sftp is not None and sftp.get_channel().closed:
            _close(sftp, None)
            sftp = None
        if probe is not None and not probe.alive:
            probe.close()
            probe = None
        return sftp, probe

    def close(self) -> None:
        """Close what nobody took; the opening thread closes what it still opens."""
        _close(*self.take())

    def join(self) -> None:
        """Wait (bounded) for the opening thread: after the connection is closed it ends fast."""
        self._thread.join(JOIN_WAIT_S)


def _close(sftp: SFTPClient | None, probe: ClockProbe | None) -> None:
    if sftp is not None:
        with contextlib.suppress(Exception):
            sftp.close()
    if probe is not None:
        probe.close()
