"""`xdpcap merge`: a streaming k-way merge of per-host captures into one pcapng.

How it stays fast and flat in memory:
- Each input is read in 1 MiB chunks by `CaptureReader`, which hands back normalised
  blocks (little-endian EPBs, nanosecond timestamps, output interface ids, clock
  correction applied) as memoryviews into the chunk: packet bytes are copied exactly once,
  into the output buffer.
- The merge works in batches, not packet by packet. Every input promises that its future
  packets are no earlier than its *safe* timestamp (the smallest timestamp of the last
  chunk read, or of a wider window once it was caught out of order). The horizon is the
  smallest promise of all inputs still open; everything buffered before the horizon is
  final. It is ordered with one stable `sorted()` over the inputs' runs (Timsort merges
  pre-sorted runs in about n·log(k) C-level comparisons) and written with one join.
  Then the inputs that hold the horizon back read their next chunk.
- Ties go to the input listed first, then file order: the order mergecap writes.

Statistics blocks (ISBs) are written after the packets, where capture tools put them.

Given `packet_marks` (packet_ids.py: per input, which of its packets the alignment's
pass saw at two or more capture points, and their ids), each such packet gets
epb_packetid: both paths read an input's marks front to back as they read the input.

The packet loop has a C version, `_fastmerge` (built from orchestrator/_fastmerge.c when
a compiler is there; `XDPCAP_NO_FASTMERGE=1` turns it off). It merges packet by packet
with a heap, straight from the readers' chunks, and writes what the path above writes
for inputs in time order: ties go the same way, and every block the C loop does not
take (section headers, interface descriptions, statistics, big-endian sections, classic
pcap, unusual resolutions, damage) is read by the same Python reader code. An input
caught out of time order is the one thing it does not do: the merge then starts again
on the Python path, which sorts within a window (at most the packets merged so far are
read twice; the C loop is several times faster than the Python one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import tempfile
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ...agent import __version__
from ...agent.pcapng import (
    IF_DESCRIPTION,
    IF_HARDWARE,
    IF_NAME,
    IF_OS,
    IF_TSOFFSET,
    IF_TSRESOL,
    TSRESOL_NS,
    PcapngWriter,
)
from ..errors import MergeError
from .blocks import Batch, Damage, Interface
from .packet_ids import MarkCursor, PacketMarks
from .reader import CHUNK_BYTES, CaptureReader

try:
    from . import _fastmerge
except ImportError:  # the optional extension was not built: the Python path does it all
    _fastmerge = None

# Once an input is caught out of time order, its packets are sorted within a window of at
# least this many packets (xdpdump's per-CPU buffers disorder a few thousand at most).
# Before that, the window is the last chunk read (several thousand packets as well).
REORDER_PACKETS = 100_000
MANY_INPUTS = 16  # past this many inputs, smaller reader chunks (_chunk_bytes)
_U32 = struct.Struct("<I")
# Output interface options the merge rewrites itself; every other option is kept.
_REWRITTEN_OPTIONS = (IF_NAME, IF_DESCRIPTION, IF_TSRESOL, IF_TSOFFSET, IF_OS, IF_HARDWARE)


@dataclass(frozen=True)
class MergeSource:
    """One input file and what the run knows about where it came from.

    `clock_offset_ns` is the host clock minus the controller clock; `clock_error_ns` the
    uncertainty of that estimate.
    """

    path: str | os.PathLike[str]
    host: str | None = None
    address: str | None = None
    name: str | None = None
    clock_offset_ns: int = 0
    clock_error_ns: int | None = None
    sync_state: str | None = None
    # How the offset was found, when the traffic found it (clocksync.Alignment.describe).
    clock_note: str | None = None
    # A clock that ran fast (> 0) or slow: the offset grows by this many ns per second
    # from clock_epoch_ns on, where it is clock_offset_ns.
    clock_drift_ppb: int = 0
    clock_epoch_ns: int = 0


@dataclass
class SourceReport:
    path: str
    usable: bool = False
    packets: int = 0
    interfaces: list[int] = field(default_factory=list)  # output interface ids
    statistics: int = 0
    damage: Damage | None = None
    out_of_order: bool = False
    late_packets: int = 0  # out of order by more than the window: written out of order


@dataclass
class MergeReport:
    out_path: str
    sources: list[SourceReport]
    warnings: list[str]
    packets: int
    interfaces: list[str]  # output if_name by interface id
    engine: str = "python"  # "c" when the packets went through `_fastmerge`
    # The clocks as the traffic aligned them (clock.align.Alignment), set by whoever
    # aligned them: the merge itself knows only each input's shift and drift.
    alignment: Any = None
    journeys: dict | None = None  # run.json's `journeys` (journeys.Journeys.result)
    # Written while the clock alignment's pass read the inputs, which found no shared
    # traffic (run/follow.py: follow_and_merge).
    during_pass: bool = False
    aside: Any = None  # what run/follow.py's `meanwhile` gave back, computed beside it

    @property
    def damaged(self) -> list[SourceReport]:
        return [source for source in self.sources if source.damage is not None]


class _Input:
    """One input's reader, its pending (sorted) packets and its promise about the future."""

    def __init__(
        self, index: int, source: MergeSource, reader: CaptureReader, marks: str | None = None
    ) -> None:
        self.index = index
        self.source = source
        self.reader = reader
        self.marks_path = marks  # its packet marks file (packet_ids.py), if any
        self._marks: MarkCursor | None = None  # opened by the Python path's first read
        self.report = SourceReport(os.fspath(source.path))
        self._batches: Iterator[Batch] = reader.batches()
        self.ts: list[int] = []
        self.blocks: list = []
        self.statistics: list[bytes] = []
        self.eof = False
        # Timestamps below `safe` will not come any more (a promise, checked on read).
        self.safe = -1
        self.emitted = -1  # the horizon up to which its packets are written
        self.read_max = -1
        self._window: deque[tuple[int, int]] = deque()  # (packets, min ts) per chunk
        self._window_packets = 0
        self._reorder_packets = 0

    def pull(self) -> None:
        """Read one more chunk; keep `ts` sorted and `safe` honest."""
        batch = next(self._batches, None)
        if batch is None:
            self.eof = True
            return
        self.statistics.extend(block for _, block in batch.statistics)
        ts = batch.ts
        if not ts:
            return
        if self.marks_path:  # in file order, before any sorting
            if self._marks is None:
                self._marks = MarkCursor(self.marks_path)
            self._marks.stamp(batch.blocks)
        ordered = sorted(ts)
        if ordered != ts or ordered[0] < self.read_max:
            self._reorder(batch, ordered)
        else:
            self.ts += ts
            self.blocks += batch.blocks
        self.read_max = max(self.read_max, ordered[-1])
        self._remember(len(ts), ordered[0])

    def _reorder(self, batch: Batch, ordered: list[int]) -> None:
        if not self.report.out_of_order:
            self.report.out_of_order = True
            self._reorder_packets = REORDER_PACKETS
        self.report.late_packets += bisect_left(ordered, self.emitted)
        ts = self.ts + batch.ts
        blocks = self.blocks + batch.blocks
        order = sorted(range(len(ts)), key=ts.__getitem__)
        self.ts = [ts[i] for i in order]
        self.blocks = [blocks[i] for i in order]

    def _remember(self, packets: int, earliest: int) -> None:
        window = self._window
        window.append((packets, earliest))
        self._window_packets += packets
        while self._window_packets - window[0][0] >= self._reorder_packets and len(window) > 1:
            self._window_packets -= window.popleft()[0]
        self.safe = min(earliest for _, earliest in window)


