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

The bounds come from one streaming pass over all hosts' files (follow/join.py). Per ordered
host pair and rule, a fixed-size summary of them is kept (`PairSamples`): how many, a
uniform sample (for the one-way delays' median and the epoch) and the tightest bound per
time bucket, its *floor* (for the offsets and for how they drift, drift.py). Memory
stays bounded however long the capture, and every packet counts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..follow.summaries import PairSamples

if TYPE_CHECKING:
    import threading

    from ..follow.join import OnMatch
    from ..merge.packet_ids import PacketMarks


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
    marks: PacketMarks | None = None,
    shared: threading.Event | None = None,
) -> Constraints:
    """Read every file (host i = paths[i], its prior offset priors_ns[i]) in one pass."""
    from ..follow.join import join_captures

    joined = join_captures(paths, priors_ns, on_match=on_match, marks=marks, shared=shared)
    return Constraints(list(names), joined.pairs, joined.packets, interfaces=joined.interfaces)
