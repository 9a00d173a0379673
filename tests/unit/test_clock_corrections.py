"""How measured clock offsets become the shifts the merge subtracts."""

from __future__ import annotations

import threading

from xdpcap.orchestrator.clock.probe import (
    SETTLE_ROUNDS,
    ClockOffset,
    corrections,
    measure_rounds,
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


def _rounds(rtts: list[int], offset: int) -> tuple[list[int], object]:
    """A round trip per call with the given round-trip times (then the last one again),
    against a clock `offset` ns ahead, answering half-way; and the calls made."""
    calls: list[int] = []

    def round_trip() -> tuple[int, int, int]:
        rtt = rtts[min(len(calls), len(rtts) - 1)]
        sent = 1_000_000_000 * (len(calls) + 1)
        calls.append(rtt)
        return sent, sent + rtt // 2 + offset, sent + rtt

    return calls, round_trip


def test_the_rounds_stop_once_the_minimum_round_trip_has_settled() -> None:
    # 2 ms round trips after a slow first one; jitter well under 5 % is no gain.
    calls, round_trip = _rounds([4 * MS, 2 * MS, 2 * MS + 20_000, 2 * MS - 30_000], 5 * MS)
    offset = measure_rounds(round_trip, "h", slots=threading.BoundedSemaphore(1))
    assert len(calls) == 2 + SETTLE_ROUNDS  # the gain, then three rounds without one
    assert offset == ClockOffset(5 * MS, (2 * MS - 30_000) // 2)  # the smallest still wins


def test_the_rounds_go_on_while_the_round_trip_still_falls() -> None:
    calls, round_trip = _rounds([8 * MS, 6 * MS, 4 * MS, 3 * MS, 5 * MS // 2, 2 * MS], 0)
    measure_rounds(round_trip, "h")
    assert len(calls) == 6 + SETTLE_ROUNDS  # the last improvement, then settled


def test_the_rounds_end_at_the_limit() -> None:
    calls, round_trip = _rounds([100 * MS - i * 10 * MS for i in range(9)] + [MS], 0)
    measure_rounds(round_trip, "h", rounds=5)
    assert len(calls) == 5