class _Merger:
    engine = "python"

    def __init__(
        self,
        sources: Sequence[MergeSource],
        writer: PcapngWriter,
        clock_correction: bool,
        packet_marks: PacketMarks | None = None,
    ) -> None:
        self.writer = writer
        self.core = None  # the C loop, when it runs
        self.cancel: threading.Event | None = None  # set: stop, the output is not wanted
        self.interface_names: list[str] = []
        self.inputs: list[_Input] = []
        for index, source in enumerate(sources):
            shift = source.clock_offset_ns if clock_correction else 0
            reader = CaptureReader(
                source.path,
                renumber=self._interface_writer(source),
                shift_ns=shift,
                drift_ppb=source.clock_drift_ppb if clock_correction else 0,
                drift_epoch_ns=source.clock_epoch_ns,
                strict=False,
                chunk_size=_chunk_bytes(len(sources)),
            )
            marks = packet_marks.path_for(source.path) if packet_marks else None
            self.inputs.append(_Input(index, source, reader, marks))

    def _interface_writer(self, source: MergeSource):
        def renumber(iface: Interface) -> int:
            name = interface_name(source, iface)
            out_id = self.writer.add_interface(
                name,
                linktype=iface.linktype,
                snaplen=iface.snaplen,
                description=interface_description(source, iface),
                hardware=iface.hardware,
                os_name=iface.os_name,
                tsresol=TSRESOL_NS,
                extra_options=[o for o in iface.options if o[0] not in _REWRITTEN_OPTIONS],
            )
            self.interface_names.append(name)
            return out_id

        return renumber

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise MergeCancelled

    def run(self) -> None:
        inputs = self.inputs
        for inp in inputs:
            inp.pull()
        while True:
            self._check_cancel()
            live = [inp for inp in inputs if not inp.eof]
            horizon = min(inp.safe for inp in live) if live else None
            self._emit(horizon)
            if not live:
                break
            for inp in live:
                if inp.safe == horizon:
                    inp.pull()
        for inp in inputs:
            if inp.statistics:
                self.writer.write_blocks(inp.statistics, 0)

    def _emit(self, horizon: int | None) -> None:
        """Write every pending packet before `horizon` (all of them when None), in order."""
        runs: list[tuple[_Input, int]] = []
        for inp in self.inputs:
            if inp.ts:
                cut = len(inp.ts) if horizon is None else bisect_left(inp.ts, horizon)
                if cut:
                    runs.append((inp, cut))
            if horizon is not None:
                inp.emitted = max(inp.emitted, horizon)
        if len(runs) == 1:
            # Only one input has packets before the horizon: its run goes out as it is.
            inp, cut = runs[0]
            self.writer.write_blocks(inp.blocks[:cut], cut)
            self._consume(inp, cut)
        elif runs:
            ts: list[int] = []
            blocks: list = []
            for inp, cut in runs:
                ts += inp.ts[:cut]
                blocks += inp.blocks[:cut]
                self._consume(inp, cut)
            # Stable: equal timestamps keep input order, then file order.
            order = sorted(range(len(ts)), key=ts.__getitem__)
            self.writer.write_blocks(map(blocks.__getitem__, order), len(order))

    @staticmethod
    def _consume(inp: _Input, cut: int) -> None:
        del inp.ts[:cut]
        del inp.blocks[:cut]
        inp.report.packets += cut


