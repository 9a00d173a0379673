"""What the streaming pass keeps per ordered host pair (`PairSamples`): how many bounds,
a uniform sample of them and their floor per time bucket, with the dice both engines
roll alike. Fixed size per pair, however long the capture."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Observations of one packet further apart than this (after the prior correction) are
# not the same packet: a retransmission, or an id that wrapped.
MATCH_WINDOW_NS = 2_000_000_000
MAX_COPIES = 8  # a key seen more often than this within the window is ambiguous: skipped
SAMPLES = 512  # the uniform sample kept per ordered host pair and rule
# The floor: at most FLOOR_BUCKETS buckets, FLOOR_START_NS wide at first; a capture
# longer than they cover doubles their width (neighbours merged). A bucket keeps its
# tightest bound before any drift is taken out: once it is, a point beside it may be
# tighter, by at most rate × width (and no more than the delays' spread). Measured with
# tests/unit/scenarios_clock.drifting_mesh, 3 hosts drifting up to 50 ppm: offsets
# within 1.2 µs over 60 s (256 ms buckets) and over 30 min (8 s buckets). 256 buckets are
# few enough for drift.py to fit 600 host pairs in a fraction of a second.
FLOOR_BUCKETS = 256
FLOOR_START_NS = 1_000_000

_U64 = (1 << 64) - 1


class Dice(Protocol):
    def randrange(self, stop: int) -> int: ...


class SplitMix:
    """splitmix64: the reservoirs' dice, rolled the same way by the C join (identical
    samples from both engines)."""

    def __init__(self, seed: int = 0) -> None:
        self.state = seed & _U64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _U64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
        return z ^ (z >> 31)

    def randrange(self, stop: int) -> int:
        return self.next() % stop


class Floor:
    """The tightest bound (smallest t_to − t_from) per bucket of t_from: the points a
    bound and a drift are read from, in fixed memory."""

    def __init__(self) -> None:
        self.origin: int | None = None
        self.width = FLOOR_START_NS
        self.buckets: list[tuple[int, int] | None] = [None] * FLOOR_BUCKETS

    @classmethod
    def of(cls, points: list[tuple[int, int]]) -> Floor:
        """A floor holding `points` (what the C join's floor held)."""
        floor = cls()
        floor.buckets = list(points)
        return floor

    def add(self, t_from: int, t_to: int) -> None:
        if self.origin is None:
            self.origin = t_from
        since = max(t_from - self.origin, 0)
        while since // self.width >= FLOOR_BUCKETS:
            self._widen()
        k = since // self.width
        held = self.buckets[k]
        if held is None or t_to - t_from < held[1] - held[0]:
            self.buckets[k] = (t_from, t_to)

    def _widen(self) -> None:
        """Twice as wide: each pair of neighbours keeps its tighter bound (the first on
        a tie)."""
        merged: list[tuple[int, int] | None] = []
        for a, b in zip(self.buckets[0::2], self.buckets[1::2]):
            take_b = b is not None and (a is None or b[1] - b[0] < a[1] - a[0])
            merged.append(b if take_b else a)
        self.buckets = merged + [None] * (FLOOR_BUCKETS - len(merged))
        self.width *= 2

    def points(self) -> list[tuple[int, int]]:
        return [point for point in self.buckets if point is not None]


@dataclass
class PairSamples:
    """What bounds o_to − o_from for one ordered pair of hosts: (t_from, t_to) times of
    a packet seen leaving `from` and arriving at `to` (`same`), or of a question seen
    on `from` and its answer on `to` (`answers`); each a uniform sample of at most
    SAMPLES, with the floor of all of them beside it."""

    same: list[tuple[int, int]] = field(default_factory=list)
    answers: list[tuple[int, int]] = field(default_factory=list)
    same_count: int = 0
    answer_count: int = 0
    same_floor: Floor = field(default_factory=Floor)
    answer_floor: Floor = field(default_factory=Floor)

    def add(self, t_from: int, t_to: int, same: bool, rng: Dice) -> None:
        if same:
            self.same_count += 1
            reservoir(self.same, self.same_count, (t_from, t_to), rng)
            self.same_floor.add(t_from, t_to)
        else:
            self.answer_count += 1
            reservoir(self.answers, self.answer_count, (t_from, t_to), rng)
            self.answer_floor.add(t_from, t_to)


def reservoir(values: list, count: int, value: object, rng: Dice, size: int = SAMPLES) -> None:
    """Keep a uniform sample of at most `size` values; `count` includes this one. (The C
    engine rolls the same dice in the same order: both keep the same sample.)"""
    if len(values) < size:
        values.append(value)
    else:
        slot = rng.randrange(count)
        if slot < size:
            values[slot] = value
