"""What the controller does with each event a capture agent sends (agent/protocol.py):
one small handler per kind, looked up in a table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .state import Phase

if TYPE_CHECKING:
    from .host import RemoteHost

Event = dict[str, Any]


def _ready(remote: RemoteHost, event: Event, received_ns: int) -> None:
    remote.state.move(Phase.READY)
    remote.state.t_ready_s = time.monotonic() - remote.started
    # Kept for run.json: a host whose headers are not its kernel's is worth knowing about.
    remote.state.headers = event.get("headers")
    remote.ready_event.set()


def _capturing(remote: RemoteHost, event: Event, received_ns: int) -> None:
    state = remote.state
    state.move(Phase.CAPTURING)
    state.t_capturing_s = time.monotonic() - remote.started
    state.window_start_ns = int(event["window_start_ns"])
    if remote.live is not None:
        armed = int(event.get("armed_ns", state.window_start_ns))
        remote.live.capturing(armed, remote.start_sent_ns, time.time_ns())


def _interface(remote: RemoteHost, event: Event, received_ns: int) -> None:
    if remote.live is not None:
        remote.live.describe(event)


def _progress(remote: RemoteHost, event: Event, received_ns: int) -> None:
    state = remote.state
    state.packets = int(event.get("packets", 0))
    state.bytes = int(event.get("bytes", 0))
    state.lost = int(event.get("lost", 0))
    state.seen = int(event.get("seen", 0))


def _done(remote: RemoteHost, event: Event, received_ns: int) -> None:
    state = remote.state
    state.summary = event
    state.packets = int(event.get("written", 0))
    state.bytes = int(event.get("bytes_written", 0))
    state.lost = int(event.get("lost", 0))
    state.seen = int(event.get("seen", 0))
    state.move(Phase.CAPTURED)
    if remote.live is not None:
        remote.live.done(event)
    remote.done_event.set()


def _deleted(remote: RemoteHost, event: Event, received_ns: int) -> None:
    remote.deleted.set()


def _sync(remote: RemoteHost, event: Event, received_ns: int) -> None:
    remote.facts["sync"] = str(event.get("state", ""))


def _error(remote: RemoteHost, event: Event, received_ns: int) -> None:
    remote.state.move(Phase.FAILED, str(event.get("message")))
    if remote.live is not None:
        remote.live.done(None)
    remote.done_event.set()


_HANDLERS: dict[str, Callable[[RemoteHost, Event, int], None]] = {
    "ready": _ready,
    "capturing": _capturing,
    "interface": _interface,
    "progress": _progress,
    "done": _done,
    "deleted": _deleted,
    "sync": _sync,
    "error": _error,
}


def on_event(remote: RemoteHost, event: Event, received_ns: int) -> bool:
    """Apply one event to the host; True if the live table should redraw.

    A clock answer only feeds the probe waiting for it; an unknown kind (a newer agent)
    changes nothing but still wakes the run, as before.
    """
    if event["event"] == "clock":
        remote.clock_answers.put((int(event["realtime_ns"]), received_ns))
        return False
    handler = _HANDLERS.get(event["event"])
    if handler is not None:
        handler(remote, event, received_ns)
    return True
