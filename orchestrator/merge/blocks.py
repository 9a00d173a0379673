"""The values the pcapng/pcap reader delivers (sections, interfaces, packets, statistics,
batches, damage) and the option decoding they share; the reader itself is reader.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from ...agent.pcapng import (
    BT_EPB,
    BT_IDB,
    BT_ISB,
    EPB_DROPCOUNT,
    EPB_FLAGS,
    EPB_HEAD,
    EPB_PACKETID,
    EPB_QUEUE,
    EPB_VERDICT,
    IF_DESCRIPTION,
    IF_HARDWARE,
    IF_NAME,
    IF_OS,
    IF_TSOFFSET,
    ISB_ENDTIME,
    ISB_FILTERACCEPT,
    ISB_IFDROP,
    ISB_IFRECV,
    ISB_OSDROP,
    ISB_STARTTIME,
    ISB_USRDELIV,
    OPT_COMMENT,
    OPT_ENDOFOPT,
    SHB_HARDWARE,
    SHB_OS,
    SHB_USERAPPL,
    Option,
    pad4,
)

NS_PER_S = 1_000_000_000
Buffer = Union[bytes, bytearray, memoryview]
_LE_U32 = struct.Struct("<I")

# Interface options that hold integers, by block type: (code -> size); swapped when a
# big-endian section is normalised. Text and address options are byte strings as they are.
IDB_NUMERIC = {8: 8, 10: 4, IF_TSOFFSET: 8, 16: 8, 17: 8}  # speed, tzone, tsoffset, tx, rx
EPB_NUMERIC = {EPB_FLAGS: 4, EPB_DROPCOUNT: 8, EPB_PACKETID: 8, EPB_QUEUE: 4}
ISB_COUNTERS = (ISB_IFRECV, ISB_IFDROP, ISB_FILTERACCEPT, ISB_OSDROP, ISB_USRDELIV)
VERDICT_EBPF = (2, 3)  # verdict types whose value is a u64 (eBPF TC, eBPF XDP)


class Damage(NamedTuple):
    """Where and why a file stops being readable; everything before `offset` was read."""

    path: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} at byte offset {self.offset}"


@dataclass
class Section:
    """One section header block; options are normalised to little-endian."""

    index: int
    big_endian: bool
    version: tuple[int, int]
    options: list[Option] = field(default_factory=list)

    @property
    def userappl(self) -> str | None:
        return option_text(self.options, SHB_USERAPPL)

    @property
    def hardware(self) -> str | None:
        return option_text(self.options, SHB_HARDWARE)

    @property
    def os_name(self) -> str | None:
        return option_text(self.options, SHB_OS)

    @property
    def comments(self) -> list[str]:
        return option_texts(self.options, OPT_COMMENT)


@dataclass
class Interface:
    """One interface description block (or the implicit interface of a classic pcap).

    `index` numbers interfaces across all sections of the file; `local_id` is the id the
    section's packets use. `tsresol` is the raw if_tsresol byte (6 when absent), and
    `tsoffset` is if_tsoffset in seconds. `options` are normalised to little-endian.
    """

    index: int
    section: int
    local_id: int
    linktype: int
    snaplen: int
    tsresol: int = 6
    tsoffset: int = 0
    options: list[Option] = field(default_factory=list)
    out_id: int = -1  # the id its packets carry after normalisation

    @property
    def name(self) -> str | None:
        return option_text(self.options, IF_NAME)

    @property
    def description(self) -> str | None:
        return option_text(self.options, IF_DESCRIPTION)

    @property
    def hardware(self) -> str | None:
        return option_text(self.options, IF_HARDWARE)

    @property
    def os_name(self) -> str | None:
        return option_text(self.options, IF_OS)

    def to_ns(self, raw: int) -> int:
        """Convert a timestamp in this interface's units to integer nanoseconds."""
        return scale_to_ns(raw, self.tsresol) + self.tsoffset * NS_PER_S

    def ns_multiplier(self) -> int | None:
        """The integer factor from its units to ns, or None when a division is needed."""
        if self.tsresol & 0x80 or self.tsresol > 9:
            return None
        return 10 ** (9 - self.tsresol)


