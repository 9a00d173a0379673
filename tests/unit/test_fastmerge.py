"""The merge's C fast path (`_fastmerge`) against its pure-Python path.

Every case merges the same inputs twice, once with `XDPCAP_NO_FASTMERGE=1`, and wants
the same file byte for byte (or, where the two may place an interface description
differently, the same packets, interfaces and statistics) and the same report. The C
module is also driven directly, fed damaged and mutated files, and compiled with
warnings as errors.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sysconfig
from dataclasses import asdict
from pathlib import Path

import pytest
from xdpcap.agent.pcapng import (
    IF_NAME,
    IF_TSOFFSET,
    IF_TSRESOL,
    enhanced_packet,
    interface_description,
    section_header,
    text_option,
)
from xdpcap.orchestrator.merge import captures as merge
from xdpcap.orchestrator.merge.captures import MergeSource, merge_captures
from xdpcap.orchestrator.merge.reader import CHUNK_BYTES, load

from .test_pcapng_reader import T0, big_endian_section, write_pcap, write_pcapng

fastmerge = pytest.importorskip(
    "xdpcap.orchestrator.merge._fastmerge", reason="the C extension is not built"
)
SOURCE = Path(merge.__file__).with_name("_fastmerge.c")


def merge_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sources: list[MergeSource], **kwargs
) -> tuple[merge.MergeReport, merge.MergeReport]:
    """Merge with the C path into c.pcapng and with the Python path into py.pcapng."""
    monkeypatch.delenv("XDPCAP_NO_FASTMERGE", raising=False)
    fast = merge_captures(sources, tmp_path / "c.pcapng", **kwargs)
    monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1")
    slow = merge_captures(sources, tmp_path / "py.pcapng", **kwargs)
    monkeypatch.delenv("XDPCAP_NO_FASTMERGE")
    assert slow.engine == "python"
    return fast, slow


def same_report(
    fast: merge.MergeReport, slow: merge.MergeReport, *, renumbered: bool = False
) -> None:
    """Equal reports; with `renumbered`, output interface ids may differ (names may not)."""
    one, other = asdict(fast), asdict(slow)
    for report in (one, other):
        del report["out_path"], report["engine"]
        if renumbered:
            names = report["interfaces"]
            for source in report["sources"]:
                source["interfaces"] = [names[i] for i in source["interfaces"]]
            names.sort()
    assert one == other


def same_bytes(tmp_path: Path) -> None:
    assert (tmp_path / "c.pcapng").read_bytes() == (tmp_path / "py.pcapng").read_bytes()


def same_content(tmp_path: Path) -> None:
    """The same packets, interfaces and statistics, interfaces known by name.

    An interface described after the first packets of its file (a later section, a
    host added to a live stream) gets its output id when a path reads its description:
    the C path when the merge reaches it, the Python path when it reads that chunk.
    """

    def named(path: Path) -> tuple:
        cap = load(path)
        names = [iface.name for iface in cap.interfaces]
        packets = [(names[p.if_id], *p[1:]) for p in cap.packets]
        stats = [(names[s.if_id], s.ts_ns, s.options) for s in cap.statistics]
        ifaces = sorted((i.name, i.linktype, i.snaplen, i.options) for i in cap.interfaces)
        assert cap.damage is None
        return packets, stats, ifaces

    assert named(tmp_path / "c.pcapng") == named(tmp_path / "py.pcapng")


def host(tmp_path: Path, name: str, index: int, count: int = 300, size: int = 60) -> Path:
    """Interleaved with the other hosts by `index`; equal times across equal indexes."""
    packets = [
        (0, T0 + i * 3000 + index * 1000, bytes([index, i & 0xFF]) * (size // 2), size + i % 3)
        for i in range(count)
    ]
    return write_pcapng(tmp_path / f"{name}.pcapng", ["eth0"], packets, [(0, T0, count, 1)])


def hand_made(path: Path, interfaces: list[list], blocks: list[bytes]) -> Path:
    """One little-endian section: interface descriptions with the given options, blocks."""
    data = section_header()
    for options in interfaces:
        data += interface_description(options=options)
    path.write_bytes(data + b"".join(blocks))
    return path


# ------------------------------------------------------------------ same output
def test_in_order_hosts_identical_bytes(monkeypatch, tmp_path: Path) -> None:
    sources = [
        MergeSource(host(tmp_path, f"h{n}", n), host=f"h{n}", clock_offset_ns=n * 7)
        for n in range(4)
    ]
    sources.append(MergeSource(host(tmp_path, "twin", 1), host="twin"))  # ties with h1
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    assert fast.engine == "c"
    assert fast.packets == 1500 and fast.warnings == []
    same_report(fast, slow)
    same_bytes(tmp_path)


def test_many_chunks_and_a_block_larger_than_a_chunk(monkeypatch, tmp_path: Path) -> None:
    sources = [MergeSource(host(tmp_path, f"h{n}", n, count=6000, size=400)) for n in range(3)]
    giant = [(0, T0 + 5, b"G" * (CHUNK_BYTES + CHUNK_BYTES // 2), 1 << 21)]
    giant.append((0, T0 + 9_000_000, b"g" * 60, 60))
    sources.append(MergeSource(write_pcapng(tmp_path / "giant.pcapng", ["eth0"], giant)))
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    assert fast.engine == "c" and fast.packets == 18_002
    same_report(fast, slow)
    same_bytes(tmp_path)


def test_resolutions_offsets_and_clock_shift(monkeypatch, tmp_path: Path) -> None:
    def iface(name: str, tsresol: int, tsoffset: int = 0) -> list:
        return [
            text_option(IF_NAME, name),
            (IF_TSRESOL, bytes([tsresol])),
            (IF_TSOFFSET, struct.pack("<q", tsoffset)),
        ]

    interfaces = [
        iface("us", 6, 3),  # microseconds and a 3 s offset: C
        iface("bin", 0x80 | 10),  # 2^-10 s: Python
        iface("ps", 12),  # picoseconds: Python
        iface("ns", 9, -2),  # negative offset: C
    ]
    start = T0 // 10**9
    blocks = [  # in time order
        enhanced_packet(2, 10**18 + 7, b"p" * 32, 32),  # 64 bits of ps: 1970
        enhanced_packet(0, (start - 3) * 10**6 + 1, b"u" * 30, 30),
        enhanced_packet(0, (start - 3) * 10**6 + 9, b"u" * 34, 34),
        enhanced_packet(1, start * 1024 + 1, b"b" * 31, 31),  # + 976562 ns
        enhanced_packet(3, T0 + 2_000_000_000 + 3000, b"n" * 33, 33),
    ]
    mixed = hand_made(tmp_path / "mixed.pcapng", interfaces, blocks)
    sources = [MergeSource(mixed, clock_offset_ns=-5), MergeSource(host(tmp_path, "h", 0))]
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    assert fast.engine == "c" and fast.packets == 305
    same_report(fast, slow)
    same_bytes(tmp_path)


def test_clock_shift_below_the_epoch_and_correction_off(monkeypatch, tmp_path: Path) -> None:
    early = write_pcapng(
        tmp_path / "early.pcapng", ["eth0"], [(0, 10 + i, b"e", 1) for i in range(5)]
    )
    sources = [MergeSource(early, clock_offset_ns=12), MergeSource(host(tmp_path, "h", 0))]
    for correction in (True, False):
        fast, slow = merge_both(monkeypatch, tmp_path, sources, clock_correction=correction)
        assert fast.engine == "c"
        same_report(fast, slow)
        same_bytes(tmp_path)
    fast, _ = merge_both(monkeypatch, tmp_path, sources)
    assert [p.ts_ns for p in load(tmp_path / "c.pcapng").packets[:5]] == [0, 0, 0, 1, 2]


def test_classic_pcap_big_endian_and_sections(monkeypatch, tmp_path: Path) -> None:
    pcaps = [
        MergeSource(
            write_pcap(
                tmp_path / f"p{order == '>'}{nanos}.pcap",
                [(T0 + i * 2500 + 1, bytes([i]) * 61, 70) for i in range(200)],
                nanos=nanos,
                order=order,
            )
        )
        for nanos in (False, True)
        for order in "<>"
    ]
    be = tmp_path / "be.pcapng"
    be.write_bytes(big_endian_section("eth9", [(T0 + i * 999, b"B" * 61, 61) for i in range(50)]))
    # A little-endian section, then a big-endian one, then little-endian again.
    sections = tmp_path / "sections.pcapng"
    sections.write_bytes(
        host(tmp_path, "s0", 0, count=40).read_bytes()
        + big_endian_section("be1", [(T0 + 200_000 + i, b"b" * 9, 9) for i in range(5)])
        + write_pcapng(
            tmp_path / "s2.pcapng",
            ["eth2"],
            [(0, T0 + 300_000 + i * 10, b"s" * 60, 60) for i in range(30)],
        ).read_bytes()
    )
    sources = [*pcaps, MergeSource(be, host="b"), MergeSource(sections, host="s")]
    sources.append(MergeSource(host(tmp_path, "h", 2), host="h"))
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    assert fast.engine == "c"
    assert fast.packets == 4 * 200 + 50 + 40 + 5 + 30 + 300
    same_report(fast, slow, renumbered=True)
    # A later section's interfaces are described where each path reads them.
    same_content(tmp_path)


def test_simple_packet_and_unknown_blocks(monkeypatch, tmp_path: Path) -> None:
    spb_body = struct.pack("<I", 8) + b"spbdata!"
    spb = struct.pack("<II", 3, len(spb_body) + 12) + spb_body
    spb += struct.pack("<I", len(spb_body) + 12)
    nrb = struct.pack("<II", 4, 16) + b"\0\0\0\0" + struct.pack("<I", 16)
    blocks = [enhanced_packet(0, T0 + 4000, b"x" * 4, 4), nrb, spb, nrb]
    blocks += [enhanced_packet(0, T0 + 9000 + i, b"y" * 70, 70) for i in range(3)]
    odd = hand_made(tmp_path / "odd.pcapng", [[(IF_TSRESOL, b"\x09")]], blocks)
    sources = [MergeSource(odd), MergeSource(host(tmp_path, "h", 0, count=10))]
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    assert fast.engine == "c" and fast.packets == 15
    same_report(fast, slow)
    same_bytes(tmp_path)


def test_interface_described_mid_file(monkeypatch, tmp_path: Path) -> None:
    blocks = [enhanced_packet(0, T0 + i * 5000, b"a" * 60, 60) for i in range(50)]
    blocks.append(interface_description(options=[text_option(IF_NAME, "late0")]))
    blocks += [
        enhanced_packet(1, (T0 + 250_000 + i * 5000) // 1000, b"b" * 60, 60) for i in range(50)
    ]
    late = hand_made(tmp_path / "late.pcapng", [[text_option(IF_NAME, "first")]], blocks)
    # No if_tsresol: microseconds, the default; the first interface has the same default.
    fast, slow = merge_both(
        monkeypatch, tmp_path, [MergeSource(late), MergeSource(host(tmp_path, "h", 0))]
    )
    assert fast.engine == "c"
    same_report(fast, slow, renumbered=True)
    same_content(tmp_path)


# ------------------------------------------------------------------------ damage
def damaged_copies(tmp_path: Path) -> list[Path]:
    good = host(tmp_path, "good", 1, count=100).read_bytes()
    starts, pos = [], 0
    while pos < len(good):
        starts.append(pos)
        pos += struct.unpack_from("<I", good, pos + 4)[0]
    cases = {
        "truncated": good[: len(good) // 2 + 3],
        "cut_at_block": good[: starts[40]],
        "length": bytearray(good),
        "trailer": bytearray(good),
        "cap_len": bytearray(good),
        "undescribed": bytearray(good),
        "overflow": bytearray(good),
    }
    struct.pack_into("<I", cases["length"], starts[30] + 4, 0xFFFF_FFF0)
    struct.pack_into("<I", cases["trailer"], starts[31] - 4, 12345)
    struct.pack_into("<I", cases["cap_len"], starts[32] + 20, 4000)
    struct.pack_into("<I", cases["undescribed"], starts[33] + 8, 7)
    # With the clock 5 ns behind (see below): beyond 64 bits once corrected.
    struct.pack_into("<II", cases["overflow"], starts[34] + 12, 0xFFFF_FFFF, 0xFFFF_FFFB)
    paths = []
    for name, data in cases.items():
        path = tmp_path / f"{name}.pcapng"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def test_damaged_inputs_same_packets_and_offsets(monkeypatch, tmp_path: Path) -> None:
    for path in damaged_copies(tmp_path):
        sources = [MergeSource(host(tmp_path, "h", 0, count=100))]
        sources.append(MergeSource(path, clock_offset_ns=-5))
        fast, slow = merge_both(monkeypatch, tmp_path, sources)
        assert fast.engine == "c"
        same_report(fast, slow)
        same_bytes(tmp_path)
        if path.stem != "cut_at_block":
            (damage,) = [s.damage for s in fast.sources if s.damage]
            assert damage.path == str(path) and damage.offset > 0


def test_garbage_and_empty_inputs(monkeypatch, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcapng"
    garbage.write_bytes(b"GET / HTTP/1.1\r\n" * 10)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    sources = [MergeSource(garbage), MergeSource(host(tmp_path, "h", 0)), MergeSource(empty)]
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    same_report(fast, slow)
    same_bytes(tmp_path)


def test_mutated_files_never_crash_and_agree(monkeypatch, tmp_path: Path) -> None:
    """Random byte, word and length mutations: both paths see the same file."""
    rng = random.Random(20240611)
    good = host(tmp_path, "good", 1, count=60).read_bytes()
    other = MergeSource(host(tmp_path, "other", 0, count=60), host="o")
    for trial in range(150):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) - 4)
            value = rng.choice([0, 1, 3, 5, 6, 0xFFFFFFFF, 0x7FFFFFFF, rng.getrandbits(32)])
            struct.pack_into("<I", data, at & ~3 if rng.random() < 0.8 else at, value)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        path = tmp_path / f"m{trial}.pcapng"
        path.write_bytes(bytes(data))
        try:
            fast, slow = merge_both(monkeypatch, tmp_path, [other, MergeSource(path, host="m")])
        except merge.MergeError:
            continue
        if (tmp_path / "c.pcapng").read_bytes() != (tmp_path / "py.pcapng").read_bytes():
            # A mutation made an interface description: it may be numbered differently.
            same_report(fast, slow, renumbered=True)
            same_content(tmp_path)
        else:
            same_report(fast, slow)
        path.unlink()


# -------------------------------------------------------------------- fallbacks
def test_out_of_order_input_falls_back_to_python(monkeypatch, tmp_path: Path) -> None:
    packets = [(0, T0 + ts * 1000, bytes([ts]) * 60, 60) for ts in (1, 3, 2, 5, 4, 6, 0)]
    shuffled = write_pcapng(tmp_path / "shuffled.pcapng", ["eth0"], packets)
    sources = [MergeSource(host(tmp_path, "h", 0, count=5)), MergeSource(shuffled)]
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    assert fast.engine == "python"
    assert any("shuffled.pcapng: packets out of time order" in w for w in fast.warnings)
    same_report(fast, slow)
    same_bytes(tmp_path)


def test_disorder_late_in_a_big_file_falls_back(monkeypatch, tmp_path: Path) -> None:
    packets = [(0, T0 + i * 1000, b"o" * 100, 100) for i in range(12_000)]
    packets[11_000] = (0, T0 + 10_990 * 1000 + 1, b"x" * 100, 100)  # two chunks in
    late = write_pcapng(tmp_path / "late.pcapng", ["eth0"], packets)
    sources = [MergeSource(host(tmp_path, "h", 0, count=3000)), MergeSource(late)]
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    assert fast.engine == "python" and fast.packets == 15_000
    same_report(fast, slow)
    same_bytes(tmp_path)


def test_switch_off_and_missing_extension(monkeypatch, tmp_path: Path) -> None:
    sources = [MergeSource(host(tmp_path, "h", 0, count=5))]
    monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1")
    assert merge_captures(sources, tmp_path / "a.pcapng").engine == "python"
    monkeypatch.delenv("XDPCAP_NO_FASTMERGE")
    monkeypatch.setattr(merge, "_fastmerge", None)
    assert merge_captures(sources, tmp_path / "b.pcapng").engine == "python"


# ------------------------------------------------------------- the module itself
def test_merger_api_checks_its_arguments() -> None:
    core = fastmerge.Merger(2)
    with pytest.raises(ValueError, match="outside the buffer"):
        core.set_input(0, b"abc", 4, None)
    with pytest.raises(IndexError):
        core.set_input(2, None, 0, None)
    with pytest.raises(TypeError):
        core.set_input(0, b"", 0, [(1, 2)])
    with pytest.raises(ValueError):
        fastmerge.Merger(-1)
    # Values that do not fit 64 bits leave the interface to Python instead of failing.
    block = enhanced_packet(0, 5, b"z" * 8, 8)
    core.set_input(0, block, 0, [(0, 1, 1 << 70)])
    assert core.run()[2:] == (fastmerge.NEED, 0)
    core.set_input(0, block, 0, [(0, 1, -3)])
    core.set_input(1, None, 0, None)
    out, packets, status, who = core.run()
    assert (packets, status, who) == (1, fastmerge.NEED, 0)  # for the next chunk
    assert struct.unpack_from("<III", out, 8) == (0, 0, 2)
    assert core.state(0) == (len(block), 2, 1)
    core.set_input(0, None, 0, None)
    assert core.run() == (b"", 0, fastmerge.DONE, -1)


def test_merger_orders_ties_by_input_and_flushes_by_size() -> None:
    blocks = [
        b"".join(enhanced_packet(0, ts, bytes([n]) * 40, 40) for ts in (1, 2, 2, 9))
        for n in range(5)
    ]
    core = fastmerge.Merger(5, out_bytes=200)
    for n, data in enumerate(blocks):
        core.set_input(n, data, 0, [(n, 1, 0)])
    out, statuses = b"", []
    while True:
        chunk, _, status, who = core.run()
        out += chunk
        statuses.append(status)
        if status == fastmerge.NEED:
            core.set_input(who, None, 0, None)  # its chunk is used up: the end
        elif status == fastmerge.DONE:
            break
    assert fastmerge.FULL in statuses
    order, pos = [], 0
    while pos < len(out):
        _, _, if_id, _, ts_lo = struct.unpack_from("<IIIII", out, pos)
        order.append((ts_lo, if_id, out[pos + 28]))
        pos += struct.unpack_from("<I", out, pos + 4)[0]
    assert order == sorted((ts_lo, if_id, if_id) for if_id in range(5) for ts_lo in (1, 2, 2, 9))


def test_c_source_compiles_without_warnings(tmp_path: Path) -> None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    include = sysconfig.get_paths()["include"]
    result = subprocess.run(
        [
            compiler,
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fPIC",
            "-shared",
            f"-I{include}",
            str(SOURCE),
            "-o",
            str(tmp_path / "fm.so"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_drifting_clocks_stay_in_the_c_loop(monkeypatch, tmp_path: Path) -> None:
    """A drift taken off in C (128-bit, rounding down as Python's //) gives the Python
    path's file; fast and slow rates, before and after the epoch, and a clock shifted
    below the epoch (left to Python, which clamps it)."""
    sources = [
        MergeSource(
            host(tmp_path, f"d{n}", n),
            host=f"d{n}",
            clock_offset_ns=n * 1_000 - 3_000,
            clock_drift_ppb=drift,
            clock_epoch_ns=T0 + 1_234_567,
        )
        for n, drift in enumerate((-73_001, 12_345, 999_999, -1))
    ]
    early = write_pcapng(
        tmp_path / "early.pcapng", ["eth0"], [(0, 10 + i, b"e", 1) for i in range(5)]
    )
    sources.append(MergeSource(early, clock_offset_ns=12, clock_drift_ppb=50_000))
    fast, slow = merge_both(monkeypatch, tmp_path, sources)
    assert fast.engine == "c"
    same_report(fast, slow)
    same_bytes(tmp_path)
