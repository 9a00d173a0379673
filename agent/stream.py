"""The live stream (--stream): the packets the capture writes, also sent to the controller.

The capture hands over each batch it writes, already in time order, with the horizon it
was released at: no packet stamped before it can come any more. Batches are gathered
into frames (a few per second while packets flow, so the controller's merge sees them
soon; an empty frame now and then when idle, so the controller knows this host is still
there and how far its time has got). Frames go through the outbox, which refuses what
exceeds its bound rather than make the capture wait: the packets of a refused frame are
counted as skipped. The file stays the record of the capture.
"""

from __future__ import annotations

from collections.abc import Callable

from .outbox import Outbox
from .protocol import stream_frame

FRAME_BYTES = 256 << 10  # a frame is sent once it holds this much
FRAME_EVERY_NS = 10_000_000  # ... or at once if the last frame left this long ago
# An empty frame this often when nothing was captured: the controller's watermark waits
# for every host's report, so a quiet host's marks pace the whole stream.
MARK_EVERY_NS = 25_000_000


class StreamSender:
    def __init__(self, outbox: Outbox, to_wall_ns: Callable[[int], int]) -> None:
        self._outbox = outbox
        self._to_wall = to_wall_ns  # a monotonic horizon to the host's wall clock
        self._blocks: list[bytes] = []
        self._bytes = 0
        self._last_sent = 0
        self._until = 0
        self.streamed = 0  # packets handed to the outbox
        self.skipped = 0  # packets the outbox refused (the file has them)

    def add(self, blocks: list[bytes], horizon_mono_ns: int, now_mono_ns: int) -> None:
        """Written `blocks` (maybe none), all stamped before `horizon_mono_ns`."""
        if blocks:
            self._blocks += blocks
            self._bytes += sum(map(len, blocks))
        self._until = max(self._until, self._to_wall(horizon_mono_ns))
        since_last = now_mono_ns - self._last_sent
        if self._blocks:
            due = self._bytes >= FRAME_BYTES or since_last >= FRAME_EVERY_NS
        else:
            due = since_last >= MARK_EVERY_NS
        if due:
            self._send(now_mono_ns)

    def finish(self, blocks: list[bytes], until_wall_ns: int) -> None:
        """The last packets; nothing of this capture comes after `until_wall_ns`."""
        self._blocks += blocks
        self._until = max(self._until, until_wall_ns)
        self._send(0)

    def _send(self, now_mono_ns: int) -> None:
        packets = len(self._blocks)
        frame = stream_frame(self._until, packets, self.skipped, b"".join(self._blocks))
        if self._outbox.put_frame(frame):
            self.streamed += packets
        else:
            self.skipped += packets
        self._blocks = []
        self._bytes = 0
        self._last_sent = now_mono_ns