class Packet(NamedTuple):
    """A decoded packet; `if_id` is the renumbered id (by default `Interface.index`)."""

    if_id: int
    ts_ns: int
    cap_len: int
    orig_len: int
    data: bytes
    flags: int | None = None
    queue: int | None = None
    options: tuple[Option, ...] = ()


@dataclass
class InterfaceStatistics:
    """An interface statistics block; times in ns after normalisation (like packets)."""

    if_id: int
    ts_ns: int
    starttime: int | None = None
    endtime: int | None = None
    ifrecv: int | None = None
    ifdrop: int | None = None
    filteraccept: int | None = None
    osdrop: int | None = None
    usrdeliv: int | None = None
    comments: list[str] = field(default_factory=list)
    options: list[Option] = field(default_factory=list)


@dataclass
class Batch:
    """What one chunk of a file held, normalised.

    `ts[i]` is the timestamp in ns of the packet block `blocks[i]`, in file order. The
    blocks are memoryviews into the chunk: write them out before the chunk is dropped.
    `statistics` pairs each ISB's value with its normalised block.
    """

    ts: list[int] = field(default_factory=list)
    blocks: list[Buffer] = field(default_factory=list)
    statistics: list[tuple[InterfaceStatistics, bytes]] = field(default_factory=list)


@dataclass
class Capture:
    """A whole file decoded in memory (for tests and small files only)."""

    path: str
    format: str
    sections: list[Section]
    interfaces: list[Interface]
    packets: list[Packet]
    statistics: list[InterfaceStatistics]
    damage: Damage | None


def scale_to_ns(raw: int, tsresol: int) -> int:
    """Integer conversion to ns; resolutions finer than 1 ns are floored."""
    exponent = tsresol & 0x7F
    if tsresol & 0x80:
        return (raw * NS_PER_S) >> exponent
    if exponent <= 9:
        return raw * 10 ** (9 - exponent)
    return raw // 10 ** (exponent - 9)


def decode_options(buf: Buffer, start: int, end: int, big: bool, block_type: int) -> list[Option]:
    """Decode options between `start` and `end`, values normalised to little-endian.

    Lenient by design: a malformed option list ends the options, not the packet.
    """
    order = ">" if big else "<"
    result: list[Option] = []
    while start + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, start)
        if code == OPT_ENDOFOPT or start + 4 + length > end:
            break
        value = bytes(buf[start + 4 : start + 4 + length])
        if big:
            value = to_little_endian(block_type, code, value)
        result.append((code, value))
        start += 4 + length + pad4(length)
    return result


def to_little_endian(block_type: int, code: int, value: bytes) -> bytes:
    if block_type == BT_IDB and IDB_NUMERIC.get(code) == len(value):
        return value[::-1]
    if block_type == BT_EPB:
        if EPB_NUMERIC.get(code) == len(value):
            return value[::-1]
        if code == EPB_VERDICT and len(value) == 9 and value[0] in VERDICT_EBPF:
            return value[:1] + value[:0:-1]
    if block_type == BT_ISB:
        if code in (ISB_STARTTIME, ISB_ENDTIME) and len(value) == 8:
            return value[3::-1] + value[7:3:-1]  # two u32 words, high word first
        if code in ISB_COUNTERS and len(value) == 8:
            return value[::-1]
    return value


def option_text(options: list[Option], code: int) -> str | None:
    for option_code, value in options:
        if option_code == code:
            return value.decode("utf-8", "replace")
    return None


def option_texts(options: list[Option], code: int) -> list[str]:
    return [value.decode("utf-8", "replace") for c, value in options if c == code]


def decode_packet(block: Buffer, ts_ns: int) -> Packet:
    """Decode a normalised (little-endian) EPB into a `Packet`."""
    _, blen, if_id, _, _, cap, orig = EPB_HEAD.unpack_from(block)
    data = bytes(block[28 : 28 + cap])
    options = decode_options(block, 28 + cap + pad4(cap), blen - 4, False, BT_EPB)
    flags = queue = None
    for code, value in options:
        if code == EPB_FLAGS and len(value) == 4:
            flags = _LE_U32.unpack(value)[0]
        elif code == EPB_QUEUE and len(value) == 4:
            queue = _LE_U32.unpack(value)[0]
    return Packet(if_id, ts_ns, cap, orig, data, flags, queue, tuple(options))
