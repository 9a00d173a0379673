"""Align the hosts' clocks from the traffic they captured (the merge applies the result).

`align()` reads each host's capture once (constraints.py), solves every host's offset
together (solver.py), and measures the one-way delay between each pair of hosts that
saw the same packets — leaving one and arriving at the other.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .constraints import Constraints, gather
from .solver import HostClock, Solution, solve

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
    clocks: list[HostClock]  # per host, in input order
    delays: list[PairDelay]
    bounds_same_packet: int  # ordered host pairs bounded by packets seen on both
    bounds_answer: int  # ... by answers seen after their questions
    inconsistent: list[str]  # hosts whose bounds contradict each other
    truncated: list[str]  # hosts whose capture was read only in part

    @property
    def shifts_ns(self) -> list[int]:
        return [clock.offset_ns for clock in self.clocks]

    def describe(self, index: int) -> str:
        """For a host's interface description."""
        clock = self.clocks[index]
        if clock.source == "reference":
            return "clock reference of the merge (offsets from the traffic)"
        text = f"clock offset {_ms(clock.offset_ns)} from {clock.source}"
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
                    "feasible_ns": [_json_bound(clock.lower_ns), _json_bound(clock.upper_ns)],
                    "source": clock.source,
                }
                for name, clock in zip(self.names, self.clocks)
            },
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
) -> Alignment:
    """Every host's offset from its capture's traffic; priors_ns (the SSH probe's shifts,
    or zeros) fill in where the traffic says too little."""
    priors = list(priors_ns) if priors_ns is not None else [0] * len(paths)
    found = gather(paths, names, priors)
    # The reference: the host whose prior is the median, so the merged timeline keeps
    # the fleet's consensus clock (as the probe's corrections do).
    order = sorted(range(len(paths)), key=lambda h: priors[h])
    reference = order[(len(order) - 1) // 2]
    limits = {pair: bound.limit_ns for pair, bound in found.bounds.items()}
    solution = solve(len(paths), limits, priors, reference)
    return _alignment(found, solution)


def _alignment(found: Constraints, solution: Solution) -> Alignment:
    names = found.hosts
    offsets = [clock.offset_ns for clock in solution.hosts]
    delays = []
    for (sender, receiver), sample in sorted(found.delays.items()):
        # The raw difference holds the clocks' difference; take it out.
        corrected = sorted(v - (offsets[receiver] - offsets[sender]) for v in sample.values)
        delays.append(
            PairDelay(
                names[sender],
                names[receiver],
                sample.count,
                corrected[0],
                int(statistics.median(corrected)),
            )
        )
    kinds = [bound.kind for bound in found.bounds.values()]
    return Alignment(
        names=list(names),
        reference=names[solution.reference],
        clocks=solution.hosts,
        delays=delays,
        bounds_same_packet=kinds.count("same packet"),
        bounds_answer=kinds.count("answer"),
        inconsistent=[names[h] for h in solution.inconsistent],
        truncated=found.truncated,
    )


def _ms(ns: float) -> str:
    return f"{ns / 1e6:+.6f} ms"


def _bound(ns: float) -> str:
    return "-inf" if ns == -float("inf") else ("+inf" if ns == float("inf") else _ms(ns))


def _json_bound(ns: float) -> int | None:
    return None if ns in (float("inf"), -float("inf")) else int(ns)
