"""From per-CPU perf ring records to one time-ordered stream of ready-made pcapng blocks.

The sampler hands over each CPU's records as one bytes chunk (see perf_ring.py). Here
every record is parsed with one `struct` call and turned straight into the enhanced
packet block that goes into the file, with one more: the per-packet work in Python is
what bounds the agent's rate, so it is kept to those two calls and a tuple. Ordering
across CPUs happens in bulk on (timestamp, block) pairs.
"""

from __future__ import annotations

import struct
from operator import itemgetter

from .contract import SAMPLE
from .pcapng import BT_EPB, EPB_FLAG_INBOUND, EPB_FLAGS, EPB_QUEUE, OPT_ENDOFOPT
from .perf_ring import (
    HEADER,
    PERF_RECORD_LOST,
    PERF_RECORD_SAMPLE,
    RAW_SIZE,
    SAMPLE_DATA_OFFSET,
)

# A sample record's head: perf_event_header, the raw data size, then struct xdpcap_sample.
RECORD = struct.Struct("<" + "".join(s.format.lstrip("<") for s in (HEADER, RAW_SIZE, SAMPLE)))
PACKET_OFFSET = SAMPLE_DATA_OFFSET + SAMPLE.size  # where the packet bytes start
_LOST = struct.Struct("<QQ")  # PERF_RECORD_LOST body: id, lost
_ZEROS = bytes(RECORD.size)  # lets RECORD be unpacked at a record shorter than it
_EPB_FIXED = 28 + 20 + 4  # head, flags + queue options and end of options, trailing length
_first = itemgetter(0)


def _epb_packer(cap_len: int):
    """Struct.pack for a whole EPB with cap_len packet bytes (what PcapngWriter writes)."""
    pad = -cap_len & 3
    return struct.Struct(f"<7I{cap_len}s{pad}xHHIHHIHHI").pack


class SampleConsumer:
    """Parses record chunks into (ts_mono, epb, cap_len) items and keeps the counts."""

    def __init__(self, if_id: int = 0) -> None:
        self.if_id = if_id
        self.offset_ns = 0  # REALTIME - MONOTONIC: set when the window opens
        self.items: list[tuple[int, bytes, int]] = []
        self.received = 0  # sample records seen, malformed ones included
        self.malformed = 0  # counted as lost by the capture, never written
        self.lost_reported = 0  # PERF_RECORD_LOST totals: a cross-check of the BPF counter
        self._packers: dict[int, object] = {}

    def parse(self, chunk: bytes) -> None:
        """Every record of one CPU's chunk, in order; a corrupt length ends the chunk."""
        end = len(chunk)
        buf = chunk + _ZEROS
        unpack = RECORD.unpack_from
        packers = self._packers
        append = self.items.append
        offset, if_id = self.offset_ns, self.if_id
        minimum = SAMPLE.size
        received = malformed = 0
        pos = 0
        while pos < end:
            rtype, _misc, size, raw_size, ts, _ifindex, queue, orig_len, cap_len = unpack(buf, pos)
            if size < HEADER.size or pos + size > end:
                malformed += 1  # the ring is corrupt from here: nothing after it is trusted
                break
            if rtype == PERF_RECORD_SAMPLE:
                received += 1
                if raw_size < minimum + cap_len or SAMPLE_DATA_OFFSET + raw_size > size:
                    malformed += 1
                else:
                    pack = packers.get(cap_len)
                    if pack is None:
                        pack = packers[cap_len] = _epb_packer(cap_len)
                    wall = ts + offset
                    total = _EPB_FIXED + cap_len + (-cap_len & 3)
                    start = pos + PACKET_OFFSET
                    append(
                        (
                            ts,
                            pack(
                                BT_EPB,
                                total,
                                if_id,
                                wall >> 32,
                                wall & 0xFFFFFFFF,
                                cap_len,
                                orig_len,
                                buf[start : start + cap_len],
                                EPB_FLAGS,
                                4,
                                EPB_FLAG_INBOUND,
                                EPB_QUEUE,
                                4,
                                queue,
                                OPT_ENDOFOPT,
                                0,
                                total,
                            ),
                            cap_len,
                        )
                    )
            elif rtype == PERF_RECORD_LOST:
                self.lost_reported += _LOST.unpack_from(buf, pos + HEADER.size)[1]
            pos += size
        self.received += received
        self.malformed += malformed

    def take(self) -> list[tuple[int, bytes, int]]:
        batch, self.items = self.items, []
        return batch


class TimeOrderer:
    """Releases items in timestamp order once no earlier sample can still arrive.

    Each CPU's ring is in order; across CPUs it is not. A sample stamped before the
    moment we started draining every ring, minus a margin far longer than the few
    microseconds between bpf_ktime_get_ns() and the sample reaching its ring, has been
    read by that drain, so everything older than that horizon can be written.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, bytes, int]] = []

    def add(self, batch: list[tuple[int, bytes, int]]) -> None:
        self._pending += batch

    def release(self, horizon_ns: int | None) -> list[tuple[int, bytes, int]]:
        """Items with ts < horizon (all of them for None), oldest first."""
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


def _bisect(items: list[tuple[int, bytes, int]], ts: int) -> int:
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid][0] < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo
