"""Align the hosts' clocks from the traffic they captured (the merge applies the result).

`align()` reads all hosts' captures in one streaming pass (join.py, constraints.py),
estimates each clock's rate (drift.py), solves every host's offset together (solver.py),
and measures the one-way delay between each pair of hosts that saw the same packets —
leaving one and arriving at the other.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from .constraints import Constraints, gather
from .drift import rates
from .solver import HostClock, Solution, solve

if TYPE_CHECKING:
    import threading

    from ..follow.join import OnMatch
    from ..merge.blocks import Interface
    from ..merge.packet_ids import PacketMarks

__all__ = ["Alignment", "PairDelay", "align"]


@dataclass(frozen=True)
class PairDelay:
    """One-way delays of the packets seen leaving `sender` and arriving at `receiver`."""

    sender: str
    receiver: str
    packets: int
    min_ns: int
    median_ns: int


@dataclass(frozen=True)
class Alignment:
    names: list[str]
    reference: str
    clocks: list[HostClock]  # per host, in input order: the offsets at epoch_ns
    rates_ppb: list[int]  # how fast each clock ran against the reference's
    epoch_ns: int  # where the offsets hold; they grow by rate × (t − epoch)
    bounds_same_packet: int  # ordered host pairs bounded by packets seen on both
    bounds_answer: int  # ... by answers seen after their questions
    inconsistent: list[str]  # hosts whose bounds contradict each other
    truncated: list[str]  # hosts whose capture was read only in part (none since every
    # packet is read; the key stays in run.json)
    # Each host's interfaces as its file describes them (the pass met them): not in run.json.
    interfaces: list[list[Interface]] = field(default_factory=list)
    packets_read: list[int] = field(default_factory=list)  # per host, by the pass
    # What `delays` is computed from, when first asked for: the merge needs the clocks
    # only, and starts without waiting for it.
    delay_inputs: tuple = field(default=(), repr=False, compare=False)

    @cached_property
    def delays(self) -> list[PairDelay]:
        """Per ordered host pair, the one-way delays of the packets seen on both."""
        delays = _delays(*self.delay_inputs) if self.delay_inputs else []
        object.__setattr__(self, "delay_inputs", ())  # the pass's samples can go
        return delays

    @property
    def shifts_ns(self) -> list[int]:
        return [clock.offset_ns for clock in self.clocks]

    def describe(self, index: int) -> str:
        """For a host's interface description."""
        clock = self.clocks[index]
        if clock.source == "reference":
            return "clock reference of the merge (offsets from the traffic)"
        text = f"clock offset {_ms(clock.offset_ns)} from {clock.source}"
        if self.rates_ppb[index]:
            text += f", drifting {self.rates_ppb[index] / 1000:+.3f} ppm"
        if clock.lower_ns > -float("inf") or clock.upper_ns < float("inf"):
            text += f", feasible [{_bound(clock.lower_ns)}, {_bound(clock.upper_ns)}]"
        return text

    def summary(self) -> str:
        """For the merged file's section comment and the run's report."""
        text = (
            f"clocks aligned from the traffic, reference {self.reference}: "
            f"{self.bounds_same_packet} host pairs bounded by packets seen on both, "
            f"{self.bounds_answer} by answers seen after their questions"
        )
        if self.inconsistent:
            text += (
                f"; INCONSISTENT bounds between {', '.join(self.inconsistent)} "
                "(NAT, a proxy, or files of different captures?): probe offsets used"
            )
        if self.truncated:
            text += f"; read in part: {', '.join(self.truncated)}"
        return text

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "hosts": {
                name: {
                    "offset_ns": clock.offset_ns,
                    "drift_ppb": rate,
                    "feasible_ns": [_json_bound(clock.lower_ns), _json_bound(clock.upper_ns)],
                    "source": clock.source,
                }
                for name, clock, rate in zip(self.names, self.clocks, self.rates_ppb)
            },
            "epoch_ns": self.epoch_ns,
            "one_way_delays": [d.__dict__ for d in self.delays],
            "bounds_same_packet": self.bounds_same_packet,
            "bounds_answer": self.bounds_answer,
            "inconsistent": self.inconsistent,
            "truncated": self.truncated,
        }


def align(
    paths: Sequence[str | os.PathLike[str]],
    names: Sequence[str],
    priors_ns: Sequence[int] | None = None,
    *,
    on_match: OnMatch | None = None,
    marks: PacketMarks | None = None,
    shared: threading.Event | None = None,
) -> Alignment:
    """Every host's offset from its capture's traffic; priors_ns (the SSH probe's shifts,
    or zeros) fill in where the traffic says too little. `on_match` sees every packet
    the pass joins (join.join_captures): journeys are built in the same pass, and
    `marks` gets the packets seen at two capture points or more (and `shared` is set
    once there are bounds or marks: join.join_captures)."""
    priors = list(priors_ns) if priors_ns is not None else [0] * len(paths)
    found = gather(paths, names, priors, on_match=on_match, marks=marks, shared=shared)
    return solve_alignment(found, priors)


def without_traffic(names: Sequence[str], priors_ns: Sequence[int]) -> Alignment:
    """The alignment of hosts that shared no traffic: what `align` gives when its pass
    bounds nothing (the probe's offsets). A merge can start from it before the pass ends."""
    return solve_alignment(Constraints(list(names)), list(priors_ns))


