"""Per-verdict accounting for captures through the owner's xdpcap hook.

The kernel counts seen, filtered out, not sampled and sampled per verdict (one counter
set per slot program); the file's share is counted here as packets are released, from
the verdict each sample's key carries. Lost is what was sampled and neither written
nor past --count, so seen = filtered out + written + lost + not sampled + after
--count closes for every verdict, as it does in total.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

from .consumer import verdict_of
from .contract import XDP_ACTIONS


class _Counts(Protocol):
    seen: int
    sampled: int
    not_sampled: int
    output_failed: int
    filtered_out: int


class VerdictTally:
    def __init__(self) -> None:
        self.written: Counter[int] = Counter()
        self.past_count: Counter[int] = Counter()

    def add_written(self, keys: Iterable[int]) -> None:
        self.written.update(map(verdict_of, keys))

    def add_past_count(self, keys: Iterable[int]) -> None:
        self.past_count.update(map(verdict_of, keys))

    def split(self, by_verdict: Mapping[int, _Counts]) -> dict[str, dict[str, int]]:
        """Each verdict's figures, by action name (XDP_DROP is "DROP")."""
        split = {}
        for action, c in by_verdict.items():
            written, past = self.written[action], self.past_count[action]
            split[XDP_ACTIONS[action]] = {
                "seen": c.seen,
                "filtered_out": c.filtered_out,
                "written": written,
                "lost": c.sampled + c.output_failed - written - past,
                "not_sampled": c.not_sampled,
                "past_count": past,
            }
        return split


def describe(verdicts: Mapping[str, Mapping[str, int]]) -> str:
    """ "DROP: seen 5, written 5; PASS: ...": the verdicts that had packets."""
    return "; ".join(
        f"{name}: seen {v['seen']}, written {v['written']}"
        for name, v in verdicts.items()
        if v["seen"]
    )
