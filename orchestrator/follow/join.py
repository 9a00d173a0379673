"""The clock alignment's pass: one streaming k-way join by time over all hosts' captures.

Every host's packets are read once, in the order of their time less the host's prior
offset (the probe's, or zero): a k-way merge of the files, as the merge reads them.
Each packet's identities (observe.py: the packet's own, and the exchange it asks or
answers) are looked up in a table of *groups*: the sightings of one key whose times
chain within the matching window (MATCH_WINDOW_NS). A group closes when the pass is a
window past its latest sighting, since no later sighting can join it, and then gives
its bounds (constraints.py has the rules):

- a packet seen leaving a host and arriving at others, at most MAX_COPIES sightings
  (more are ambiguous): (time sent, time arrived) for each receiver, taking the copy
  nearest in time on it;
- an exchange (echo, SYN, DNS): (time asked, time answered) for each answer and each
  question seen on another host, within the window.

Each ordered host pair keeps a fixed-size summary of its bounds (`PairSamples`). The
pass holds the window's sightings (`held_high_water` says how many it held at most),
never a whole capture, and uses every packet.

Two engines give identical results: the merge's C extension (`_fastmerge.Join`, fed
packet by packet by its `Merger`) and the Python below, for machines without a compiler
(`XDPCAP_NO_FASTMERGE=1` chooses it too). Both roll the same dice for the samples.

What the pass learns per packet stays available to what builds on it (one packet's
journey across hosts, per-pair loss and delay): `join_captures(..., on_match=f)` calls
`f(match)` for every packet key's group as it closes, in closing order: a `Match` holds
the packet's id (observe.key_id: one id for the packet on every host), each sighting's
host index, direction, interface (its index in the host's file) and time on that host's
own clock, and the first HEAD_BYTES of its first sighting's frame with that interface's
link type (what journeys read addresses and ports from and run the receivers' filters
on: held per group only while matches are kept). A packet seen on
one host only is a match of one sighting (what a loss count needs); groups of a key
seen more than MAX_COPIES times are left out, and so are times past LATEST_NS (damage).

`join_captures(..., marks=PacketMarks)` also writes which packets the merge gives
epb_packetid (merge/packet_ids.py): every sighting of a packet group seen at two capture
points or more, by its ordinal in its host's file. The C join writes them as the pass
goes (its memory: the packets of the last MAX_COPIES + 1 windows, 8 bytes each); the
Python engine keeps them to the end.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..merge.blocks import Interface
from ..merge.captures import feed_input
from ..merge.identity import INBOUND, OUTBOUND, identify, key_id
from ..merge.packet_ids import PacketMarks
from ..merge.reader import CaptureReader
from .summaries import (
    FLOOR_BUCKETS,
    FLOOR_START_NS,
    MATCH_WINDOW_NS,
    MAX_COPIES,
    SAMPLES,
    Floor,
    PairSamples,
    SplitMix,
)

try:
    from ..merge import _fastmerge
except ImportError:  # the optional extension was not built: the Python engine joins
    _fastmerge = None

__all__ = ["JoinResult", "Match", "Sighting", "join_captures"]

# A match record from the C join: the packet id, the number of sightings, the head's
# link type and length; then per sighting its time, host, direction, interface and
# ordinal; then the head, padded to 8 bytes.
MATCH_HEAD = struct.Struct("<QIHH")
MATCH_SIGHTING = struct.Struct("<qIBxHQ")
HEAD_BYTES = 128  # _fastmerge.c's HEAD_BYTES
_EPB_CAP = struct.Struct("<I")
_OPTION = struct.Struct("<HH")
EPB_FLAGS = 2
QUESTION, ANSWER = 1, 2  # a sighting's role in an exchange
# Each host's reader holds a chunk or two: with 100 hosts, the merge's 1 MiB chunks were
# ~100 MiB of the join's peak; a quarter of that reads as fast (measured: 241 -> 145 MiB).
CHUNK_BYTES = 1 << 18
# Later than 2^62 ns (the year 2116) a time is damage, not a packet to match: the C join
# holds times in int64, prior added.
LATEST_NS = 1 << 62


@dataclass(frozen=True)
class Sighting:
    host: int  # the index of the host's file
    direction: int  # observe.INBOUND, OUTBOUND or UNKNOWN (epb_flags)
    ts_ns: int  # on that host's own clock
    iface: int = 0  # the interface's index in its host's file (blocks.Interface.index)
    ordinal: int = 0  # the packet's index among its host's packets, in file order


@dataclass(frozen=True)
class Match:
    """One packet as the join saw it: its identity and every sighting of it within the
    window, in the order of the pass (prior-corrected time)."""

    packet_id: int  # observe.key_id of observe.Identity.packet
    sightings: tuple[Sighting, ...]
    linktype: int = 0  # of the head
    head: bytes = b""  # the first HEAD_BYTES of the first sighting's frame


@dataclass
class JoinResult:
    pairs: dict[tuple[int, int], PairSamples]  # by (from host, to host), sorted
    packets: list[int]  # packets read per host
    held_high_water: int  # the most sightings held at once
    engine: str  # "c" or "python"
    # Each host's interfaces as its file describes them (names, if_IPv4addr, ...).
    interfaces: list[list[Interface]] = field(default_factory=list)


OnMatch = Callable[[Match], None]


def join_captures(
    paths: Sequence[str | os.PathLike[str]],
    priors_ns: Sequence[int],
    *,
    on_match: OnMatch | None = None,
    engine: str | None = None,
    marks: PacketMarks | None = None,
    shared: threading.Event | None = None,
) -> JoinResult:
    """Join every host's capture (host i = paths[i], prior offset priors_ns[i]) in one
    pass; `engine` "c" or "python" (default: C when it is built and not turned off);
    `marks` gets the packets seen at two capture points or more; `shared` is set as soon
    as the pass meets a key on a second host (C; Python: once such a group closed), and
    at the end if any group was seen at two capture points: what a merge started before
    the pass ended assumed not to happen."""
    if engine is None:
        engine = "c" if _c_available() else "python"
    run = _join_c if engine == "c" else _join_python
    interfaces: list[list[Interface]] = [[] for _ in paths]
    pairs, packets, high_water = run(
        paths, list(priors_ns), on_match, interfaces, marks, shared or threading.Event()
    )
    return JoinResult(dict(sorted(pairs.items())), packets, high_water, engine, interfaces)


def _c_available() -> bool:
    return _fastmerge is not None and os.environ.get("XDPCAP_NO_FASTMERGE", "") in ("", "0")


def _readers(
    paths: Sequence[str | os.PathLike[str]],
    priors: list[int],
    add_interface: Callable[[int, int], None],
    interfaces: list[list[Interface]],
) -> tuple[list[CaptureReader], dict[int, int]]:
    """One reader per host, its prior taken off; output interface ids across all hosts,
    and each one's index in its own file (what a Sighting names: the same in both
    engines, which meet the interfaces in different orders)."""
    next_id = iter(range(1 << 32))
    file_index: dict[int, int] = {}

    def renumberer(host: int) -> Callable[[Interface], int]:
        def renumber(iface: Interface) -> int:
            out_id = next(next_id)
            add_interface(out_id, iface.linktype, iface.index)
            file_index[out_id] = iface.index
            interfaces[host].append(iface)
            return out_id

        return renumber

    readers = [
        CaptureReader(
            path, renumber=renumberer(host), shift_ns=prior, strict=False, chunk_size=CHUNK_BYTES
        )
        for host, (path, prior) in enumerate(zip(paths, priors))
    ]
    return readers, file_index


# ------------------------------------------------------------------------- the C engine
def _join_c(
    paths: Sequence[str | os.PathLike[str]],
    priors: list[int],
    on_match: OnMatch | None,
    interfaces: list[list[Interface]],
    marks: PacketMarks | None,
    shared: threading.Event,
) -> tuple[dict[tuple[int, int], PairSamples], list[int], int]:
    join = _fastmerge.Join(
        priors,
        keep_matches=on_match is not None,
        window_ns=MATCH_WINDOW_NS,
        max_copies=MAX_COPIES,
        samples=SAMPLES,
        floor_buckets=FLOOR_BUCKETS,
        floor_start_ns=FLOOR_START_NS,
        marks=marks.paths if marks is not None else None,
    )
    # Journeys that can run in C (follow/journeys.py: `setup_c`) get aggregates at the
    # end, not one call per packet group.
    in_c = on_match is not None and hasattr(on_match, "setup_c")
    if in_c:
        on_match.setup_c(join)
    readers, file_index = _readers(paths, priors, join.add_interface, interfaces)
    core = _fastmerge.Merger(len(readers), join=join)
    statistics: list[bytes] = []  # what feed_input finds on the way: not the join's business
    with contextlib.ExitStack() as files:
        for index, reader in enumerate(readers):
            if reader.begin(files.enter_context(open(reader.path, "rb"))):
                core.set_input(index, reader.buf, reader.pos, reader.fast_table())
            else:
                core.set_input(index, None, 0, None)
        while True:
            _, _, status, who = core.run()
            if not shared.is_set() and join.stats()["shared_seen"]:
                shared.set()  # a key met on two hosts: the early merge is off
            if on_match is not None and not in_c:
                _deliver(join.matches(), on_match, file_index)
            if status == _fastmerge.NEED:
                feed_input(core, who, readers[who], statistics)
                statistics.clear()
            elif status == _fastmerge.DONE:
                break
    join.finish()
    if in_c:
        on_match.load_c(join.journeys_state())
    elif on_match is not None:
        _deliver(join.matches(), on_match, file_index)
    pairs: dict[tuple[int, int], PairSamples] = {}
    for sender, receiver, kind, count, samples, floor in join.pairs():
        pair = pairs.setdefault((sender, receiver), PairSamples())
        if kind == 0:
            pair.same, pair.same_count, pair.same_floor = samples, count, Floor.of(floor)
        else:
            pair.answers, pair.answer_count, pair.answer_floor = samples, count, Floor.of(floor)
    packets = [core.state(index)[2] for index in range(len(readers))]
    stats = join.stats()
    if stats["shared_groups"]:
        shared.set()
    if marks is not None:
        marks.packets = stats["marked_packets"]
        marks.late = stats["late_marks"]
        marks.held_high_water = stats["marks_high_water"]
    return pairs, packets, stats["held_high_water"]


def _deliver(records: bytes, on_match: OnMatch, file_index: dict[int, int]) -> None:
    at = 0
    while at < len(records):
        packet_id, count, linktype, head_len = MATCH_HEAD.unpack_from(records, at)
        at += MATCH_HEAD.size
        sightings = []
        for _ in range(count):
            ts, host, direction, iface, ordinal = MATCH_SIGHTING.unpack_from(records, at)
            sightings.append(Sighting(host, direction, ts, file_index.get(iface, iface), ordinal))
            at += MATCH_SIGHTING.size
        head = records[at : at + head_len]
        at += head_len + 7 & ~7
        on_match(Match(packet_id, tuple(sightings), linktype, head))


# -------------------------------------------------------------------- the Python engine
Seen = tuple[int, int, int, int, int, int]  # a held sighting, as _Group.held says


class _Group:
    """The sightings of one key within the window: (aligned time, host, direction, role)."""

    __slots__ = (
        "answers",
        "copies",
        "head",
        "held",
        "key",
        "last_seq",
        "linktype",
        "questions",
        "same_packet",
    )

    def __init__(self, key: int, same_packet: bool) -> None:
        self.key = key  # its id
        self.same_packet = same_packet
        self.copies = self.questions = self.answers = 0
        # (aligned time, host, direction, role, interface, ordinal)
        self.held: list[Seen] = []
        self.last_seq = 0
        self.linktype = 0
        self.head = b""

    def ambiguous(self) -> bool:
        if self.same_packet:
            return self.copies > MAX_COPIES
        return self.questions > MAX_COPIES or self.answers > MAX_COPIES


class _PythonJoin:
    """What `_fastmerge.Join` does, step for step (the same order, the same dice)."""

    def __init__(
        self, priors: list[int], on_match: OnMatch | None, marks: PacketMarks | None = None
    ) -> None:
        self.priors = priors
        self.on_match = on_match
        # Per host, (ordinal, id) of its sightings seen at two capture points or more.
        self.marks: list[list[tuple[int, int]]] | None = (
            [[] for _ in priors] if marks is not None else None
        )
        self.marked_packets = 0
        self.linktypes: dict[int, int] = {}
        self.file_index: dict[int, int] = {}  # by output interface id
        self.groups: dict[tuple[bool, int], _Group] = {}
        self.window: deque[tuple[int, int, _Group]] = deque()  # (aligned, seq, group)
        self.seq = 0
        self.now: int | None = None
        self.rng = SplitMix()
        self.pairs: dict[tuple[int, int], PairSamples] = {}
        self.held_high_water = 0

    def add_interface(self, out_id: int, linktype: int, file_index: int = -1) -> None:
        self.linktypes[out_id] = linktype

    def take(self, host: int, aligned: int, block: memoryview, ordinal: int = 0) -> None:
        if aligned > LATEST_NS:
            return
        if self.now is None or aligned > self.now:
            self.now = aligned
        self.expire(self.now - MATCH_WINDOW_NS)
        out_id = _EPB_CAP.unpack_from(block, 8)[0]
        linktype = self.linktypes.get(out_id)
        if linktype is None:
            return
        cap = _EPB_CAP.unpack_from(block, 20)[0]
        frame = bytes(block[28 : 28 + cap])
        identity = identify(linktype, frame)
        if identity is None:
            return
        iface = self.file_index.get(out_id, 0)
        seen = (aligned, host, _direction(block, cap), 0, iface, ordinal)
        group = self.add(key_id(identity.packet), True, seen)
        if group.copies == 1 and self.on_match is not None:
            group.linktype, group.head = linktype, frame[:HEAD_BYTES]
        if identity.question is not None:
            self.add(key_id(identity.question), False, (*seen[:3], QUESTION, *seen[4:]))
        elif identity.answer is not None:
            self.add(key_id(identity.answer), False, (*seen[:3], ANSWER, *seen[4:]))

    def add(self, key: int, same_packet: bool, seen: Seen) -> _Group:
        group = self.groups.get((same_packet, key))
        if group is None:
            group = self.groups[(same_packet, key)] = _Group(key, same_packet)
        group.copies += 1
        group.questions += seen[3] == QUESTION
        group.answers += seen[3] == ANSWER
        if not group.ambiguous():
            group.held.append(seen)
        self.seq += 1
        group.last_seq = self.seq
        self.window.append((seen[0], self.seq, group))
        self.held_high_water = max(self.held_high_water, len(self.window))
        return group

    def expire(self, before: int | None) -> None:
        """Close every group whose latest sighting is older than `before` (None: all)."""
        window = self.window
        while window and (before is None or window[0][0] < before):
            _, seq, group = window.popleft()
            if group.last_seq == seq:
                self.close(group)

    def close(self, group: _Group) -> None:
        del self.groups[(group.same_packet, group.key)]
        if group.same_packet:
            if 2 <= group.copies <= MAX_COPIES:
                self._same_packet(group.held)
                if self.marks is not None and len({(s[1], s[4]) for s in group.held}) > 1:
                    self.marked_packets += 1
                    for s in group.held:
                        self.marks[s[1]].append((s[5], group.key))
            if self.on_match is not None and group.copies <= MAX_COPIES:
                self.on_match(self._match(group))
        elif group.questions and group.answers and not group.ambiguous():
            self._answers(group.held)

    def _match(self, group: _Group) -> Match:
        return Match(
            group.key,
            tuple(
                Sighting(h, d, aligned + self.priors[h], iface, ordinal)
                for aligned, h, d, _, iface, ordinal in group.held
            ),
            group.linktype,
            group.head,
        )

    def _bound(self, sender: int, receiver: int, same: bool, t_from: int, t_to: int) -> None:
        pair = self.pairs.get((sender, receiver))
        if pair is None:
            pair = self.pairs[(sender, receiver)] = PairSamples()
        pair.add(t_from, t_to, same, self.rng)

    def _same_packet(self, held: list[Seen]) -> None:
        priors = self.priors
        for aligned_sent, sender, direction, *_ in held:
            if direction != OUTBOUND:
                continue
            arrivals = [
                s
                for s in held
                if s[2] == INBOUND
                and s[1] != sender
                and abs(s[0] - aligned_sent) <= MATCH_WINDOW_NS
            ]
            for receiver in sorted({s[1] for s in arrivals}):
                # The nearest copy on that host is this packet's arrival.
                arrived = min(
                    (s for s in arrivals if s[1] == receiver),
                    key=lambda s: abs(s[0] - aligned_sent),
                )
                self._bound(
                    sender,
                    receiver,
                    True,
                    aligned_sent + priors[sender],
                    arrived[0] + priors[receiver],
                )

    def _answers(self, held: list[Seen]) -> None:
        priors = self.priors
        for aligned_answer, answer_host, _, role, *_ in held:
            if role != ANSWER:
                continue
            for aligned_question, question_host, _, other, *_ in held:
                if other != QUESTION or question_host == answer_host:
                    continue
                if abs(aligned_answer - aligned_question) <= MATCH_WINDOW_NS:
                    self._bound(
                        question_host,
                        answer_host,
                        False,
                        aligned_question + priors[question_host],
                        aligned_answer + priors[answer_host],
                    )


def _direction(block: memoryview, cap: int) -> int:
    """epb_flags' direction bits, read as the C join reads them (0 when absent)."""
    at = 28 + (cap + 3 & ~3)
    end = len(block) - 4
    direction = 0
    while at + 4 <= end:
        code, length = _OPTION.unpack_from(block, at)
        if code == 0 or at + 4 + length > end:
            break
        if code == EPB_FLAGS and length == 4:
            direction = block[at + 4] & 3
        at += 4 + (length + 3 & ~3)
    return direction


