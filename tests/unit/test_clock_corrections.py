"""How measured clock offsets become the shifts the merge subtracts."""

from __future__ import annotations

import json
import threading
import time

from xdpcap.orchestrator.clock import (
    SETTLE_ROUNDS,
    ClockOffset,
    ClockProbe,
    corrections,
)

MS = 1_000_000


def test_no_offsets_no_shifts() -> None:
    assert corrections({}) == {}


def test_a_skewed_host_is_moved_relative_to_the_median() -> None:
    # Every probe carries the same SSH bias (+40 us); one host is 250 ms ahead.
    offsets = {
        "a": ClockOffset(40_000, 100_000),
        "b": ClockOffset(45_000, 100_000),
        "c": ClockOffset(250 * MS + 42_000, 100_000),
    }
    shifts = corrections(offsets)
    assert shifts == {"a": 0, "b": 0, "c": 250 * MS + 42_000 - 45_000}


def test_an_offset_within_its_error_bound_is_left_alone() -> None:
    offsets = {"a": ClockOffset(0, 50_000), "b": ClockOffset(80_000, 100_000)}
    assert corrections(offsets) == {"a": 0, "b": 0}
    offsets["b"] = ClockOffset(180_000, 100_000)  # now beyond its bound: moved
    assert corrections(offsets) == {"a": 0, "b": 180_000}


def test_even_count_takes_the_lower_median() -> None:
    offsets = {n: ClockOffset(v * MS, 1) for n, v in zip("abcd", (1, 2, 10, 20))}
    assert corrections(offsets) == {"a": -1 * MS, "b": 0, "c": 8 * MS, "d": 18 * MS}


def test_a_single_host_is_never_moved() -> None:
    assert corrections({"only": ClockOffset(5_000 * MS, 1)}) == {"only": 0}


class _Replies:
    """A probe's channel and reader: each answer comes `delays[i]` ns after its request,
    from a clock `offset` ns ahead of ours."""

    def __init__(self, delays: list[int], offset: int) -> None:
        self.delays = list(delays)
        self.offset = offset
        self.rounds = 0
        self.sent = 0

    def sendall(self, _data: bytes) -> None:
        self.sent = time.time_ns()

    def readline(self) -> bytes:
        delay = self.delays[min(self.rounds, len(self.delays) - 1)]
        self.rounds += 1
        while time.time_ns() < self.sent + delay:
            pass
        return json.dumps({"realtime_ns": time.time_ns() + self.offset}).encode() + b"\n"


def _probe(replies: _Replies) -> ClockProbe:
    probe = ClockProbe.__new__(ClockProbe)
    probe.name = "h"
    probe._channel = replies
    probe._reader = replies
    return probe


def test_the_rounds_stop_once_the_minimum_round_trip_has_settled() -> None:
    # Round trips of 2 ms after a slow first one: jitter (well under 5 %) is no gain.
    steady = _Replies([4 * MS, 2 * MS], offset=5 * MS)
    offset = _probe(steady).measure(slots=threading.BoundedSemaphore(1))
    assert steady.rounds == 2 + SETTLE_ROUNDS  # the gain, then three rounds without one
    assert abs(offset.offset_ns - 5 * MS) <= offset.error_ns + 50_000


def test_the_rounds_go_on_while_the_round_trip_still_falls() -> None:
    falling = _Replies([8 * MS, 6 * MS, 4 * MS, 3 * MS, 5 * MS // 2, 2 * MS], 0)
    _probe(falling).measure()
    assert falling.rounds == 6 + SETTLE_ROUNDS  # the last improvement, then settled
