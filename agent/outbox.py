"""Everything the agent sends the controller, written by one thread that may block.

The capture loop must never wait on its SSH channel: a busy controller, a slow network
or a reader that stopped reading (a Wireshark window held open) would otherwise stop the
draining of the perf rings, and the kernel would drop samples. So the loop only queues:
events (small, few, always kept) and stream frames (the packets as they are written,
bounded in bytes — past the bound a frame is refused and its packets are counted as
skipped; the file still holds them). This thread is the only writer of stdout, so lines
and frames never interleave.
"""

from __future__ import annotations

import os
import threading
from collections import deque

# Stream frames queued and not yet written, at most; events are never refused.
FRAME_BUDGET_BYTES = 16 << 20


class Outbox:
    def __init__(self, fd: int, frame_budget: int = FRAME_BUDGET_BYTES) -> None:
        self._fd = fd
        self._budget = frame_budget
        self._queue: deque[tuple[bytes, bool]] = deque()  # (data, is a frame)
        self._unwritten = 0  # items queued or being written
        self._frame_bytes = 0
        self._closing = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self.gone = False  # the channel failed: nothing more can be sent
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def put_line(self, line: bytes) -> None:
        """An event line: always queued (unless the channel is gone)."""
        with self._lock:
            if self.gone:
                return
            self._queue.append((line, False))
            self._unwritten += 1
            self._wake.notify()

    def put_frame(self, frame: bytes) -> bool:
        """A stream frame, if it fits the budget; False means refused (count its packets)."""
        with self._lock:
            if self.gone or self._frame_bytes + len(frame) > self._budget:
                return False
            self._frame_bytes += len(frame)
            self._queue.append((frame, True))
            self._unwritten += 1
            self._wake.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:  # closing, and everything is out
                    return
                data, is_frame = self._queue.popleft()
            try:
                _write_all(self._fd, data)
            except OSError:
                # The SSH channel is gone; the capture goes on to its own deadline.
                with self._lock:
                    self.gone = True
                    self._queue.clear()
                    self._unwritten = self._frame_bytes = 0
                    self._idle.notify_all()
                return
            with self._lock:
                self._unwritten -= 1
                if is_frame:
                    self._frame_bytes -= len(data)
                if not self._unwritten:
                    self._idle.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait (bounded) until everything queued so far is written; False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._unwritten or self.gone, timeout)

    def close(self, timeout: float) -> None:
        """Write what is queued (bounded in time), then end the thread."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
