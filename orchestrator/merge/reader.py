"""A streaming reader for pcapng and classic pcap files (standard library only).

The reader is built for the merge: it reads large chunks, walks block boundaries with
`struct.unpack_from` and decodes only block headers, timestamps and the options it needs.
Packet bytes are never decoded. Every packet comes out *normalised*: an enhanced packet
block in little-endian byte order, its timestamp in nanoseconds (`if_tsresol` and
`if_tsoffset` folded in, the caller's clock shift subtracted) and its interface id
renumbered by the caller. Such blocks can be copied into one output section as they are.
For little-endian nanosecond captures (what xdpcap writes) the normalisation is a 12-byte
in-place rewrite of the block header; big-endian sections, simple packet blocks and
classic pcap records are rebuilt, which is slower but rare.

Two levels of API:
- `CaptureReader.batches()` yields one `Batch` per chunk read: parallel lists of
  timestamps and normalised blocks (memoryviews into the chunk), for the merge.
- `CaptureReader.packets()`, `read_packets()` and `load()` give decoded `Packet`,
  `Interface` and `InterfaceStatistics` values, for tests and the controller.

Damage: every complete block before a truncated or corrupt one is delivered; then the
reader records a `Damage` (file, byte offset, reason) and, if `strict`, raises
`PcapngError` naming both.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO, Callable

from ...agent.clock import drift_gained_ns
from ...agent.errors import PcapngError
from ...agent.pcapng import (
    BT_EPB,
    BT_IDB,
    BT_ISB,
    BT_SHB,
    BT_SPB,
    BYTE_ORDER_MAGIC,
    EPB_HEAD,
    IF_TSOFFSET,
    IF_TSRESOL,
    ISB_ENDTIME,
    ISB_FILTERACCEPT,
    ISB_IFDROP,
    ISB_IFRECV,
    ISB_OSDROP,
    ISB_STARTTIME,
    ISB_USRDELIV,
    OPT_COMMENT,
    Option,
    enhanced_packet,
    interface_statistics,
    pad4,
)
from .blocks import (
    ISB_COUNTERS,
    NS_PER_S,
    Batch,
    Buffer,
    Capture,
    Damage,
    Interface,
    InterfaceStatistics,
    Packet,
    Section,
    decode_options,
    decode_packet,
)

# Reading 1 MiB at a time keeps the per-chunk overhead (one read, one batch) negligible
# while a merge of many inputs holds only a few chunks per input in memory.
CHUNK_BYTES = 1 << 20
# Larger blocks are taken for corruption (a garbage length field), not read into memory.
MAX_BLOCK_BYTES = 1 << 26
# Classic pcap: the largest record libpcap-based readers accept whatever the snaplen says.
MAX_PCAP_RECORD = 262144

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_SHB_MAGIC_LE = struct.pack("<I", BYTE_ORDER_MAGIC)
_SHB_MAGIC_BE = struct.pack(">I", BYTE_ORDER_MAGIC)

_LE_HEAD6 = struct.Struct("<IIIIII")  # type, total len, if id, ts hi, ts lo, cap len
_LE_ID_TS = struct.Struct("<III")  # the 12 bytes the normalisation rewrites
_LE_U32 = struct.Struct("<I")
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")
_TS_MASK = 0xFFFFFFFF
_TS_MAX = (1 << 64) - 1

Renumber = Callable[["Interface"], int]


class _Corrupt(Exception):
    """Internal: the block at `pos` of the current buffer cannot be read."""

    def __init__(self, pos: int, reason: str) -> None:
        super().__init__(reason)
        self.pos = pos
        self.reason = reason


class CaptureReader:
    """Stream one pcapng or classic pcap file as normalised blocks.

    `renumber` gives each interface its id in the output, called once per interface as
    soon as its description is read (before any of its packets); by default interfaces
    are numbered across sections in file order. `shift_ns` is subtracted from every
    packet and statistics timestamp (clock correction); with `drift_ppb`, so is
    (t − drift_epoch_ns) × drift_ppb / 1e9 — a clock that ran fast or slow. A drifting
    file is read on the slow path (each block's time is computed on its own). With
    `strict` (the default) a damaged file raises `PcapngError` after its good blocks;
    otherwise the damage is only recorded in `self.damage`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        renumber: Renumber | None = None,
        shift_ns: int = 0,
        drift_ppb: int = 0,
        drift_epoch_ns: int = 0,
        strict: bool = True,
        chunk_size: int = CHUNK_BYTES,
    ) -> None:
        self.path = os.fspath(path)
        self.format: str | None = None  # "pcapng" or "pcap" once the first bytes are read
        self.sections: list[Section] = []
        self.interfaces: list[Interface] = []
        self.statistics: list[InterfaceStatistics] = []
        self.damage: Damage | None = None
        self.skipped_blocks = 0  # NRB, DSB, custom and unknown blocks passed over
        self._renumber = renumber or (lambda iface: iface.index)
        self._shift_ns = shift_ns
        self._drift_ppb = drift_ppb
        self._drift_epoch_ns = drift_epoch_ns
        self._strict = strict
        self._chunk_size = chunk_size
        self._section_ifaces: list[Interface] = []
        # Per local interface id of the current little-endian section: (out id, factor,
        # addend) when packets can be normalised in place with one multiply-add, else None.
        self._fast: list[tuple[int, int, int] | None] = []
        # The same for the C loop, which also takes a drift out: (out id, factor, addend,
        # drift ppb, drift epoch less the shift) — see `fast_table`.
        self._fast_c: list[tuple[int, ...] | None] = []
        self._big = False
        # The timestamp of the last packet read: a simple packet block takes it.
        self.last_ts = 0
        # Stepping state (see `begin`): the unread chunk, the next block in it, and the
        # file offset of buf[0] (damage offsets are file offsets).
        self.buf = bytearray()
        self.pos = 0
        self.base = 0
        self._stream: BinaryIO | None = None
        self._pcap_ns_factor = 1000

    # ----------------------------------------------------------------- high level
    def packets(self) -> Iterator[Packet]:
        """Decoded packets in file order (statistics land in `self.statistics`)."""
        for batch in self.batches():
            for ts, block in zip(batch.ts, batch.blocks):
                yield decode_packet(block, ts)

    # ------------------------------------------------------------------ low level
    def batches(self) -> Iterator[Batch]:
        """Normalised packet blocks, one batch per chunk read, in file order."""
        with open(self.path, "rb") as stream:
            if self.begin(stream):
                while True:
                    batch = Batch()
                    whole = self.scan(batch)
                    if batch.ts or batch.statistics:
                        yield batch
                    if not whole or not self.refill():
                        break
        if self.damage is not None and self._strict:
            raise PcapngError(str(self.damage))

    # The stepping API under `batches()`. The merge's C fast path uses it directly: it
    # reads the little-endian packet blocks of `buf` itself (with `fast_table()`), moves
    # `pos` past them and keeps `last_ts` current, and calls `scan()` for everything else.
    def begin(self, stream: BinaryIO) -> bool:
        """Read the first chunk and the file header; False (and `damage`) if unusable."""
        self._stream = stream
        self.buf = bytearray(stream.read(self._chunk_size))
        self.base = 0  # file offset of buf[0]
        try:
            self.pos = self._start(self.buf)
        except _Corrupt as exc:
            self.damage = Damage(self.path, exc.pos, exc.reason)
            return False
        self._scan = self._scan_pcapng if self.format == "pcapng" else self._scan_pcap
        return True

    def scan(self, batch: Batch, *, one_block: bool = False) -> bool:
        """Read the complete blocks from `pos` on into `batch` (only one with `one_block`).

        Returns False once the file is damaged: `damage` says where, and `batch` holds
        what came before it. Stopping at an incomplete block is not damage: `refill()`.
        """
        buf = self.buf
        try:
            if one_block and self.format == "pcapng":
                nxt = self._one_block(buf, memoryview(buf), self.pos, len(buf), batch)
                if nxt is not None:
                    self.pos = nxt
            else:
                self.pos = self._scan(buf, self.pos, batch)
        except _Corrupt as exc:
            self.damage = Damage(self.path, self.base + exc.pos, exc.reason)
            return False
        return True

    def refill(self) -> bool:
        """Drop the bytes before `pos` and append the next chunk.

        False at the end of the file; bytes left over there are damage (a truncated block).
        """
        assert self._stream is not None, "refill() before begin()"
        data = self._stream.read(self._chunk_size)
        if not data:
            if self.pos < len(self.buf):
                reason = _truncation(self.buf, self.pos, self)
                self.damage = Damage(self.path, self.base + self.pos, reason)
            return False
        # A new buffer each time: blocks handed out earlier are views into the old one.
        self.base += self.pos
        self.buf = self.buf[self.pos :]
        self.pos = 0
        self.buf += data
        return True

    def fast_table(self) -> list[tuple[int, ...] | None] | None:
        """Per local interface id of the current section: (out id, factor, addend) when
        `ts_ns = raw * factor + addend` and an in-place rewrite of the interface id and
        timestamp normalise its packet blocks; None for other interfaces. With a drift,
        (out id, factor, addend, drift ppb, epoch): then t = raw * factor + addend and
        `ts_ns = t - (t - epoch) * ppb // 10**9`, what `_drifted` computes, in C's
        128-bit integers. None as a whole when no packet block at `pos` can be rewritten
        in place (big-endian sections, classic pcap)."""
        if self.format != "pcapng" or self._big:
            return None
        return self._fast_c

    def _start(self, buf: bytearray) -> int:
        if not buf:
            raise _Corrupt(0, "empty file, not a capture")
        if len(buf) < 4:
            raise _Corrupt(0, "not a pcap or pcapng file (too short)")
        if _LE_U32.unpack_from(buf)[0] == BT_SHB:
            self.format = "pcapng"
            return 0
        for order in "<>":
            magic = struct.unpack_from(order + "I", buf)[0]
            if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
                self.format = "pcap"
                return self._pcap_header(buf, order, magic == _PCAP_MAGIC_NS)
        raise _Corrupt(0, "not a pcap or pcapng file (unknown magic number)")

    # ----------------------------------------------------------------- classic pcap
    def _pcap_header(self, buf: bytearray, order: str, nanos: bool) -> int:
        if len(buf) < 24:
            raise _Corrupt(0, "truncated pcap file header")
        _, major, minor, _, _, snaplen, network = struct.unpack_from(order + "IHHiIII", buf)
        self._big = order == ">"
        self._pcap_record = struct.Struct(order + "IIII")
        self._pcap_ns_factor = 1 if nanos else 1000
        self.sections.append(Section(0, self._big, (major, minor)))
        # The upper bits of the link-type field carry FCS information, not the type.
        self._add_interface(
            Interface(0, 0, 0, network & 0x0FFFFFF, snaplen, tsresol=9 if nanos else 6)
        )
        self._pcap_max = max(snaplen, MAX_PCAP_RECORD)
        return 24

    def _scan_pcap(self, buf: bytearray, pos: int, batch: Batch) -> int:
        unpack = self._pcap_record.unpack_from
        factor = self._pcap_ns_factor
        frac_limit = NS_PER_S // factor
        out = self.interfaces[0].out_id
        addend = -self._shift_ns
        head = EPB_HEAD.pack
        trailer = _LE_U32.pack
        ts_append = batch.ts.append
        block_append = batch.blocks.append
        end = len(buf)
        while pos + 16 <= end:
            sec, frac, incl, orig = unpack(buf, pos)
            if incl > self._pcap_max or frac >= frac_limit:
                raise _Corrupt(pos, f"corrupt pcap record header (length {incl})")
            nxt = pos + 16 + incl
            if nxt > end:
                break
            ts = sec * NS_PER_S + frac * factor
            # Tested here, not in _drifted: no method call per record without drift.
            ts = max((self._drifted(ts) if self._drift_ppb else ts) + addend, 0)
            total = 32 + incl + (-incl & 3)
            block_append(
                head(BT_EPB, total, out, ts >> 32, ts & _TS_MASK, incl, orig)
                + buf[pos + 16 : nxt]
                + _PADDING[incl & 3]
                + trailer(total)
            )
            ts_append(ts)
            pos = nxt
        return pos

    # ---------------------------------------------------------------------- pcapng
    def _scan_pcapng(self, buf: bytearray, pos: int, batch: Batch) -> int:
        view = memoryview(buf)
        end = len(buf)
        while pos < end:
            if not self._big and self._fast:
                pos = self._scan_fast(buf, view, pos, end, batch)
            nxt = self._one_block(buf, view, pos, end, batch)
            if nxt is None:
                break
            pos = nxt
        return pos

    def _scan_fast(self, buf: bytearray, view: memoryview, pos: int, end: int, batch: Batch) -> int:
        """The hot loop: little-endian EPBs of in-place interfaces, until anything else.

        It stops at the first block it does not fully trust; `_one_block` then handles
        (or diagnoses) that block, so the checks here can stay minimal.
        """
        unpack = _LE_HEAD6.unpack_from
        trailer = _LE_U32.unpack_from
        rewrite = _LE_ID_TS.pack_into
        fast = self._fast
        ts_append = batch.ts.append
        block_append = batch.blocks.append
        limit = end - 24
        mask = _TS_MASK
        ts_max = _TS_MAX
        # Unknown ids (IndexError) and interfaces that need the slow path (None:
        # TypeError) stop the loop before the block is taken; try costs nothing until it
        # fires, unlike a test per packet.
        try:
            while pos <= limit:
                btype, blen, local_id, hi, lo, cap = unpack(buf, pos)
                nxt = pos + blen
                if (
                    btype != 6  # BT_EPB, as a literal: a global lookup per packet costs
                    or nxt > end
                    or blen < cap + 32
                    or blen & 3
                    or trailer(buf, nxt - 4)[0] != blen
                ):
                    break
                out, factor, addend = fast[local_id]
                ts = (hi << 32 | lo) * factor + addend
                # Checked before packing: a failed pack_into has already zeroed the field.
                if not 0 <= ts <= ts_max:
                    break
                rewrite(buf, pos + 8, out, ts >> 32, ts & mask)
                ts_append(ts)
                block_append(view[pos:nxt])
                pos = nxt
        except (IndexError, TypeError):
            pass
        if batch.ts:
            self.last_ts = batch.ts[-1]
        return pos

    def _one_block(
        self, buf: bytearray, view: memoryview, pos: int, end: int, batch: Batch
    ) -> int | None:
        """Handle any one block; None when it is not complete in the buffer yet."""
        if end - pos < 12:
            return None
        btype = _LE_U32.unpack_from(buf, pos)[0]
        if btype == BT_SHB:
            return self._section_block(buf, pos, end)
        if not self.sections:
            raise _Corrupt(pos, "pcapng block before any section header")
        order = ">" if self._big else "<"
        btype, blen = struct.unpack_from(order + "II", buf, pos)
        _check_length(pos, blen)
        nxt = pos + blen
        if nxt > end:
            return None
        if struct.unpack_from(order + "I", buf, nxt - 4)[0] != blen:
            raise _Corrupt(pos, f"block length fields do not match (block type {btype:#x})")
        body = view[pos + 8 : nxt - 4]
        if btype == BT_EPB:
            self._epb(buf, pos, body, batch)
        elif btype == BT_IDB:
            self._idb(pos, body)
        elif btype == BT_ISB:
            self._isb(pos, body, batch)
        elif btype == BT_SPB:
            self._spb(pos, body, batch)
        else:
            self.skipped_blocks += 1
        return nxt

    def _section_block(self, buf: bytearray, pos: int, end: int) -> int | None:
        if end - pos < 28:
            return None
        magic = bytes(buf[pos + 8 : pos + 12])
        if magic not in (_SHB_MAGIC_LE, _SHB_MAGIC_BE):
            raise _Corrupt(pos, "section header with a bad byte-order magic")
        big = magic == _SHB_MAGIC_BE
        order = ">" if big else "<"
        blen = struct.unpack_from(order + "I", buf, pos + 4)[0]
        _check_length(pos, blen)
        if blen < 28:
            raise _Corrupt(pos, f"section header too short ({blen} bytes)")
        nxt = pos + blen
        if nxt > end:
            return None
        if struct.unpack_from(order + "I", buf, nxt - 4)[0] != blen:
            raise _Corrupt(pos, "block length fields do not match (section header)")
        major, minor = struct.unpack_from(order + "HH", buf, pos + 12)
        if major != 1:
            raise _Corrupt(pos, f"unsupported pcapng version {major}.{minor}")
        options = decode_options(buf, pos + 24, nxt - 4, big, BT_SHB)
        # A new section starts a new byte order and a new set of interfaces.
        self._big = big
        self._section_ifaces = []
        self._fast = []
        self._fast_c = []
        self.sections.append(Section(len(self.sections), big, (major, minor), options))
        return nxt

    def _idb(self, pos: int, body: memoryview) -> None:
        if len(body) < 8:
            raise _Corrupt(pos, "interface description block too short")
        order = ">" if self._big else "<"
        linktype, _, snaplen = struct.unpack_from(order + "HHI", body)
        options = decode_options(body, 8, len(body), self._big, BT_IDB)
        iface = Interface(
            index=len(self.interfaces),
            section=len(self.sections) - 1,
            local_id=len(self._section_ifaces),
            linktype=linktype,
            snaplen=snaplen,
            options=options,
        )
        for code, value in options:
            if code == IF_TSRESOL and value:
                iface.tsresol = value[0]
            elif code == IF_TSOFFSET and len(value) == 8:
                iface.tsoffset = struct.unpack("<q", value)[0]
        self._add_interface(iface)

    def _add_interface(self, iface: Interface) -> None:
        iface.out_id = self._renumber(iface)
        self.interfaces.append(iface)
        self._section_ifaces.append(iface)
        factor = iface.ns_multiplier()
        addend = iface.tsoffset * NS_PER_S - self._shift_ns
        if factor is None:
            self._fast.append(None)
            self._fast_c.append(None)
        elif self._drift_ppb:
            # Python's own fast loop has no drift; the C loop's does. Both take the
            # drift off the unshifted time: (t + shift - epoch) = (t - (epoch - shift)).
            self._fast.append(None)
            epoch = self._drift_epoch_ns - self._shift_ns
            self._fast_c.append((iface.out_id, factor, addend, self._drift_ppb, epoch))
        else:
            self._fast.append((iface.out_id, factor, addend))
            self._fast_c.append(self._fast[-1])

    def _interface(self, pos: int, local_id: int) -> Interface:
        if local_id >= len(self._section_ifaces):
            raise _Corrupt(pos, f"block refers to undescribed interface {local_id}")
        return self._section_ifaces[local_id]

    def _normalised_ts(self, pos: int, iface: Interface, raw: int) -> int:
        # A clock correction that would go below the epoch stops at it.
        ts = max(self._drifted(iface.to_ns(raw)) - self._shift_ns, 0)
        if ts > _TS_MAX:
            raise _Corrupt(
                pos, f"timestamp {raw} of interface {iface.local_id} exceeds 64 bits in ns"
            )
        return ts

    def _drifted(self, ts: int) -> int:
        """`ts` less what a clock drifting by drift_ppb gained since drift_epoch_ns."""
        if not self._drift_ppb:
            return ts
        return ts - drift_gained_ns(ts, self._drift_ppb, self._drift_epoch_ns)

    def _epb(self, buf: bytearray, pos: int, body: memoryview, batch: Batch) -> None:
        order = ">" if self._big else "<"
        if len(body) < 20:
            raise _Corrupt(pos, "enhanced packet block too short")
        local_id, hi, lo, cap, orig = struct.unpack_from(order + "IIIII", body)
        if cap + 20 > len(body):
            raise _Corrupt(pos, f"captured length {cap} exceeds its block")
        iface = self._interface(pos, local_id)
        ts = self._normalised_ts(pos, iface, hi << 32 | lo)
        if self._big:
            data = body[20 : 20 + cap]
            options = decode_options(body, 20 + cap + pad4(cap), len(body), True, BT_EPB)
            block: Buffer = enhanced_packet(iface.out_id, ts, data, orig, options)
        else:
            _LE_ID_TS.pack_into(buf, pos + 8, iface.out_id, ts >> 32, ts & _TS_MASK)
            block = memoryview(buf)[pos : pos + 12 + len(body)]
        batch.ts.append(ts)
        batch.blocks.append(block)
        self.last_ts = ts

    def _spb(self, pos: int, body: memoryview, batch: Batch) -> None:
        # A simple packet block has no timestamp and belongs to interface 0: it becomes
        # an EPB stamped with the previous packet's time, which keeps the order.
        if len(body) < 4:
            raise _Corrupt(pos, "simple packet block too short")
        orig = struct.unpack_from(">I" if self._big else "<I", body)[0]
        iface = self._interface(pos, 0)
        cap = min(orig, len(body) - 4)
        if iface.snaplen:
            cap = min(cap, iface.snaplen)
        batch.ts.append(self.last_ts)
        batch.blocks.append(enhanced_packet(iface.out_id, self.last_ts, body[4 : 4 + cap], orig))

    def _isb(self, pos: int, body: memoryview, batch: Batch) -> None:
        order = ">" if self._big else "<"
        if len(body) < 12:
            raise _Corrupt(pos, "interface statistics block too short")
        local_id, hi, lo = struct.unpack_from(order + "III", body)
        iface = self._interface(pos, local_id)
        stats = InterfaceStatistics(iface.out_id, self._normalised_ts(pos, iface, hi << 32 | lo))
        kept: list[Option] = []
        for code, value in decode_options(body, 12, len(body), self._big, BT_ISB):
            if code in (ISB_STARTTIME, ISB_ENDTIME) and len(value) == 8:
                hi, lo = struct.unpack("<II", value)
                ts = self._normalised_ts(pos, iface, hi << 32 | lo)
                setattr(stats, "starttime" if code == ISB_STARTTIME else "endtime", ts)
                value = struct.pack("<II", ts >> 32, ts & _TS_MASK)
            elif code in ISB_COUNTERS and len(value) == 8:
                setattr(stats, _ISB_FIELDS[code], struct.unpack("<Q", value)[0])
            elif code == OPT_COMMENT:
                stats.comments.append(value.decode("utf-8", "replace"))
            kept.append((code, value))
        stats.options = kept
        self.statistics.append(stats)
        batch.statistics.append((stats, interface_statistics(stats.if_id, stats.ts_ns, kept)))


