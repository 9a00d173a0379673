"""How a capture is stopped: signal handlers that only set a flag, which the loop reads
between polls (an exception in a handler could land anywhere, mid-write included)."""

from __future__ import annotations

import signal
from types import FrameType


class StopFlag:
    """Signal handlers only set this; the loop looks at it between polls."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


def install_signal_handlers(stop: StopFlag, controller: bool) -> dict[int, object]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set(signal.Signals(signum).name)

    previous = {}
    wanted = [signal.SIGINT, signal.SIGTERM]
    if controller:
        # A cut SSH connection must not end the capture: the agent has its own deadline.
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    else:
        wanted.append(signal.SIGHUP)
    for signum in wanted:
        previous[signum] = signal.signal(signum, handler)
    return previous