def _join_python(
    paths: Sequence[str | os.PathLike[str]],
    priors: list[int],
    on_match: OnMatch | None,
    interfaces: list[list[Interface]],
    marks: PacketMarks | None,
    shared: threading.Event,
) -> tuple[dict[tuple[int, int], PairSamples], list[int], int]:
    join = _PythonJoin(priors, on_match, marks)
    readers, join.file_index = _readers(paths, priors, join.add_interface, interfaces)
    packets = [0] * len(readers)

    def stream(host: int, reader: CaptureReader) -> Iterator[tuple[int, int, memoryview, int]]:
        for batch in reader.batches():
            first = packets[host]
            packets[host] += len(batch.ts)
            for ordinal, (ts, block) in enumerate(zip(batch.ts, batch.blocks), first):
                yield ts, host, block, ordinal

    # Ties go to the host listed first, as in the C engine's heap.
    streams = [stream(host, reader) for host, reader in enumerate(readers)]
    for taken, (ts, host, block, ordinal) in enumerate(
        heapq.merge(*streams, key=lambda item: item[0])
    ):
        join.take(host, ts, block, ordinal)
        if not taken % 4096 and (join.pairs or join.marked_packets):
            shared.set()
    join.expire(None)
    if join.pairs or join.marked_packets:
        shared.set()
    if marks is not None and join.marks is not None:
        for host, host_marks in enumerate(join.marks):
            marks.write(host, sorted(host_marks))
        marks.packets = join.marked_packets
    return join.pairs, packets, join.held_high_water
