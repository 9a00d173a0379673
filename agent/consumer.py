"""From per-CPU perf buffers to one time-ordered stream of samples.

The perf callback runs inside bcc's poll through ctypes, where an exception would be
printed and forgotten: it only copies the bytes and appends them, and records any error
for the capture loop to raise. Parsing and ordering happen in bulk, outside it.
"""

from __future__ import annotations

import ctypes
from operator import itemgetter

from .contract import SAMPLE

_string_at = ctypes.string_at
_first = itemgetter(0)
_unpack_ts = __import__("struct").Struct("<Q").unpack_from


class SampleConsumer:
    """Collects raw samples from every CPU; counts what the kernel says it lost."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.lost_reported = 0  # PERF_RECORD_LOST totals: a cross-check of the BPF counter
        self.error: BaseException | None = None
        self.received = 0

    def on_sample(self, cpu: int, data: int, size: int) -> None:
        try:
            self.raw.append(_string_at(data, size))
        except BaseException as exc:
            self.error = exc

    def on_lost(self, lost: int) -> None:
        try:
            self.lost_reported += lost
        except BaseException as exc:
            self.error = exc

    def take(self) -> list[bytes]:
        batch, self.raw = self.raw, []
        self.received += len(batch)
        return batch


class TimeOrderer:
    """Releases samples in timestamp order once no earlier sample can still arrive.

    Each CPU's buffer is in order; across CPUs it is not. A sample stamped before the
    moment we started draining every buffer, minus a margin far longer than the few
    microseconds between bpf_ktime_get_ns() and the sample reaching its buffer, has
    been read by that drain, so everything older than that horizon can be written.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, bytes]] = []
        self.malformed = 0

    def add(self, batch: list[bytes]) -> None:
        pending = self._pending
        minimum = SAMPLE.size
        for raw in batch:
            if len(raw) < minimum:
                self.malformed += 1  # counted as lost by the caller, never trusted
                continue
            pending.append((_unpack_ts(raw)[0], raw))

    def release(self, horizon_ns: int | None) -> list[tuple[int, bytes]]:
        """Samples with ts < horizon (all of them for None), oldest first."""
        pending = self._pending
        if not pending:
            return []
        pending.sort(key=_first)  # runs from each CPU are already sorted: Timsort merges them
        if horizon_ns is None or pending[-1][0] < horizon_ns:
            self._pending = []
            return pending
        cut = _bisect(pending, horizon_ns)
        ready, self._pending = pending[:cut], pending[cut:]
        return ready

    def __len__(self) -> int:
        return len(self._pending)


def _bisect(items: list[tuple[int, bytes]], ts: int) -> int:
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid][0] < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo
