"""How measured clock offsets become the shifts the merge subtracts."""

from __future__ import annotations

from xdpcap.orchestrator.clock import ClockOffset, corrections

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
