"""The agent ↔ controller contract: JSON lines on stdout, commands on stdin.

Agent → controller events (one JSON object a line, key "event"):
  ready      compiled and attached; waiting for "start" (when asked to wait)
  capturing  the window opened (wall-clock ns)
  progress   packets, bytes, lost so far, every ~0.5 s
  done       the final summary (see CaptureSummary.to_dict)
  error      one-line message; the agent exits non-zero after it
Controller → agent lines on stdin: "start", "stop", and after "done": "delete" (the
controller has verified its copy: remove the file) or "keep". EOF on stdin means the
controller is gone: the agent keeps capturing until its own deadline, then detaches and
keeps the file for `xdpcap collect`.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO


class EventSink:
    """Where the agent reports. JSON lines for a controller, nothing in interactive use."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self.controller_gone = False

    def emit(self, event: str, **fields: Any) -> None:
        if self._stream is None or self.controller_gone:
            return
        try:
            self._stream.write(json.dumps({"event": event, **fields}) + "\n")
            self._stream.flush()
        except (BrokenPipeError, OSError):
            # The SSH channel is gone; the capture goes on to its own deadline.
            self.controller_gone = True


class ControllerCommands:
    """Reads the controller's lines from stdin in a daemon thread."""

    def __init__(self, stream: TextIO = sys.stdin) -> None:
        self.start = threading.Event()
        self.stop = threading.Event()
        self.delete = threading.Event()
        self.eof = threading.Event()
        self.changed = threading.Event()  # set at every line and at EOF: one thing to wait on
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                word = line.strip()
                if word == "start":
                    self.start.set()
                elif word == "stop":
                    self.stop.set()
                elif word == "delete":
                    self.delete.set()
                elif word == "keep":
                    self.eof.set()
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
