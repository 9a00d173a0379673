"""From the hosts' captures to bounds on their clock offsets.

With o_H the clock of host H minus the reference clock, a time t read on H happened at
t − o_H in the reference's time. Two rules bound the offsets:

- The same packet leaving A at t_A (A's egress) and arriving at B at t_B (B's ingress)
  cannot arrive before it left: t_B − o_B ≥ t_A − o_A, so o_B − o_A ≤ t_B − t_A.
  Packets the other way bound the difference from the other side (the NTP idea, with the
  capture points measuring the one-way delays themselves).
- An answer cannot be seen before its question was: an echo reply seen on Y at t_Y and
  its request seen on X at t_X (any direction, X ≠ Y) give o_Y − o_X ≤ t_Y − t_X. This
  works with ingress-only captures too.

The bounds come from one streaming pass over all hosts' files (join.py). Per ordered
host pair and rule, a fixed-size summary of them is kept (`PairSamples`): how many, a
uniform sample (for the one-way delays' median and the epoch) and the tightest bound per
time bucket, its *floor* (for the offsets and for how they drift, drift.py). Memory
stays bounded however long the capture, and every packet counts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .join import OnMatch

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
            _reservoir(self.same, self.same_count, (t_from, t_to), rng)
            self.same_floor.add(t_from, t_to)
        else:
            self.answer_count += 1
            _reservoir(self.answers, self.answer_count, (t_from, t_to), rng)
            self.answer_floor.add(t_from, t_to)


@dataclass
class Constraints:
    hosts: list[str]
    samples: dict[tuple[int, int], PairSamples] = field(default_factory=dict)
    packets_read: list[int] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # hosts read only in part: none now
    interfaces: list[list[Any]] = field(default_factory=list)  # join.JoinResult.interfaces


def gather(
    paths: Sequence[str | os.PathLike[str]],
    names: Sequence[str],
    priors_ns: Sequence[int],
    *,
    on_match: OnMatch | None = None,
) -> Constraints:
    """Read every file (host i = paths[i], its prior offset priors_ns[i]) in one pass."""
    from .join import join_captures  # join.py builds on this module's summaries

    joined = join_captures(paths, priors_ns, on_match=on_match)
    return Constraints(list(names), joined.pairs, joined.packets, interfaces=joined.interfaces)


def _reservoir(values: list, count: int, value: object, rng: Dice) -> None:
    """Keep a uniform sample of at most SAMPLES values; `count` includes this one."""
    if len(values) < SAMPLES:
        values.append(value)
    else:
        slot = rng.randrange(count)
        if slot < SAMPLES:
            values[slot] = value
