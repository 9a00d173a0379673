"""Offsets for all hosts at once from bounds o_j − o_i ≤ c: a system of difference
constraints, solved by shortest paths.

Every host's offset is taken relative to one reference host (o_ref = 0). The shortest
path lengths D (Floyd–Warshall; a few hundred hosts at most) give each host's feasible
interval [−D[h][ref], D[ref][h]]; a negative cycle means the bounds contradict each
other (a NAT or a proxy answering for another host, a file from another capture) and is
reported, never ignored: the probe's offsets are used instead.

Hosts are then fixed one at a time, tightest interval first, each at the middle of what
is still feasible for it (the NTP assumption: equal minimum delays both ways), and the
fixed value is fed back so later hosts stay consistent with it. Where traffic bounds a
host on one side only, the prior (the SSH probe's estimate) is used, moved into the
feasible interval; with no bound at all, the prior alone.

Constant offsets: a clock drifting during the capture is not modelled yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

INF = math.inf


@dataclass(frozen=True)
class HostClock:
    offset_ns: int  # this host's clock − the reference's: what the merge subtracts
    lower_ns: float  # the feasible interval the traffic allows (±inf: unbounded)
    upper_ns: float
    source: str  # "traffic", "traffic and probe", "probe", "reference"


@dataclass(frozen=True)
class Solution:
    reference: int
    hosts: list[HostClock]
    inconsistent: list[int]  # hosts on a contradictory cycle (empty: consistent)


def shortest_paths(n: int, bounds: Mapping[tuple[int, int], int]) -> list[list[float]]:
    dist = [[0.0 if i == j else INF for j in range(n)] for i in range(n)]
    for (i, j), limit in bounds.items():
        if i != j and limit < dist[i][j]:
            dist[i][j] = limit
    for k in range(n):
        dk = dist[k]
        for i in range(n):
            dik = dist[i][k]
            if dik == INF:
                continue
            di = dist[i]
            for j in range(n):
                via = dik + dk[j]
                if via < di[j]:
                    di[j] = via
    return dist


def solve(
    n: int,
    bounds: Mapping[tuple[int, int], int],
    priors_ns: Sequence[int],
    reference: int,
) -> Solution:
    """Offsets relative to host `reference`; priors_ns are the probe's, on any common base."""
    dist = shortest_paths(n, bounds)
    cycle = [i for i in range(n) if dist[i][i] < 0]
    if cycle:
        hosts = [
            HostClock(priors_ns[h] - priors_ns[reference], -INF, INF, "probe") for h in range(n)
        ]
        return Solution(reference, hosts, cycle)
    intervals = [(-dist[h][reference], dist[reference][h]) for h in range(n)]
    result: list[HostClock | None] = [None] * n
    result[reference] = HostClock(0, 0, 0, "reference")

    def tightness(h: int) -> float:
        lower, upper = intervals[h]
        return upper - lower  # inf for one-sided and unbounded hosts: they go last

    for h in sorted((h for h in range(n) if h != reference), key=tightness):
        lower, upper = -dist[h][reference], dist[reference][h]
        prior = priors_ns[h] - priors_ns[reference]
        if lower > -INF and upper < INF:
            value, source = int((lower + upper) // 2), "traffic"
        elif lower > -INF or upper < INF:
            value, source = int(min(max(prior, lower), upper)), "traffic and probe"
        else:
            value, source = prior, "probe"
        result[h] = HostClock(value, intervals[h][0], intervals[h][1], source)
        _fix(dist, reference, h, value)
    return Solution(reference, [r for r in result if r is not None], [])


def _fix(dist: list[list[float]], ref: int, h: int, value: int) -> None:
    """Add o_h − o_ref = value (two edges) and keep the path lengths shortest."""
    d_ref, d_h = list(dist[ref]), list(dist[h])
    for di in dist:
        # (One row at a time, the inner loop in C: this is O(n^2) per host.)
        via_ref, via_h = di[ref] + value, di[h] - value
        di[:] = map(min, di, [via_ref + d for d in d_h], [via_h + d for d in d_ref])
