"""From per-CPU perf ring records to one time-ordered stream of ready-made pcapng blocks.

The sampler hands over each CPU's records as one bytes chunk (see perf_ring.py). The
BPF program has already written each sample's EPB head (wall-clock timestamp, lengths,
block length) in front of the packet bytes, so a record becomes its file block with one
`struct` call, one slice and one concatenation with a cached trailer (padding, options,
trailing length): the per-packet work in Python is what bounds the agent's rate.
Ordering across CPUs happens in bulk on (timestamp, block) pairs.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from operator import itemgetter

from .contract import EPB_HEAD, EPB_HEAD_OFFSET, INBOUND, OUTBOUND, SAMPLE
from .pcapng import EPB_FLAG_INBOUND, EPB_FLAG_OUTBOUND, epb_tail
from .perf_ring import HEADER, PERF_RECORD_LOST, PERF_RECORD_SAMPLE, SAMPLE_DATA_OFFSET

# What the loop reads of a record: perf_event_header's type and size, the raw data size,
# then struct xdpcap_sample's ts_ns and (cap_len, queue, direction, verdict) as one u64:
# the key of the sample's trailer, cap_len | queue << 32 | direction << 48 | verdict << 56;
# then the socket cookie (the process key; 0: none).
RECORD = struct.Struct("<I2xHIQQQ")
_BLOCK_LEN = struct.Struct("<I")
# Trailers with comments cached per (key, cookie), at most this many (then cleared).
_ANNOTATED_CACHED = 65536
EPB_OFFSET = SAMPLE_DATA_OFFSET + EPB_HEAD_OFFSET  # where the EPB starts in a record
_LOST = struct.Struct("<QQ")  # PERF_RECORD_LOST body: id, lost
PADDING = bytes(RECORD.size)  # lets RECORD be unpacked at a record shorter than it
_first = itemgetter(0)


_EPB_DIRECTION = {INBOUND: EPB_FLAG_INBOUND, OUTBOUND: EPB_FLAG_OUTBOUND}


def cap_len_of(key: int) -> int:
    return key & 0xFFFFFFFF


def direction_of(key: int) -> int:
    """INBOUND (0) or OUTBOUND (1): so a sum of direction_of over keys counts outbound."""
    return (key >> 48) & 0xFF


def verdict_of(key: int) -> int | None:
    """The owner's XDP action (seen through its hook), or None when not known."""
    verdict = key >> 56
    return verdict - 1 if verdict else None


def epb_trailer(key: int) -> bytes:
    """What follows a packet's bytes in its EPB (padding, epb_flags with the direction,
    epb_queue, epb_verdict when known, the block length), for the key (see RECORD)."""
    flags = _EPB_DIRECTION.get(direction_of(key), 0)  # 0: direction unknown
    return epb_tail(cap_len_of(key), flags, (key >> 32) & 0xFFFF, verdict_of(key))