_ISB_FIELDS = {
    ISB_IFRECV: "ifrecv",
    ISB_IFDROP: "ifdrop",
    ISB_FILTERACCEPT: "filteraccept",
    ISB_OSDROP: "osdrop",
    ISB_USRDELIV: "usrdeliv",
}


def _check_length(pos: int, blen: int) -> None:
    if blen < 12 or blen & 3 or blen > MAX_BLOCK_BYTES:
        raise _Corrupt(pos, f"corrupt block length {blen}")


def _truncation(buf: bytearray, pos: int, reader: CaptureReader) -> str:
    left = len(buf) - pos
    if reader.format == "pcap":
        return f"truncated pcap record ({left} bytes)"
    return f"truncated block ({left} bytes at the end of the file)"


def read_packets(path: str | os.PathLike[str], *, strict: bool = True) -> Iterator[Packet]:
    """Iterate the packets of a file; interface ids number interfaces across sections."""
    return CaptureReader(path, strict=strict).packets()


def load(path: str | os.PathLike[str], *, strict: bool = True) -> Capture:
    """Read a whole file into memory: sections, interfaces, packets, statistics."""
    reader = CaptureReader(path, strict=strict)
    packets = list(reader.packets())
    return Capture(
        path=reader.path,
        format=reader.format or "unknown",
        sections=reader.sections,
        interfaces=reader.interfaces,
        packets=packets,
        statistics=reader.statistics,
        damage=reader.damage,
    )
