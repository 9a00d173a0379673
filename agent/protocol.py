"""The agent ↔ controller contract: JSON lines on stdout, commands on stdin.

Agent → controller events (one JSON object a line, key "event"):
  ready      compiled and attached; waiting for "start" (when asked to wait)
  capturing  the window opened (wall-clock ns)
  interface  what the file's interface block says (name, link type, snaplen, ...),
             for the controller's live stream (with --stream)
  progress   packets, bytes, lost so far, every ~0.5 s
  sync       the host clock's synchronisation state (chrony or timedatectl)
  done       the final summary (see CaptureSummary.to_dict)
  error      one-line message; the agent exits non-zero after it
With --stream, stream frames come between the lines: a line `xdpcap-frame N` followed
by N bytes: FRAME_HEAD, then the packets' enhanced packet blocks as the file has them
(interface 0, the host's wall-clock nanoseconds, time order). FRAME_HEAD says that
nothing earlier than `until_ns` will follow in the stream, how many packets the frame
holds, and how many packets the stream skipped so far (over its bound: see outbox.py).
Controller → agent lines on stdin: "start" (now) or "start T" (the window opens at T, a
wall-clock time in ns, so every host opens it at the same instant), "stop", and after
"done": "delete" (the controller has verified its copy: remove the file) or "keep"; at
any time "clock", answered at once with a "clock" event carrying our wall clock (the
controller's offset probe, on the channel it already has).
EOF on stdin means the controller is gone: the agent keeps capturing until its own
deadline, then detaches and keeps the file for `xdpcap collect`.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from .outbox import Outbox

FRAME_PREFIX = b"xdpcap-frame "
# until_ns (host wall clock), packets in this frame, packets skipped by the stream so far.
FRAME_HEAD = struct.Struct("<QII")
CLOSE_WAIT_S = 10.0  # at exit, how long the last events may take to leave


def stream_frame(until_ns: int, packets: int, skipped: int, blocks: bytes) -> bytes:
    body_len = FRAME_HEAD.size + len(blocks)
    return b"%s%d\n%s%s" % (
        FRAME_PREFIX,
        body_len,
        FRAME_HEAD.pack(until_ns, packets, skipped),
        blocks,
    )


class EventSink:
    """Where the agent reports: JSON lines (and stream frames) for a controller, through
    the outbox's thread; nothing in interactive use."""

    def __init__(self, fd: int | None) -> None:
        self.outbox = Outbox(fd) if fd is not None else None

    @property
    def controller_gone(self) -> bool:
        return self.outbox is not None and self.outbox.gone

    def emit(self, event: str, **fields: Any) -> None:
        if self.outbox is not None:
            self.outbox.put_line((json.dumps({"event": event, **fields}) + "\n").encode())

    def close(self) -> None:
        """Send what is queued (bounded): the last event must reach the controller."""
        if self.outbox is not None:
            self.outbox.close(CLOSE_WAIT_S)


class ControllerCommands:
    """Reads the controller's lines from stdin in a daemon thread; `on_clock` answers
    "clock" from that thread, so the answer waits for nothing else, and `on_start` (once
    set: the capture arms it when ready) opens the window from that thread too: "start T"
    then costs a host one wake-up, as "clock" does, which is what the controller measures
    its lead by (a hundred agents' main threads waking on two cores took 0.2 s)."""

    def __init__(
        self, stream: TextIO = sys.stdin, on_clock: Callable[[], None] | None = None
    ) -> None:
        self._on_clock = on_clock
        self.on_start: Callable[[int | None], None] | None = None
        self.start = threading.Event()
        self.start_at_ns: int | None = None  # "start T": when the window opens
        self.stop = threading.Event()
        self.delete = threading.Event()
        self.eof = threading.Event()
        self.changed = threading.Event()  # set at every line and at EOF: one thing to wait on
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                word, _, argument = line.strip().partition(" ")
                if word == "start":
                    if argument.isdigit():
                        self.start_at_ns = int(argument)
                    if self.on_start is not None:
                        self.on_start(self.start_at_ns)
                    self.start.set()
                elif word == "stop":
                    self.stop.set()
                elif word == "delete":
                    self.delete.set()
                elif word == "keep":
                    self.eof.set()
                elif word == "clock" and self._on_clock is not None:
                    self._on_clock()
                    continue
                self.changed.set()
        except (OSError, ValueError):
            pass
        self.eof.set()
        self.changed.set()


def parse_event(line: str) -> dict[str, Any] | None:
    """The controller's side: one stdout line to an event, None for anything else."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