class SampleConsumer:
    """Parses record chunks into (ts_mono, epb, key) items and keeps the counts; the
    key (see RECORD) gives the sample's captured length and direction."""

    def __init__(self, annotate: Callable[[int], bytes] | None = None) -> None:
        """`annotate`: a socket cookie's EPB comment options (process attribution), or
        None when samples carry no cookie worth looking up."""
        self.items: list[tuple[int, bytes, int]] = []
        self._annotate = annotate
        # (key, cookie) -> (block length, trailer with the comments): see _annotated.
        self._annotations: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self.received = 0  # sample records seen, malformed ones included
        self.malformed = 0  # counted as lost by the capture, never written
        self.lost_reported = 0  # PERF_RECORD_LOST totals: a cross-check of the BPF counter
        # One trailer per (cap_len, queue, direction, verdict) seen: a few hundred at most.
        self._trailers: dict[int, bytes] = {}

    def parse(self, buf: bytes, pos: int, end: int, budget: int) -> int:
        """Records of one CPU's chunk from `pos`, until `end` or about `budget` bytes;
        returns where it stopped (`end` when done: a corrupt length ends the chunk).

        `buf` is the chunk followed by padding (see Backlog.add), so the record head
        can be unpacked even at a record shorter than it.
        """
        stop = min(end, pos + budget)
        unpack = RECORD.unpack_from
        trailers = self._trailers
        append = self.items.append
        annotate = self._annotate
        minimum = SAMPLE.size
        head = EPB_HEAD.size
        received = malformed = 0
        while pos < stop:
            rtype, size, raw_size, ts, key, cookie = unpack(buf, pos)
            if size < HEADER.size or pos + size > end:
                malformed += 1  # the ring is corrupt from here: nothing after it is trusted
                pos = end
                break
            if rtype == PERF_RECORD_SAMPLE:
                received += 1
                cap_len = key & 0xFFFFFFFF  # cap_len_of, inlined: this loop is the hot path
                if raw_size < minimum + cap_len or SAMPLE_DATA_OFFSET + raw_size > size:
                    malformed += 1
                else:
                    trailer = trailers.get(key)
                    if trailer is None:
                        trailer = trailers[key] = epb_trailer(key)
                    start = pos + EPB_OFFSET
                    if cookie and annotate is not None:
                        length, trailer = self._annotated(key, cookie, trailer)
                        stop_at = start + head + cap_len
                        block = buf[start : start + 4] + length + buf[start + 8 : stop_at]
                        append((ts, block + trailer, key))
                    else:
                        append((ts, buf[start : start + head + cap_len] + trailer, key))
            elif rtype == PERF_RECORD_LOST:
                self.lost_reported += _LOST.unpack_from(buf, pos + HEADER.size)[1]
            pos += size
        self.received += received
        self.malformed += malformed
        return pos

    def _annotated(self, key: int, cookie: int, trailer: bytes) -> tuple[bytes, bytes]:
        """The block length and trailer of a sample whose socket is `cookie`: the
        process's comments go in front of the other options (the program counted none
        of them in the head's block length, so that is rewritten too)."""
        cached = self._annotations.get((key, cookie))
        if cached is None:
            assert self._annotate is not None
            comments = self._annotate(cookie)
            if not comments:  # not known (yet): asked again for the next packet
                return trailer[-4:], trailer
            padding = -cap_len_of(key) % 4
            total = _BLOCK_LEN.unpack_from(trailer, len(trailer) - 4)[0] + len(comments)
            length = _BLOCK_LEN.pack(total)
            cached = (
                length,
                trailer[:padding] + comments + trailer[padding:-4] + length,
            )
            if len(self._annotations) >= _ANNOTATED_CACHED:
                self._annotations.clear()
            self._annotations[(key, cookie)] = cached
        return cached

    def parse_chunk(self, chunk: bytes) -> None:
        """A whole chunk at once (tests and tools; the capture goes through Backlog)."""
        self.parse(chunk + PADDING, 0, len(chunk), len(chunk))

    def take(self) -> list[tuple[int, bytes, int]]:
        batch, self.items = self.items, []
        return batch


class Backlog:
    """Drained ring chunks waiting to be formatted, oldest drain first, read in pieces.

    Draining is a copy per CPU and costs next to nothing; formatting costs Python work
    per packet. Keeping the two apart lets the capture empty the kernel's rings every
    few milliseconds even while formatting is behind (a burst, a busy CPU): the records
    wait here, in memory the capture bounds, instead of overflowing the rings. Chunks are
    formatted a piece at a time, so the time between two drains stays bounded however
    large a chunk grew while formatting was behind.
    """

    def __init__(self) -> None:
        # Per drain: [drained_at_ns, padded chunks, index of the chunk, position in it].
        self._drains: deque[list] = deque()
        self.size = 0  # bytes not yet formatted
        self.peak = 0

    def add(self, drained_at_ns: int, chunks: list[bytes]) -> None:
        """One drain's chunks (one per CPU that had any), stamped with the drain's time.

        A drain that found nothing is kept too: its time alone lets samples of earlier
        drains be released (a --count reached by the last packet of a burst stops the
        capture without waiting for another packet).
        """
        # Padded once here, not at every piece: see SampleConsumer.parse.
        self._drains.append([drained_at_ns, [chunk + PADDING for chunk in chunks], 0, 0])
        self.size += sum(len(chunk) for chunk in chunks)
        self.peak = max(self.peak, self.size)

    def format_piece(self, consumer: SampleConsumer, budget: int) -> int | None:
        """Parses about `budget` bytes of the oldest drain; returns that drain's time
        once all of it is parsed (its samples may then be released), else None."""
        drain = self._drains[0]
        drained_at, chunks, index, pos = drain
        if chunks:
            chunk = chunks[index]
            end = len(chunk) - len(PADDING)
            stop = consumer.parse(chunk, pos, end, budget)
            self.size -= stop - pos
            if stop < end:
                drain[3] = stop
                return None
            if index + 1 < len(chunks):
                drain[2], drain[3] = index + 1, 0
                return None
        self._drains.popleft()
        return drained_at

    def __bool__(self) -> bool:
        return bool(self._drains)


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
        cut = bisect_time(pending, horizon_ns)
        ready, self._pending = pending[:cut], pending[cut:]
        return ready

    def __len__(self) -> int:
        return len(self._pending)


def bisect_time(items: list[tuple[int, bytes, int]], ts: int) -> int:
    """How many of `items` (sorted by their first field, a time) come before `ts`
    (bisect_left; its key= needs Python 3.10, and agents run on 3.9 too)."""
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid][0] < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo
