"""The capture's handshake with its controller around the window: when it opens (at the
controller's "start T", at --start-at, or now), waiting for that, and the hand-over of
the finished file (the controller fetches it, then says "delete").
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from . import clock
from .protocol import ControllerCommands, EventSink
from .signals import StopFlag

# A scheduled start ("start T") further ahead than this by our clock means our clock and
# the controller's disagree: the window opens at once instead, as with a plain "start".
MAX_START_LEAD_NS = 2_000_000_000
START_AT_SLACK_NS = 1_000_000  # ready later than --start-at by more: reported as late
# --start-at: the agent wakes this much before the time; the program opens the window at
# the exact instant (see window_start_mono), well within MAX_START_LEAD_NS.
START_AT_LEAD_NS = 50_000_000
HAND_OVER_TIMEOUT_S = 600.0  # how long a finished agent waits for the controller's fetch


def window_start_mono(start_at_ns: int | None, offset_ns: int, test_drift: bool) -> int:
    """When the window opens (monotonic ns): at `start_at_ns` (wall clock) if our clock
    puts it in the next MAX_START_LEAD_NS, else now.

    The program ignores packets before it, so the window opens at that instant however
    late this process is scheduled (a hundred agents waking on one CPU).
    """
    now = clock.monotonic_ns()
    if start_at_ns is None:
        return now
    start = start_at_ns - offset_ns
    if test_drift:  # the test clock's drift, taken back out
        start -= clock.test_drift_ns(start_at_ns)
    return start if 0 <= start - now <= MAX_START_LEAD_NS else now


def wait_for_start(commands: ControllerCommands, timeout_s: float, stop: StopFlag) -> bool:
    """Until the controller's "start" (False: stopped, the controller left, or timed out)."""
    deadline = clock.monotonic_ns() + int(timeout_s * 1e9)
    while not commands.start.wait(0.1):
        if stop.reason or commands.stop.is_set() or commands.eof.is_set():
            return False
        if clock.monotonic_ns() > deadline:
            stop.set("start timeout")
            return False
    return True


def wait_until(start_at_ns: int, iface: str, events: EventSink, stop: StopFlag) -> bool:
    """--start-at: every host of a fleet opens its window at the same wall-clock time,
    however the hosts were started (Ansible's forks and batches start them apart).

    Sleeps until just before it; window_start_mono then has the program open the window
    at the instant itself."""
    late_ns = clock.wall_clock_ns() - start_at_ns
    if late_ns > START_AT_SLACK_NS:
        # Compile and attach took longer than the play allowed: capture anyway, and say
        # so (the window starts late on this host only).
        events.emit("late", start_at_ns=start_at_ns, late_ns=late_ns)
        print(
            f"xdpcap: {iface}: ready {late_ns / 1e6:.1f} ms after --start-at; the window opens now",
            file=sys.stderr,
        )
        return True
    while not stop.reason:
        remaining_ns = start_at_ns - START_AT_LEAD_NS - clock.wall_clock_ns()
        if remaining_ns <= 0:
            return True
        time.sleep(min(remaining_ns, 100_000_000) / 1e9)  # signals are seen within 0.1 s
    return False


def hand_over(file: str, commands: ControllerCommands, events: EventSink, stop: StopFlag) -> None:
    """Wait (bounded) for the controller to fetch the file (in a thread of its own: the
    main thread detaches and unlocks meanwhile, then waits for this one).

    It answers "delete" once its copy matches size and sha256, which saves a remote
    command per host; without an answer the file stays for `xdpcap collect`.
    """
    if events.controller_gone:
        return
    deadline = clock.monotonic_ns() + int(HAND_OVER_TIMEOUT_S * 1e9)
    while not commands.delete.is_set():
        if commands.eof.is_set() or stop.reason == "SIGTERM":
            return
        if clock.monotonic_ns() > deadline:
            return
        # Woken at once by "delete", "keep" or EOF; the timeout is for signals.
        commands.changed.wait(0.2)
        commands.changed.clear()
    output = Path(file)
    for path in (output, Path(file + ".json")):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        output.parent.rmdir()  # the run's folder, once every capture in it is fetched
    events.emit("deleted")
