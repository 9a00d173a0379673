"""Clocks that run fast or slow: each host's rate against the reference, from how the
bounds between two hosts move during the capture.

For hosts A and B, packets A → B bound o_B − o_A from above and packets B → A from
below, at the times they were seen; the true o_B − o_A is a line between the two
clouds (the convex-hull idea used for one-way delay traces). The capture is cut into
SEGMENTS slices of time; in each, the middle of the tightest upper and lower bound is
a point of that line, and the least-squares slope through those points is B's rate
against A. Rates go from host to host along a breadth-first tree from the reference
over the pairs that gave one. A pair without traffic both ways gives no rate: such a
host keeps its own rate (0) and its offset a constant.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from ..follow.summaries import PairSamples

SEGMENTS = 8
MIN_SEGMENTS = 3  # points a slope needs, or it is not trusted
ROUNDS = 4  # fits on the bounds with the slope so far taken out


def pair_slope(forward: PairSamples, backward: PairSamples) -> float | None:
    """d(o_B − o_A)/dt from samples A → B (`forward`) and B → A (`backward`).

    Within one slice a drifting offset moves too: its tightest upper bound is taken
    early in the slice and the tightest lower bound late, which tilts every midpoint.
    So the fit is repeated on the bounds with the slope found so far taken out; a few
    rounds leave the slices flat.
    """
    # (time on A relative to the first sample, bound): a float holds an epoch time in
    # ns only to ~256 ns, a relative one exactly.
    # The floors: every slice's tightest bounds are among their points.
    upper = [(t_a, t_b - t_a) for t_a, t_b in forward.same_floor.points()]
    lower = [(t_a, t_b - t_a) for t_b, t_a in backward.same_floor.points()]
    if not upper or not lower:
        return None
    start = min(min(t for t, _ in upper), min(t for t, _ in lower))
    upper = [(t - start, y) for t, y in upper]
    lower = [(t - start, y) for t, y in lower]
    slope = 0.0
    for _ in range(ROUNDS):
        step = _slice_fit(
            [(t, y - slope * t) for t, y in upper], [(t, y - slope * t) for t, y in lower]
        )
        if step is None:
            return None if slope == 0.0 else slope
        slope += step
    return slope


def _slice_fit(upper: list[tuple[int, float]], lower: list[tuple[int, float]]) -> float | None:
    """The least-squares slope through the middles of each slice's tightest bounds."""
    end = max(max(t for t, _ in upper), max(t for t, _ in lower))
    if end <= 0:
        return None
    width = end / SEGMENTS
    tops: list[float | None] = [None] * SEGMENTS
    bottoms: list[float | None] = [None] * SEGMENTS
    for t, bound in upper:
        k = min(int(t / width), SEGMENTS - 1)
        if tops[k] is None or bound < tops[k]:
            tops[k] = bound
    for t, bound in lower:
        k = min(int(t / width), SEGMENTS - 1)
        if bottoms[k] is None or bound > bottoms[k]:
            bottoms[k] = bound
    points = [
        ((k + 0.5) * width, (tops[k] + bottoms[k]) / 2)
        for k in range(SEGMENTS)
        if tops[k] is not None and bottoms[k] is not None
    ]
    if len(points) < MIN_SEGMENTS:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / spread


def rates(n: int, samples: Mapping[tuple[int, int], PairSamples], reference: int) -> list[float]:
    """Each host's clock rate against the reference's (dimensionless: 1e-4 is 100 ppm)."""
    slopes: dict[int, list[tuple[int, float]]] = {h: [] for h in range(n)}
    for (a, b), forward in samples.items():
        if a < b and (b, a) in samples:
            slope = pair_slope(forward, samples[(b, a)])
            if slope is not None:
                slopes[a].append((b, slope))
                slopes[b].append((a, -slope))
    result = [0.0] * n
    seen = {reference}
    queue = deque([reference])
    while queue:
        a = queue.popleft()
        for b, slope in slopes[a]:
            if b not in seen:
                seen.add(b)
                result[b] = result[a] + slope
                queue.append(b)
    return result
