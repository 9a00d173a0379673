"""A remote process on an SSH channel: lines out, lines in, exit status, all bounded.

Its stdout carries lines, and with the agent's --stream binary frames between them: a
line `xdpcap-frame N` followed by N bytes (agent/protocol.py), handed to `on_frame`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from fabric import Connection

from ...agent.protocol import FRAME_PREFIX
from ..errors import RemoteError

READ_TIMEOUT_S = 1.0
EXIT_STATUS_WAIT_S = 3.0


class RemoteProcess:
    """Runs one command on its own channel; a thread hands stdout lines to `on_line`."""

    def __init__(
        self,
        conn: Connection,
        command: str,
        on_line: Callable[[str], None],
        *,
        name: str,
        on_frame: Callable[[bytes], None] | None = None,
    ) -> None:
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(f"{name}: the SSH connection is closed")
        self._transport = transport
        self.name = name
        self._channel = transport.open_session(timeout=10)
        self._channel.settimeout(READ_TIMEOUT_S)
        self._channel.exec_command(command)
        self._on_line = on_line
        self._on_frame = on_frame
        self.stderr = ""
        self.finished = threading.Event()
        self.exit_status: int | None = None
        self._reader = threading.Thread(target=self._read, name=f"ssh-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = bytearray()
        channel = self._channel
        try:
            while True:
                try:
                    chunk = channel.recv(1 << 20)
                except socket.timeout:  # TimeoutError on 3.10+, not on 3.9
                    if channel.closed or (channel.exit_status_ready() and not channel.recv_ready()):
                        break
                    continue
                if not chunk:
                    break
                buffer += chunk
                self._split(buffer)
        except OSError:
            pass  # the connection died: the caller sees no exit status
        finally:
            self._collect_exit()
            self.finished.set()

    def _split(self, buffer: bytearray) -> None:
        """Hands over every whole line and frame at the front of `buffer`, removes them."""
        pos = 0
        while True:
            end = buffer.find(b"\n", pos)
            if end < 0:
                break
            if buffer.startswith(FRAME_PREFIX, pos):
                try:
                    size = int(buffer[pos + len(FRAME_PREFIX) : end])
                except ValueError:
                    size = -1
                if size >= 0:
                    if end + 1 + size > len(buffer):
                        break  # the rest of the frame is still on its way
                    if self._on_frame is not None:
                        self._on_frame(bytes(buffer[end + 1 : end + 1 + size]))
                    pos = end + 1 + size
                    continue
            self._on_line(buffer[pos:end].decode("utf-8", "replace"))
            pos = end + 1
        del buffer[:pos]

    def _collect_exit(self) -> None:
        channel = self._channel
        try:
            while channel.recv_stderr_ready():
                self.stderr += channel.recv_stderr(65536).decode("utf-8", "replace")
            # The end of stdout can arrive just before the exit status: wait a little.
            channel.status_event.wait(EXIT_STATUS_WAIT_S)
            # paramiko reports -1 both for a lost connection and for a killed process;
            # only a dead transport means the connection itself was lost.
            if channel.exit_status_ready() and self._transport.is_active():
                self.exit_status = channel.recv_exit_status()
        except OSError:
            pass

    def send_line(self, text: str) -> bool:
        try:
            self._channel.sendall((text + "\n").encode())
        except OSError:
            return False
        return True

    def wait(self, timeout: float) -> bool:
        return self.finished.wait(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._channel.close()
