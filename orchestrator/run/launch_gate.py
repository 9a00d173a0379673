"""How many hosts are prepared at once: at most --forks, fewer while launches slow down.

Preparing a host (connect, a login shell, the agent's start until it says "ready") costs
the host some CPU and the controller a little. On a fleet every host has CPUs of its
own, and a launch takes as long with a hundred under way as with one. Where hosts share
CPU — the namespace lab, where every "host" runs on the controller's cores, or a
controller too small for its fleet — a hundred at once make each of them slow, and the
last host is ready later than with a few at a time (bench/run, 100 lab hosts on 2 cores:
all ready after 20 s with 100 at once, 12 s with 8).

So the gate works as TCP's congestion window does, with launch times for round trips
(as TCP Vegas): it starts with a few launches, allows one more for every launch that
finishes within TOLERANCE × the fastest seen so far (the limit doubles each round while
hosts answer as fast as they can), and one fewer for every launch that takes longer.
A failed launch says nothing about load and changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

START = 16  # launches at first (all of them, for a run on fewer hosts)
FLOOR = 4  # never fewer at once, however slow: a slow host must not stall the rest
TOLERANCE = 2.0  # a launch slower than this × the fastest is a sign of contention


class LaunchGate:
    def __init__(
        self, ceiling: int, start: int = START, floor: int = FLOOR, tolerance: float = TOLERANCE
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = min(floor, self.ceiling)
        self.limit = min(self.ceiling, max(start, self.floor))
        self.tolerance = tolerance
        self.fastest_s: float | None = None
        self.peak = 0  # the most launches under way at once (run.json)
        self._active = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Wait for a free slot; what runs inside is one launch, timed."""
        with self._cond:
            self._cond.wait_for(lambda: self._active < self.limit)
            self._active += 1
            self.peak = max(self.peak, self._active)
        started = time.monotonic()
        finished = False
        try:
            yield
            finished = True
        finally:
            with self._cond:
                self._active -= 1
                if finished:
                    self._adapt(time.monotonic() - started)
                self._cond.notify_all()

    def _adapt(self, took_s: float) -> None:
        if self.fastest_s is None or took_s < self.fastest_s:
            self.fastest_s = took_s
        if took_s <= self.tolerance * self.fastest_s:
            self.limit = min(self.ceiling, self.limit + 1)
        else:
            self.limit = max(self.floor, self.limit - 1)

    def report(self) -> dict[str, float | int | None]:
        """For run.json: what --forks allowed and what the launches got."""
        with self._cond:
            return {
                "forks": self.ceiling,
                "peak_at_once": self.peak,
                "limit_at_end": self.limit,
                "fastest_launch_s": round(self.fastest_s, 3) if self.fastest_s else None,
            }