class MergeCancelled(Exception):
    """The merge was called off (`merge_captures(cancel=...)`): its output is gone."""


class _OutOfOrder(Exception):
    """Internal: the C loop met an input out of time order; the Python path takes over."""


class _FastMerger(_Merger):
    """The same merge with the packet loop in C; Python reads every other block."""

    engine = "c"

    def run(self) -> None:
        marks = [inp.marks_path for inp in self.inputs]
        core = self.core = _fastmerge.Merger(len(self.inputs), marks=marks if any(marks) else None)
        with contextlib.ExitStack() as files:
            for inp in self.inputs:
                reader = inp.reader
                if reader.begin(files.enter_context(open(reader.path, "rb"))):
                    core.set_input(inp.index, reader.buf, reader.pos, reader.fast_table())
                else:
                    core.set_input(inp.index, None, 0, None)
            while True:
                self._check_cancel()
                out, packets, status, who = core.run()
                if packets:
                    self.writer.write_blocks((out,), packets)
                if status == _fastmerge.NEED:
                    self._serve(core, self.inputs[who])
                elif status == _fastmerge.DISORDER:
                    raise _OutOfOrder(self.inputs[who].report.path)
                elif status == _fastmerge.DONE:
                    break
        for inp in self.inputs:
            inp.report.packets = core.state(inp.index)[2]
            if inp.statistics:
                self.writer.write_blocks(inp.statistics, 0)

    @staticmethod
    def _serve(core, inp: _Input) -> None:
        feed_input(core, inp.index, inp.reader, inp.statistics)


