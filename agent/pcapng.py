"""pcapng format constants and a fast buffered writer (draft-ietf-opsawg-pcapng).

Our own small `struct` code: dpkt's writer forces captured length == original length and
is several times slower. The writer keeps one in-memory buffer and hands it to the file
in large writes, never a syscall per packet.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate
from typing import BinaryIO

# Block types.
BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_SPB = 0x00000003
BT_NRB = 0x00000004
BT_ISB = 0x00000005
BT_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

# Options common to every block.
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
# Section header options.
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
# Interface description options.
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_FILTER = 11
IF_OS = 12
IF_TSOFFSET = 14
IF_HARDWARE = 15
# Enhanced packet options.
EPB_FLAGS = 2
EPB_DROPCOUNT = 4
EPB_PACKETID = 5
EPB_QUEUE = 6
EPB_VERDICT = 7
EPB_FLAG_INBOUND = 0x1  # epb_flags bits 0-1: the direction
EPB_FLAG_OUTBOUND = 0x2
# Interface statistics options.
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_FILTERACCEPT = 6
ISB_OSDROP = 7
ISB_USRDELIV = 8

LINKTYPE_ETHERNET = 1
TSRESOL_NS = 9

# The writer flushes its buffer once it holds this much; large writes are what keep the
# writer cheap, and 1 MiB bounds what a crash can leave unwritten.
FLUSH_BYTES = 1 << 20

# An enhanced packet block's head: type, total len, if id, ts hi, ts lo, cap, orig. The
# one definition: the sampler stamps it in the kernel (contract.py), the merge rewrites it.
EPB_HEAD = struct.Struct("<IIIIIII")
# What follows the padded packet bytes in the agent's EPBs: the epb_flags and epb_queue
# options, opt_endofopt and the trailing block length.
_EPB_TAIL = struct.Struct("<HHIHHIHHI")
# epb_verdict: option head, type byte (2: Linux eBPF XDP), the u64 action, 3 pad bytes.
_EPB_VERDICT_XDP = struct.Struct("<HHBQ3x")
_U32 = struct.Struct("<I")
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")

Option = tuple[int, bytes]


def pad4(length: int) -> int:
    """Bytes of padding that bring `length` to a multiple of 4."""
    return -length & 3


def epb_tail(cap_len: int, flags: int, queue: int, xdp_verdict: int | None = None) -> bytes:
    """Everything after `cap_len` packet bytes in an EPB carrying epb_flags and epb_queue
    (and epb_verdict, an XDP action, when known): padding, the options and the block
    length (the agent's blocks, built in bulk)."""
    verdict = b"" if xdp_verdict is None else _EPB_VERDICT_XDP.pack(EPB_VERDICT, 9, 2, xdp_verdict)
    total = EPB_HEAD.size + cap_len + pad4(cap_len) + len(verdict) + _EPB_TAIL.size
    tail = _EPB_TAIL.pack(EPB_FLAGS, 4, flags, EPB_QUEUE, 4, queue, OPT_ENDOFOPT, 0, total)
    # epb_verdict goes before opt_endofopt and the trailing length (the last 8 bytes).
    return _PADDING[cap_len & 3] + tail[:-8] + verdict + tail[-8:]


def encode_options(options: Iterable[Option]) -> bytes:
    """Encode (code, value) options with the end-of-options marker; empty input -> b""."""
    parts: list[bytes] = []
    for code, value in options:
        parts.append(struct.pack("<HH", code, len(value)))
        parts.append(value)
        parts.append(b"\0" * pad4(len(value)))
    if not parts:
        return b""
    parts.append(b"\0\0\0\0")
    return b"".join(parts)


def text_option(code: int, text: str) -> Option:
    return (code, text.encode("utf-8"))


def u64_option(code: int, value: int) -> Option:
    return (code, struct.pack("<Q", value))


def timestamp_option(code: int, ts_ns: int) -> Option:
    """A pcapng timestamp option: high then low 32 bits, in the interface's resolution."""
    return (code, struct.pack("<II", ts_ns >> 32, ts_ns & 0xFFFFFFFF))


def build_block(block_type: int, body: bytes) -> bytes:
    """Frame a block body: type, total length, body padded to 4, total length."""
    padded = body + b"\0" * pad4(len(body))
    total = len(padded) + 12
    return struct.pack("<II", block_type, total) + padded + _U32.pack(total)


def section_header(options: Iterable[Option] = ()) -> bytes:
    # Section length -1: unknown, which lets us stream without seeking back.
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + encode_options(options)
    return build_block(BT_SHB, body)


def interface_description(
    linktype: int = LINKTYPE_ETHERNET, snaplen: int = 0, options: Iterable[Option] = ()
) -> bytes:
    body = struct.pack("<HHI", linktype, 0, snaplen) + encode_options(options)
    return build_block(BT_IDB, body)


def interface_statistics(if_id: int, ts: int, options: Iterable[Option] = ()) -> bytes:
    body = struct.pack("<III", if_id, ts >> 32, ts & 0xFFFFFFFF) + encode_options(options)
    return build_block(BT_ISB, body)


def enhanced_packet(
    if_id: int, ts: int, data: bytes, orig_len: int, options: Iterable[Option] = ()
) -> bytes:
    body = (
        struct.pack("<IIIII", if_id, ts >> 32, ts & 0xFFFFFFFF, len(data), orig_len)
        + data
        + b"\0" * pad4(len(data))
        + encode_options(options)
    )
    return build_block(BT_EPB, body)


class PcapngWriter:
    """Write one pcapng section to a binary file object through one large buffer.

    Interfaces get ids in the order they are added. Timestamps are integers in the
    interface's resolution (nanoseconds for everything xdpcap writes).
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        userappl: str | None = None,
        os_name: str | None = None,
        hardware: str | None = None,
        comment: str | None = None,
    ) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._interfaces = 0
        self.packets_written = 0  # handed to the writer
        self.packets_committed = 0  # known to be in the file
        self.bytes_committed = 0
        self.sha256 = hashlib.sha256()
        options: list[Option] = []
        if comment:
            options.append(text_option(OPT_COMMENT, comment))
        if hardware:
            options.append(text_option(SHB_HARDWARE, hardware))
        if os_name:
            options.append(text_option(SHB_OS, os_name))
        if userappl:
            options.append(text_option(SHB_USERAPPL, userappl))
        self.write_raw(section_header(options))

    def add_interface(
        self,
        name: str,
        *,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = 0,
        description: str | None = None,
        hardware: str | None = None,
        os_name: str | None = None,
        tsresol: int = TSRESOL_NS,
        extra_options: Iterable[Option] = (),
    ) -> int:
        """Write an interface description block; returns the interface id."""
        options: list[Option] = [text_option(IF_NAME, name)]
        if description:
            options.append(text_option(IF_DESCRIPTION, description))
        options.append((IF_TSRESOL, bytes([tsresol])))
        if os_name:
            options.append(text_option(IF_OS, os_name))
        if hardware:
            options.append(text_option(IF_HARDWARE, hardware))
        options.extend(extra_options)
        self.write_raw(interface_description(linktype, snaplen, options))
        self._interfaces += 1
        return self._interfaces - 1

    def write_packet(
        self,
        if_id: int,
        ts: int,
        data: bytes,
        orig_len: int,
        *,
        flags: int | None = None,
        queue: int | None = None,
    ) -> None:
        """Append one enhanced packet block; `data` may be shorter than `orig_len`."""
        cap_len = len(data)
        if flags is not None and queue is not None:
            # The agent's block layout: one pack for the head, one for the tail.
            tail = epb_tail(cap_len, flags, queue)
            total = EPB_HEAD.size + cap_len + len(tail)
            buf = self._buffer
            buf += EPB_HEAD.pack(BT_EPB, total, if_id, ts >> 32, ts & 0xFFFFFFFF, cap_len, orig_len)
            buf += data
            buf += tail
        else:
            options: list[Option] = []
            if flags is not None:
                options.append((EPB_FLAGS, _U32.pack(flags)))
            if queue is not None:
                options.append((EPB_QUEUE, _U32.pack(queue)))
            self._buffer += enhanced_packet(if_id, ts, data, orig_len, options)
        self.packets_written += 1
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()

    def write_statistics(
        self,
        if_id: int,
        ts: int,
        *,
        starttime: int | None = None,
        endtime: int | None = None,
        ifrecv: int | None = None,
        ifdrop: int | None = None,
        filteraccept: int | None = None,
        osdrop: int | None = None,
        usrdeliv: int | None = None,
        comment: str | None = None,
    ) -> None:
        options: list[Option] = []
        if comment:
            options.append(text_option(OPT_COMMENT, comment))
        if starttime is not None:
            options.append(timestamp_option(ISB_STARTTIME, starttime))
        if endtime is not None:
            options.append(timestamp_option(ISB_ENDTIME, endtime))
        for code, value in (
            (ISB_IFRECV, ifrecv),
            (ISB_IFDROP, ifdrop),
            (ISB_FILTERACCEPT, filteraccept),
            (ISB_OSDROP, osdrop),
            (ISB_USRDELIV, usrdeliv),
        ):
            if value is not None:
                options.append(u64_option(code, value))
        self.write_raw(interface_statistics(if_id, ts, options))

    def write_raw(self, block: bytes) -> None:
        """Append an already framed block (the merge copies blocks without decoding)."""
        self._buffer += block
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()

    def write_blocks(self, blocks: Iterable[bytes | bytearray | memoryview], packets: int) -> None:
        """Append many framed blocks at once (the merge's hot path); `packets` of them are EPBs.

        One join per batch instead of one append per block; flushed like `write_raw`.
        A batch of packets alone (the agent's) larger than FLUSH_BYTES goes to the file
        in slices of whole blocks: a full disk then keeps every slice that fitted, not
        nothing of the batch (a flood formatted while the agent was behind).
        """
        data = b"".join(blocks)
        if len(data) <= FLUSH_BYTES or not isinstance(blocks, list) or packets != len(blocks):
            self._buffer += data
            self.packets_written += packets
            if len(self._buffer) >= FLUSH_BYTES:
                self.flush()
            return
        ends = list(accumulate(map(len, blocks)))  # where each block ends in `data`
        view = memoryview(data)
        first = pos = 0
        while first < len(blocks):
            # The blocks that fit in what the buffer has left, at least one.
            last = max(first + 1, bisect_right(ends, pos + FLUSH_BYTES - len(self._buffer)))
            end = ends[last - 1]
            self._buffer += view[pos:end]
            self.packets_written += last - first
            if len(self._buffer) >= FLUSH_BYTES:
                self.flush()
            first, pos = last, end

    def flush(self) -> None:
        """Hand the buffer to the file; on failure the file is cut back to whole blocks.

        A full disk must leave a file that readers accept up to its last complete block,
        so a failed or partial write is truncated away and the error re-raised;
        `packets_committed` then says how many packets really reached the file.
        """
        if self._buffer:
            view = memoryview(self._buffer)
            try:
                while view:
                    written = self._stream.write(view)
                    # Raw (unbuffered) files may write only part of what they are given.
                    view = view[written if written is not None else len(view) :]
                self._stream.flush()
            except OSError:
                view.release()
                self._buffer = bytearray()
                self._stream.truncate(self.bytes_committed)
                self._stream.seek(self.bytes_committed)
                self.packets_written = self.packets_committed
                raise
            view.release()
            self.bytes_committed += len(self._buffer)
            # The digest of exactly what is in the file: the controller checks its copy
            # against it without another command on the host.
            self.sha256.update(self._buffer)
            self._buffer = bytearray()
        self.packets_committed = self.packets_written
