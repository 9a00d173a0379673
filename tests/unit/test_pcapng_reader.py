"""The streaming pcapng/pcap reader: formats, resolutions, byte orders, damage.

Files are built with our writer, with the small big-endian and classic-pcap builders
below, and cross-checked with the independent readers python-pcapng and dpkt.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from xdpcap.agent.errors import PcapngError
from xdpcap.agent.pcapng import (
    EPB_FLAGS,
    EPB_QUEUE,
    IF_NAME,
    IF_TSOFFSET,
    IF_TSRESOL,
    PcapngWriter,
    enhanced_packet,
    interface_description,
    section_header,
    text_option,
)
from xdpcap.orchestrator.merge.blocks import Batch
from xdpcap.orchestrator.merge.reader import CaptureReader, load, read_packets

T0 = 1_700_000_000_123_456_789  # ns, with every digit significant


# ------------------------------------------------------------------------- builders
def write_pcapng(
    path: Path,
    names: list[str],
    packets: list[tuple[int, int, bytes, int]],
    stats: list[tuple[int, int, int, int]] = (),
    description: str | None = "XDP ingress, 1-in-1",
) -> Path:
    """Packets are (if_id, ts_ns, data, orig_len); stats are (if_id, ts_ns, recv, drop)."""
    with open(path, "wb") as stream:
        writer = PcapngWriter(stream, userappl="test")
        for name in names:
            writer.add_interface(name, description=description, snaplen=65535)
        for if_id, ts, data, orig in packets:
            writer.write_packet(if_id, ts, data, orig, flags=1, queue=if_id + 3)
        for if_id, ts, recv, drop in stats:
            writer.write_statistics(
                if_id, ts, starttime=T0, endtime=ts, ifrecv=recv, ifdrop=drop, osdrop=0
            )
        writer.flush()
    return path


def _be_block(block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) & 3)
    total = len(body) + 12
    return struct.pack(">II", block_type, total) + body + struct.pack(">I", total)


def _be_options(options: list[tuple[int, bytes]]) -> bytes:
    out = b""
    for code, value in options:
        out += struct.pack(">HH", code, len(value)) + value + b"\0" * (-len(value) & 3)
    return out + b"\0\0\0\0" if options else b""


def big_endian_section(name: str, packets: list[tuple[int, bytes, int]], tsresol: int = 9) -> bytes:
    """One big-endian section, one interface; packets are (ts in units, data, orig_len)."""
    shb = _be_block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_opts = [(IF_NAME, name.encode()), (IF_TSRESOL, bytes([tsresol]))]
    idb = _be_block(1, struct.pack(">HHI", 1, 0, 0) + _be_options(idb_opts))
    blocks = [shb, idb]
    for ts, data, orig in packets:
        opts = _be_options([(EPB_FLAGS, struct.pack(">I", 2)), (EPB_QUEUE, struct.pack(">I", 7))])
        head = struct.pack(">IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), orig)
        blocks.append(_be_block(6, head + data + b"\0" * (-len(data) & 3) + opts))
    isb_opts = [(4, struct.pack(">Q", 1000)), (5, struct.pack(">Q", 5))]
    isb_opts.append((2, struct.pack(">II", 0, 77)))  # isb_starttime, two words
    blocks.append(_be_block(5, struct.pack(">III", 0, 0, 99) + _be_options(isb_opts)))
    return b"".join(blocks)


def write_pcap(path: Path, packets: list[tuple[int, bytes, int]], *, nanos: bool, order="<"):
    """Classic pcap; packets are (ts_ns, data, orig_len)."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)]
    for ts, data, orig in packets:
        frac = ts % 10**9 if nanos else ts % 10**9 // 1000
        out.append(struct.pack(order + "IIII", ts // 10**9, frac, len(data), orig) + data)
    path.write_bytes(b"".join(out))
    return path


def frames(count: int, start: int = T0, step: int = 1000) -> list[tuple[int, int, bytes, int]]:
    return [
        (0, start + i * step, bytes([i & 0xFF]) * (60 + i % 7), 60 + i % 7) for i in range(count)
    ]


# ---------------------------------------------------------------------------- tests
def test_round_trip_interfaces_packets_statistics(tmp_path: Path) -> None:
    packets = [
        (0, T0, b"a" * 64, 64),
        (1, T0 + 1, b"b" * 10, 1500),  # captured shorter than on the wire
        (0, T0 + 2, b"c" * 3, 3),
    ]
    path = write_pcapng(tmp_path / "x.pcapng", ["eth0", "eth1"], packets, [(1, T0 + 5, 42, 2)])
    cap = load(path)
    assert cap.format == "pcapng"
    assert cap.sections[0].userappl == "test"
    assert [i.name for i in cap.interfaces] == ["eth0", "eth1"]
    assert cap.interfaces[1].description == "XDP ingress, 1-in-1"
    assert (cap.interfaces[0].snaplen, cap.interfaces[0].linktype) == (65535, 1)
    assert cap.interfaces[0].tsresol == 9
    got = [(p.if_id, p.ts_ns, p.data, p.orig_len, p.cap_len, p.flags, p.queue) for p in cap.packets]
    want = [(i, ts, d, o, len(d), 1, i + 3) for i, ts, d, o in packets]
    assert got == want
    (stats,) = cap.statistics
    assert (stats.if_id, stats.ts_ns, stats.ifrecv, stats.ifdrop, stats.osdrop) == (
        1,
        T0 + 5,
        42,
        2,
        0,
    )
    assert (stats.starttime, stats.endtime) == (T0, T0 + 5)
    assert cap.damage is None


def test_agrees_with_python_pcapng(tmp_path: Path) -> None:
    pcapng = pytest.importorskip("pcapng")
    path = write_pcapng(tmp_path / "x.pcapng", ["eth0"], frames(300))
    ours = [(p.ts_ns, p.data, p.orig_len) for p in read_packets(path)]
    theirs = []
    with open(path, "rb") as stream:
        for block in pcapng.FileScanner(stream):
            if isinstance(block, pcapng.blocks.EnhancedPacket):
                ts = block.timestamp_high << 32 | block.timestamp_low
                theirs.append((ts, bytes(block.packet_data), block.packet_len))
    assert ours == theirs


@pytest.mark.parametrize("chunk", [64, 333, 4096])
def test_small_chunks_give_the_same_result(tmp_path: Path, chunk: int) -> None:
    path = write_pcapng(tmp_path / "x.pcapng", ["eth0"], frames(200), [(0, T0 + 10**9, 1, 0)])
    whole = load(path)
    reader = CaptureReader(path, chunk_size=chunk)
    assert list(reader.packets()) == whole.packets
    assert reader.statistics == whole.statistics


@pytest.mark.parametrize(
    ("tsresol", "tsoffset", "raw", "want_ns"),
    [
        (6, 0, 1_700_000_000_123_456, 1_700_000_000_123_456_000),  # microseconds
        (3, 10, 5_250, 15_250_000_000),  # milliseconds and a 10 s offset
        (0x80 | 10, 0, 3 * 1024 + 512, 3_500_000_000),  # 2^-10 s units
        (12, 0, 1_234_567_891, 1_234_567),  # picoseconds are floored to ns
    ],
)
def test_resolution_and_offset(
    tmp_path: Path, tsresol: int, tsoffset: int, raw: int, want_ns: int
) -> None:
    options = [text_option(IF_NAME, "eth0"), (IF_TSRESOL, bytes([tsresol]))]
    options.append((IF_TSOFFSET, struct.pack("<q", tsoffset)))
    data = section_header() + interface_description(options=options)
    data += enhanced_packet(0, raw, b"x" * 20, 20)
    (tmp_path / "r.pcapng").write_bytes(data)
    (packet,) = read_packets(tmp_path / "r.pcapng")
    assert packet.ts_ns == want_ns
    assert isinstance(packet.ts_ns, int)


def test_big_endian_and_multiple_sections(tmp_path: Path) -> None:
    little = io.BytesIO()
    writer = PcapngWriter(little)
    writer.add_interface("lo")
    writer.write_packet(0, T0, b"L" * 30, 40, flags=1, queue=0)
    writer.flush()
    big = big_endian_section("be0", [(T0 + 1, b"B" * 21, 21), (T0 + 2, b"C" * 5, 9)])
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(little.getvalue() + big)
    cap = load(path)
    assert [s.big_endian for s in cap.sections] == [False, True]
    assert [(i.name, i.section, i.local_id, i.index) for i in cap.interfaces] == [
        ("lo", 0, 0, 0),
        ("be0", 1, 0, 1),
    ]
    got = [(p.if_id, p.ts_ns, p.data, p.orig_len, p.flags, p.queue) for p in cap.packets]
    assert got == [
        (0, T0, b"L" * 30, 40, 1, 0),
        (1, T0 + 1, b"B" * 21, 21, 2, 7),
        (1, T0 + 2, b"C" * 5, 9, 2, 7),
    ]
    (stats,) = cap.statistics
    assert (stats.if_id, stats.ts_ns, stats.ifrecv, stats.ifdrop, stats.starttime) == (
        1,
        99,
        1000,
        5,
        77,
    )


@pytest.mark.parametrize("nanos", [False, True])
@pytest.mark.parametrize("order", ["<", ">"])
def test_classic_pcap(tmp_path: Path, nanos: bool, order: str) -> None:
    stamps = [T0, T0 + 1_000, T0 + 2_000_001]
    packets = [(ts, bytes([n]) * (50 + n), 100) for n, ts in enumerate(stamps)]
    path = write_pcap(tmp_path / "c.pcap", packets, nanos=nanos, order=order)
    cap = load(path)
    assert cap.format == "pcap"
    assert cap.interfaces[0].tsresol == (9 if nanos else 6)
    # Microsecond files lose the sub-microsecond digits, and nothing else.
    want = [ts if nanos else ts // 1000 * 1000 for ts in stamps]
    assert [p.ts_ns for p in cap.packets] == want
    assert [(p.data, p.orig_len) for p in cap.packets] == [(d, o) for _, d, o in packets]


def test_classic_pcap_agrees_with_dpkt(tmp_path: Path) -> None:
    dpkt = pytest.importorskip("dpkt")
    packets = [(T0 + i * 7_000, bytes([i]) * 70, 70) for i in range(50)]
    path = write_pcap(tmp_path / "c.pcap", packets, nanos=False)
    with open(path, "rb") as stream:
        theirs = [buf for _, buf in dpkt.pcap.Reader(stream)]
    assert [p.data for p in read_packets(path)] == theirs


def test_simple_packet_block_takes_previous_time(tmp_path: Path) -> None:
    spb = struct.pack("<I", 8) + b"spbdata!"
    total = len(spb) + 12
    block = struct.pack("<II", 3, total) + spb + struct.pack("<I", total)
    data = section_header() + interface_description(options=[(IF_TSRESOL, b"\x09")])
    data += enhanced_packet(0, T0, b"x" * 4, 4) + block
    (tmp_path / "s.pcapng").write_bytes(data)
    packets = list(read_packets(tmp_path / "s.pcapng"))
    assert [(p.ts_ns, p.data) for p in packets] == [(T0, b"x" * 4), (T0, b"spbdata!")]


def test_unknown_blocks_are_passed_over(tmp_path: Path) -> None:
    nrb = struct.pack("<II", 4, 16) + b"\0\0\0\0" + struct.pack("<I", 16)
    data = (
        section_header()
        + interface_description(options=[(IF_TSRESOL, b"\x09")])
        + nrb
        + enhanced_packet(0, T0, b"x", 1)
    )
    (tmp_path / "n.pcapng").write_bytes(data)
    reader = CaptureReader(tmp_path / "n.pcapng")
    assert len(list(reader.packets())) == 1
    assert reader.skipped_blocks == 1


def test_truncated_file_keeps_blocks_before_the_damage(tmp_path: Path) -> None:
    path = write_pcapng(tmp_path / "t.pcapng", ["eth0"], frames(10))
    data = path.read_bytes()
    cut = len(data) - 50  # inside the last packet block
    path.write_bytes(data[:cut])
    reader = CaptureReader(path, chunk_size=100)
    got = []
    with pytest.raises(PcapngError, match=r"t\.pcapng.*truncated.*byte offset \d+"):
        for packet in reader.packets():
            got.append(packet)
    assert len(got) == 9
    last_block_start = reader.damage.offset
    assert data[last_block_start : last_block_start + 4] == struct.pack("<I", 6)
    assert last_block_start < cut


def test_corrupt_length_is_reported_with_its_offset(tmp_path: Path) -> None:
    path = write_pcapng(tmp_path / "c.pcapng", ["eth0"], frames(5))
    data = bytearray(path.read_bytes())
    # The fourth packet block: SHB and IDB, then three packets of known sizes.
    offset = len(section_header()) + 0
    blocks = []
    pos = 0
    while pos < len(data):
        blocks.append(pos)
        pos += struct.unpack_from("<I", data, pos + 4)[0]
    offset = blocks[5]
    struct.pack_into("<I", data, offset + 4, 0xFFFF_FFF0)
    path.write_bytes(bytes(data))
    cap = load(path, strict=False)
    assert len(cap.packets) == 3
    assert cap.damage is not None
    assert cap.damage.offset == offset
    assert "corrupt block length" in cap.damage.reason


def test_mismatched_trailer_is_corruption(tmp_path: Path) -> None:
    path = write_pcapng(tmp_path / "m.pcapng", ["eth0"], frames(3))
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, len(data) - 4, 12345)  # trailer of the last packet
    path.write_bytes(bytes(data))
    cap = load(path, strict=False)
    assert len(cap.packets) == 2
    assert "do not match" in cap.damage.reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"hello, this is not a capture at all", "not a pcap or pcapng")],
)
def test_not_a_capture(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.pcapng"
    path.write_bytes(content)
    with pytest.raises(PcapngError, match=f"bad.pcapng: {reason}.*byte offset 0"):
        list(read_packets(path))
    reader = CaptureReader(path, strict=False)
    assert list(reader.packets()) == []
    assert reader.damage.offset == 0


def test_renumber_and_shift(tmp_path: Path) -> None:
    path = write_pcapng(tmp_path / "x.pcapng", ["eth0", "eth1"], [(1, T0, b"x", 1)])
    seen = []

    def renumber(iface) -> int:
        seen.append(iface.name)
        return 10 + iface.index

    reader = CaptureReader(path, renumber=renumber, shift_ns=123)
    (packet,) = reader.packets()
    assert seen == ["eth0", "eth1"]
    assert (packet.if_id, packet.ts_ns) == (11, T0 - 123)


def test_stepping_api_one_block_at_a_time(tmp_path: Path) -> None:
    """begin/scan/refill (what the merge's C path drives) read what batches() reads."""
    path = write_pcapng(tmp_path / "s.pcapng", ["eth0", "eth1"], frames(40), [(1, T0, 5, 0)])
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # a truncated statistics block at the end
    whole = CaptureReader(path, strict=False, shift_ns=3)
    want = [
        (ts, bytes(block)) for batch in whole.batches() for ts, block in zip(batch.ts, batch.blocks)
    ]
    reader = CaptureReader(path, strict=False, shift_ns=3, chunk_size=300)
    got = []
    tables = []
    with open(path, "rb") as stream:
        assert reader.begin(stream) and reader.format == "pcapng"
        while True:
            batch = Batch()
            start = reader.pos
            assert reader.scan(batch, one_block=True)
            assert len(batch.ts) <= 1
            got += [(ts, bytes(block)) for ts, block in zip(batch.ts, batch.blocks)]
            tables.append(list(reader.fast_table()))
            if reader.pos == start and not reader.refill():
                break
    assert got == want and len(got) == 40
    assert tables[-1] == [(0, 1, -3), (1, 1, -3)]  # (out id, factor, addend) per interface
    assert reader.damage == whole.damage
    assert "truncated block" in reader.damage.reason


def test_fast_table_is_none_where_blocks_are_rebuilt(tmp_path: Path) -> None:
    be = tmp_path / "be.pcapng"
    be.write_bytes(big_endian_section("eth9", [(T0, b"B" * 21, 21)]))
    pcap = write_pcap(tmp_path / "c.pcap", [(T0, b"c" * 60, 60)], nanos=True)
    for path in (be, pcap):
        reader = CaptureReader(path)
        with open(path, "rb") as stream:
            assert reader.begin(stream)
            batch = Batch()
            assert reader.scan(batch)
            assert reader.fast_table() is None and len(batch.ts) == 1