def solve_alignment(found: Constraints, priors: list[int]) -> Alignment:
    """Offsets and drifts from what the pass gathered; `priors` fill in the rest."""
    n = len(found.hosts)
    # The reference: the host whose prior is the median, so the merged timeline keeps
    # the fleet's consensus clock (as the probe's corrections do).
    order = sorted(range(n), key=lambda h: priors[h])
    reference = order[(len(order) - 1) // 2]
    epoch = _epoch(found)
    drift = rates(n, found.samples, reference)
    limits, kinds = _bounds(found, drift, epoch)
    solution = solve(n, limits, priors, reference)
    if solution.inconsistent and any(drift):
        # Rates from a short or sparse capture can be off by more than the bounds
        # allow; constant offsets may still satisfy them all.
        steady = [0.0] * n
        steady_limits, steady_kinds = _bounds(found, steady, epoch)
        steady_solution = solve(n, steady_limits, priors, reference)
        if not steady_solution.inconsistent:
            drift, kinds, solution = steady, steady_kinds, steady_solution
    if solution.inconsistent:
        drift = [0.0] * n  # the probe's offsets stand alone: no rate from the traffic
    return _alignment(found, solution, drift, epoch, kinds)


def _bounds(
    found: Constraints, drift: list[float], epoch: int
) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], str]]:
    """The tightest bound per ordered host pair, with both times of every sample taken
    back to what a drift-free clock would have read; and which kind of sample gave it."""
    limits: dict[tuple[int, int], int] = {}
    kinds: dict[tuple[int, int], str] = {}
    for (a, b), pair in found.samples.items():
        # The floors hold each time bucket's tightest bound of all the pair's packets.
        floors = (("same packet", pair.same_floor), ("answer", pair.answer_floor))
        for kind, floor in floors:
            points = floor.points()
            if not points:
                continue
            limit = min(_gaps(points, drift[a], drift[b], epoch))
            if (a, b) not in limits or limit < limits[(a, b)]:
                limits[(a, b)], kinds[(a, b)] = limit, kind
    return limits, kinds


def _undrifted(t: int, rate: float, epoch: int) -> int:
    """What a clock without drift would have read. In integers: a float holds an epoch
    time in ns only to about 256 ns."""
    return t - round(rate * (t - epoch))


def _gaps(points: list[tuple[int, int]], rate_a: float, rate_b: float, epoch: int) -> list[int]:
    """t_b − t_a of each point with both times undrifted (`_undrifted`, inlined: this runs
    over every pair's floor and sample)."""
    if not rate_a and not rate_b:
        return [t_b - t_a for t_a, t_b in points]
    return [
        t_b - round(rate_b * (t_b - epoch)) - t_a + round(rate_a * (t_a - epoch))
        for t_a, t_b in points
    ]


def _epoch(found: Constraints) -> int:
    """The middle of the traffic: where offsets are stated, and rate errors cost least."""
    times = [t for pair in found.samples.values() for t, _ in pair.same + pair.answers]
    return int(statistics.median(times)) if times else 0


def _alignment(
    found: Constraints,
    solution: Solution,
    drift: list[float],
    epoch: int,
    kinds: dict[tuple[int, int], str],
) -> Alignment:
    names = found.hosts
    kind_list = list(kinds.values())
    return Alignment(
        names=list(names),
        reference=names[solution.reference],
        clocks=solution.hosts,
        rates_ppb=[round(rate * 1e9) for rate in drift],
        epoch_ns=epoch,
        bounds_same_packet=kind_list.count("same packet"),
        bounds_answer=kind_list.count("answer"),
        inconsistent=[names[h] for h in solution.inconsistent],
        truncated=found.truncated,
        interfaces=found.interfaces,
        packets_read=list(found.packets_read),
        delay_inputs=(found, solution, drift, epoch),
    )


def _delays(
    found: Constraints, solution: Solution, drift: list[float], epoch: int
) -> list[PairDelay]:
    names = found.hosts
    offsets = [clock.offset_ns for clock in solution.hosts]
    delays = []
    for (sender, receiver), pair in sorted(found.samples.items()):
        if pair.same:
            # In the reference's time: undrifted, less the offsets. The median from the
            # uniform sample; the minimum from the floor (all packets) too.
            rates, shift = (drift[sender], drift[receiver]), offsets[receiver] - offsets[sender]
            corrected = [gap - shift for gap in _gaps(pair.same, *rates, epoch)]
            fastest = min(_gaps(pair.same_floor.points(), *rates, epoch)) - shift
            delays.append(
                PairDelay(
                    names[sender],
                    names[receiver],
                    pair.same_count,
                    min(fastest, min(corrected)),
                    int(statistics.median(corrected)),
                )
            )
    return delays


def _ms(ns: float) -> str:
    return f"{ns / 1e6:+.6f} ms"


def _bound(ns: float) -> str:
    return "-inf" if ns == -float("inf") else ("+inf" if ns == float("inf") else _ms(ns))


def _json_bound(ns: float) -> int | None:
    return None if ns in (float("inf"), -float("inf")) else int(ns)