def feed_input(core, index: int, reader: CaptureReader, statistics: list[bytes]) -> None:
    """Read what the C loop could not at input `index`'s position, and hand it back
    (statistics blocks read on the way go to `statistics`). The clock alignment's join
    feeds its `Merger` the same way."""
    reader.pos, last_ts, _ = core.state(index)
    if last_ts is not None:
        reader.last_ts = last_ts  # a simple packet block takes the previous time
    table = reader.fast_table()
    start = reader.pos
    batch = Batch()
    # Just this block when the C loop may read the packets after it (an empty table:
    # interface descriptions come next), else the whole chunk.
    one_block = table is not None and (not table or any(table))
    intact = reader.scan(batch, one_block=one_block)
    statistics.extend(block for _, block in batch.statistics)
    side = b"".join(batch.blocks) if batch.blocks else None
    if not intact:  # damage: the packets before it, then the input ends
        core.set_input(index, None, 0, None, side)
    elif reader.pos != start or side is not None or reader.refill():
        core.set_input(index, reader.buf, reader.pos, reader.fast_table(), side)
    else:  # the end of the file (`refill` noted any truncated block left)
        core.set_input(index, None, 0, None)


def _chunk_bytes(inputs: int) -> int:
    """Each input's reader holds a chunk or two: 1 MiB chunks for a few inputs, a quarter
    of that for many (100 inputs: 200 MiB of chunks otherwise; it reads as fast, as the
    clock alignment's join measured)."""
    return CHUNK_BYTES if inputs <= MANY_INPUTS else CHUNK_BYTES // 4


def _fast_path_enabled() -> bool:
    return _fastmerge is not None and os.environ.get("XDPCAP_NO_FASTMERGE", "") in ("", "0")


def merge_captures(
    sources: Sequence[MergeSource],
    out_path: str | os.PathLike[str],
    *,
    clock_correction: bool = True,
    clock_summary: str | None = None,
    packet_marks: PacketMarks | None = None,
    cancel: threading.Event | None = None,
) -> MergeReport:
    """Merge `sources` into one pcapng at `out_path`, ordered by (corrected) time.

    Damaged inputs keep their blocks before the damage and are reported; unreadable ones
    are reported and skipped. Raises `MergeError` when no input is usable (and leaves no
    output file behind), `MergeCancelled` (and leaves none) when `cancel` is set. An
    output that is a pipe or a device (`-w -`) is written into, never removed.
    """
    if not sources:
        raise MergeError("nothing to merge: no input files")
    # An input that cannot even be opened is one bad input, not a failed merge: it is
    # reported and skipped here, so that OSError below can only be about the output.
    unreadable: list[str] = []
    readable: list[MergeSource] = []
    for source in sources:
        try:
            with open(source.path, "rb"):
                readable.append(source)
        except OSError as exc:
            unreadable.append(
                f"{os.fspath(source.path)}: cannot read ({exc.strerror or exc}); skipped"
            )
    if not readable:
        raise MergeError(f"nothing to merge: {unreadable[0]}")
    sources = readable
    out_path = os.fspath(out_path)
    own_file = False  # a regular file named by the path itself: removed if it fails
    try:
        with open(out_path, "wb") as stream:
            own_file = stat.S_ISREG(os.fstat(stream.fileno()).st_mode) and not os.path.islink(
                out_path
            )
            if stream.seekable():
                merger = _merge_into(
                    stream, sources, clock_correction, clock_summary, packet_marks, cancel
                )
            else:
                # A pipe or a device cannot be rewound should an input turn out to be out
                # of order (the merge then starts again on the sorting path): the merge
                # goes to a temporary file first, then through.
                with tempfile.TemporaryFile(prefix="xdpcap-merge-") as spool:
                    merger = _merge_into(
                        spool, sources, clock_correction, clock_summary, packet_marks, cancel
                    )
                    spool.seek(0)
                    shutil.copyfileobj(spool, stream, CHUNK_BYTES)
    except OSError as exc:
        raise MergeError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    except MergeCancelled:
        if own_file:
            os.unlink(out_path)
        raise
    report = _report(merger, out_path)
    report.warnings[:0] = unreadable
    if not any(source.usable for source in report.sources):
        if own_file:  # (never a device, a pipe, or what a link names)
            os.unlink(out_path)
        raise MergeError("no usable input: " + "; ".join(report.warnings))
    return report


def _merge_into(
    stream: BinaryIO,
    sources: Sequence[MergeSource],
    clock_correction: bool,
    clock_summary: str | None,
    packet_marks: PacketMarks | None,
    cancel: threading.Event | None,
) -> _Merger:
    """The merge written to `stream` (seekable), by the C loop where it is built; an input
    out of order sends it back to the start, on the Python path that sorts."""
    engines = [_FastMerger, _Merger] if _fast_path_enabled() else [_Merger]
    for engine in engines:
        writer = PcapngWriter(
            stream,
            userappl=f"xdpcap {__version__}",
            comment=section_comment(sources, clock_correction, clock_summary),
        )
        merger = engine(sources, writer, clock_correction, packet_marks)
        merger.cancel = cancel
        try:
            merger.run()
        except _OutOfOrder:
            # Start again from an empty file; the writer's buffer goes with it.
            stream.seek(0)
            stream.truncate()
            continue
        writer.flush()
        break
    return merger


def _report(merger: _Merger, out_path: str) -> MergeReport:
    warnings: list[str] = []
    for inp in merger.inputs:
        rep = inp.report
        reader = inp.reader
        rep.usable = bool(reader.sections)
        rep.interfaces = [iface.out_id for iface in reader.interfaces]
        rep.statistics = len(inp.statistics)
        rep.damage = reader.damage
        if reader.damage is not None:
            if rep.usable:
                warnings.append(f"{reader.damage}; kept the {rep.packets} packets before it")
            else:
                warnings.append(f"{reader.damage}; skipped")
        if rep.out_of_order:
            warnings.append(
                f"{rep.path}: packets out of time order; sorted them within a window of "
                f"{REORDER_PACKETS} packets"
            )
        if rep.late_packets:
            warnings.append(
                f"{rep.path}: {rep.late_packets} packets were later than the reorder window "
                "and are written out of time order"
            )
    return MergeReport(
        out_path=out_path,
        sources=[inp.report for inp in merger.inputs],
        warnings=warnings,
        packets=sum(inp.report.packets for inp in merger.inputs),
        interfaces=list(merger.interface_names),
        engine=merger.engine,
    )


# ------------------------------------------------------------------------ naming
def interface_name(source: MergeSource, iface: Interface) -> str:
    """`<host>:<iface>` for a run's capture; the file's own name for a plain file."""
    stem = os.path.splitext(os.path.basename(os.fspath(source.path)))[0]
    own = iface.name
    if own is None:
        # Classic pcap or an unnamed interface: the user's name, else the file's stem.
        own = source.name or stem
        if iface.index:
            own = f"{own}#{iface.index}"
        return f"{source.host}:{own}" if source.host else own
    label = source.host or source.name
    return f"{label}:{own}" if label else own


def interface_description(source: MergeSource, iface: Interface) -> str | None:
    """Host, address, capture point (the source's own description) and clock offset."""
    parts: list[str] = []
    if source.host:
        where = f"host {source.host}"
        if source.address:
            where += f" ({source.address})"
        parts.append(where)
    if iface.description:
        parts.append(iface.description)
    if source.host or source.clock_offset_ns or source.clock_error_ns is not None:
        parts.append(_clock_text(source))
    return ", ".join(parts) or None


def section_comment(
    sources: Sequence[MergeSource], clock_correction: bool, clock_summary: str | None = None
) -> str:
    state = "on" if clock_correction else "off"
    lines = [f"Merged by xdpcap from {len(sources)} inputs (clock correction {state}):"]
    if clock_summary:
        lines.append(f"  {clock_summary}")
    for source in sources:
        what = [f"host {source.host}"] if source.host else []
        if source.address:
            what.append(source.address)
        what.append(_clock_text(source))
        lines.append(f"  {os.fspath(source.path)}: {', '.join(what)}")
    return "\n".join(lines)


def _clock_text(source: MergeSource) -> str:
    if source.clock_note:
        return source.clock_note
    text = f"clock offset {format_ns(source.clock_offset_ns, signed=True)}"
    if source.clock_error_ns is not None:
        text += f" ± {format_ns(source.clock_error_ns)}"
    if source.sync_state:
        text += f" ({source.sync_state})"
    return text


def format_ns(ns: int, *, signed: bool = False) -> str:
    """Exact milliseconds from integer nanoseconds: 1234567 -> '1.234567 ms'."""
    sign = "-" if ns < 0 else ("+" if signed else "")
    ns = abs(ns)
    return f"{sign}{ns // 1_000_000}.{ns % 1_000_000:06d} ms"
