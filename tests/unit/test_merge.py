"""`xdpcap merge`: order, interfaces, statistics, clock correction, damaged inputs.

Outputs are checked with our reader, the independent python-pcapng, and Wireshark's
capinfos/tshark/mergecap when they are installed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from xdpcap.agent import __version__
from xdpcap.orchestrator.cli import merge as merge_cli
from xdpcap.orchestrator.errors import MergeError
from xdpcap.orchestrator.merge import captures as merge
from xdpcap.orchestrator.merge.captures import MergeSource, merge_captures
from xdpcap.orchestrator.merge.reader import load

from .test_pcapng_reader import T0, big_endian_section, write_pcap, write_pcapng

needs_wireshark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("capinfos", "tshark", "mergecap")),
    reason="needs Wireshark's capinfos, tshark and mergecap",
)


@pytest.fixture(autouse=True, params=["c", "python"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both merge paths (tests/unit/test_fastmerge.py compares them)."""
    if request.param == "python":
        monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1")
    elif merge._fastmerge is None:
        pytest.skip("the C extension is not built")
    else:
        monkeypatch.delenv("XDPCAP_NO_FASTMERGE", raising=False)
    return request.param


def host_file(tmp_path: Path, name: str, index: int, count: int = 200) -> Path:
    """A host's capture: interleaved with the others' by `index`, every 5th frame cut short."""
    packets = []
    for i in range(count):
        size = 60 + (i * 7 + index) % 40
        orig = size + 100 if i % 5 == 0 else size
        packets.append(
            (0, T0 + i * 3000 + index * 1000, bytes([index, i & 0xFF]) * (size // 2), orig)
        )
    stats = [(0, T0 + count * 3000, count + 10, 10)]
    return write_pcapng(tmp_path / f"{name}.pcapng", ["eth0"], packets, stats)


def three_hosts(tmp_path: Path) -> list[MergeSource]:
    return [
        MergeSource(host_file(tmp_path, f"web{n}", n), host=f"web{n}", address=f"10.0.0.{n}")
        for n in range(3)
    ]


FIELDS = ("-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len")


def tshark_fields(path: Path) -> list[str]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", *FIELDS],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def test_merge_counts_names_statistics(tmp_path: Path, engine: str) -> None:
    sources = three_hosts(tmp_path)
    report = merge_captures(sources, tmp_path / "out.pcapng")
    assert report.engine == engine
    assert report.packets == 600
    assert [s.packets for s in report.sources] == [200, 200, 200]
    assert report.interfaces == ["web0:eth0", "web1:eth0", "web2:eth0"]
    assert report.warnings == []
    cap = load(tmp_path / "out.pcapng")
    assert cap.sections[0].userappl == f"xdpcap {__version__}"
    (comment,) = cap.sections[0].comments
    assert "web1" in comment and "10.0.0.2" in comment and "clock offset" in comment
    assert [i.tsresol for i in cap.interfaces] == [9, 9, 9]
    description = cap.interfaces[1].description
    assert "web1" in description and "10.0.0.1" in description
    assert "XDP ingress, 1-in-1" in description and "clock offset +0.000000 ms" in description
    stamps = [p.ts_ns for p in cap.packets]
    assert stamps == sorted(stamps)
    assert [(s.if_id, s.ifrecv, s.ifdrop) for s in cap.statistics] == [
        (0, 210, 10),
        (1, 210, 10),
        (2, 210, 10),
    ]
    # Every packet unchanged but for its interface id: bytes, lengths, ns time, options.
    want = sorted(
        (p.ts_ns, n, p.data, p.orig_len, p.flags, p.queue)
        for n, source in enumerate(sources)
        for p in load(source.path).packets
    )
    got = [(p.ts_ns, p.if_id, p.data, p.orig_len, p.flags, p.queue) for p in cap.packets]
    assert got == want
    assert any(p.cap_len < p.orig_len for p in cap.packets)


def test_python_pcapng_reads_the_output(tmp_path: Path) -> None:
    pcapng = pytest.importorskip("pcapng")
    merge_captures(three_hosts(tmp_path), tmp_path / "out.pcapng")
    names, packets, stats = [], 0, []
    with open(tmp_path / "out.pcapng", "rb") as stream:
        for block in pcapng.FileScanner(stream):
            if isinstance(block, pcapng.blocks.InterfaceDescription):
                names.append(block.options["if_name"])
            elif isinstance(block, pcapng.blocks.EnhancedPacket):
                packets += 1
            elif isinstance(block, pcapng.blocks.InterfaceStatistics):
                stats.append((block.interface_id, block.options["isb_ifrecv"]))
    assert names == ["web0:eth0", "web1:eth0", "web2:eth0"]
    assert packets == 600
    assert stats == [(0, 210), (1, 210), (2, 210)]


@needs_wireshark
def test_same_packets_in_the_same_order_as_mergecap(tmp_path: Path) -> None:
    sources = three_hosts(tmp_path)
    # Equal timestamps across inputs: ties must go the way mergecap breaks them.
    sources.append(MergeSource(host_file(tmp_path, "twin", 1), host="twin"))
    merge_captures(sources, tmp_path / "ours.pcapng")
    theirs = tmp_path / "theirs.pcapng"
    subprocess.run(
        ["mergecap", "-w", str(theirs)] + [str(s.path) for s in sources],
        check=True,
        capture_output=True,
    )
    assert tshark_fields(tmp_path / "ours.pcapng") == tshark_fields(theirs)
    info = subprocess.run(
        ["capinfos", "-c", "-o", str(tmp_path / "ours.pcapng")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Strict time order:   True" in info
    assert "800" in info


def test_clock_correction_on_and_off(tmp_path: Path) -> None:
    path = host_file(tmp_path, "a", 0, count=10)
    source = MergeSource(path, host="a", clock_offset_ns=2_500, clock_error_ns=40)
    original = [p.ts_ns for p in load(path).packets]
    merge_captures([source], tmp_path / "on.pcapng")
    on = load(tmp_path / "on.pcapng")
    assert [p.ts_ns for p in on.packets] == [ts - 2_500 for ts in original]
    assert on.statistics[0].ts_ns == T0 + 10 * 3000 - 2_500
    assert "clock offset +0.002500 ms ± 0.000040 ms" in on.interfaces[0].description
    merge_captures([source], tmp_path / "off.pcapng", clock_correction=False)
    off = load(tmp_path / "off.pcapng")
    assert [p.ts_ns for p in off.packets] == original
    assert "clock offset +0.002500 ms" in off.interfaces[0].description


def test_clock_correction_reorders_across_hosts(tmp_path: Path) -> None:
    early = write_pcapng(tmp_path / "early.pcapng", ["eth0"], [(0, T0 + 100, b"e" * 60, 60)])
    late = write_pcapng(tmp_path / "late.pcapng", ["eth0"], [(0, T0 + 50, b"l" * 60, 60)])
    sources = [MergeSource(early, host="e"), MergeSource(late, host="l", clock_offset_ns=200)]
    merge_captures(sources, tmp_path / "out.pcapng")
    packets = load(tmp_path / "out.pcapng").packets
    assert [(p.if_id, p.ts_ns) for p in packets] == [(1, T0 - 150), (0, T0 + 100)]


def test_truncated_input_keeps_blocks_before_the_damage(tmp_path: Path) -> None:
    sources = three_hosts(tmp_path)
    data = Path(sources[1].path).read_bytes()
    Path(sources[1].path).write_bytes(data[: len(data) // 2 + 3])  # mid-block
    report = merge_captures(sources, tmp_path / "out.pcapng")
    damaged = report.sources[1]
    assert damaged.damage is not None and 0 < damaged.packets < 200
    assert damaged.damage.offset <= len(data) // 2 + 3
    (warning,) = report.warnings
    assert "web1.pcapng" in warning and "byte offset" in warning
    assert report.packets == 400 + damaged.packets
    assert len(load(tmp_path / "out.pcapng").packets) == report.packets


def test_garbage_and_empty_inputs_are_skipped(tmp_path: Path) -> None:
    good = host_file(tmp_path, "good", 0, count=20)
    garbage = tmp_path / "garbage.pcapng"
    garbage.write_bytes(b"GET / HTTP/1.1\r\n" * 10)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    sources = [MergeSource(garbage), MergeSource(good, host="g"), MergeSource(empty)]
    report = merge_captures(sources, tmp_path / "out.pcapng")
    assert report.packets == 20
    assert [s.usable for s in report.sources] == [False, True, False]
    assert len(report.warnings) == 2
    assert "garbage.pcapng: not a pcap or pcapng file" in report.warnings[0]
    assert "empty.pcap: empty file" in report.warnings[1]
    assert report.interfaces == ["g:eth0"]


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcapng"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(MergeError, match=r"no usable input.*garbage\.pcapng"):
        merge_captures([MergeSource(garbage)], tmp_path / "out.pcapng")
    assert not (tmp_path / "out.pcapng").exists()
    with pytest.raises(MergeError):
        merge_captures([], tmp_path / "out.pcapng")


def test_out_of_order_input_is_sorted_with_a_warning(tmp_path: Path) -> None:
    packets = [(0, T0 + ts * 1000, bytes([ts]) * 60, 60) for ts in (1, 3, 2, 5, 4, 6, 0)]
    shuffled = write_pcapng(tmp_path / "shuffled.pcapng", ["eth0"], packets)
    other = host_file(tmp_path, "other", 0, count=5)
    report = merge_captures([MergeSource(shuffled), MergeSource(other)], tmp_path / "out.pcapng")
    assert report.engine == "python"  # the C path hands out-of-order inputs over
    assert any("shuffled.pcapng: packets out of time order" in w for w in report.warnings)
    stamps = [p.ts_ns for p in load(tmp_path / "out.pcapng").packets]
    assert len(stamps) == 12
    assert stamps == sorted(stamps)


def test_classic_pcap_inputs_named_by_stem(tmp_path: Path) -> None:
    micro = write_pcap(tmp_path / "router.pcap", [(T0 + 10_000, b"u" * 60, 60)], nanos=False)
    nano = write_pcap(tmp_path / "tap.pcap", [(T0 + 5_001, b"n" * 60, 80)], nanos=True)
    report = merge_captures(
        [MergeSource(micro), MergeSource(nano, name="mirror")], tmp_path / "out.pcapng"
    )
    assert report.interfaces == ["router", "mirror"]
    cap = load(tmp_path / "out.pcapng")
    assert [(p.if_id, p.ts_ns, p.orig_len) for p in cap.packets] == [
        (1, T0 + 5_001, 80),
        (0, T0 // 1000 * 1000 + 10_000, 60),
    ]


def test_big_endian_input(tmp_path: Path) -> None:
    be = tmp_path / "be.pcapng"
    be.write_bytes(big_endian_section("eth9", [(T0 + 1, b"B" * 61, 61), (T0 + 7, b"C" * 5, 9)]))
    le = write_pcapng(tmp_path / "le.pcapng", ["eth0"], [(0, T0 + 3, b"L" * 60, 60)])
    report = merge_captures(
        [MergeSource(be, host="h1"), MergeSource(le, host="h2")], tmp_path / "o"
    )
    assert report.interfaces == ["h1:eth9", "h2:eth0"]
    packets = load(tmp_path / "o").packets
    assert [(p.if_id, p.ts_ns, p.data[:1], p.flags, p.queue) for p in packets] == [
        (0, T0 + 1, b"B", 2, 7),
        (1, T0 + 3, b"L", 1, 3),
        (0, T0 + 7, b"C", 2, 7),
    ]


@needs_wireshark
def test_big_endian_input_made_by_editcap_is_readable(tmp_path: Path) -> None:
    be = tmp_path / "be.pcapng"
    be.write_bytes(big_endian_section("eth9", [(T0 + i, b"B" * 61, 61) for i in range(5)]))
    merge_captures([MergeSource(be, host="h")], tmp_path / "o.pcapng")
    assert len(tshark_fields(tmp_path / "o.pcapng")) == 5


def test_cli_exit_codes_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write_pcap(tmp_path / "good.pcap", [(T0, b"g" * 60, 60)], nanos=True)
    garbage = tmp_path / "junk.pcap"
    garbage.write_bytes(b"junk" * 10)
    out = tmp_path / "out.pcapng"
    argv = [str(good), str(garbage), "-w", str(out), "--name", f"{good}=tap0"]
    assert merge_cli.main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert any("warning: " in line and "junk.pcap" in line for line in err)
    assert load(out).interfaces[0].name == "tap0"
    assert merge_cli.main([str(garbage), "-w", str(out)]) == 1
    assert "no usable input" in capsys.readouterr().err
    assert merge_cli.main([str(good), "-w", str(out), "--name", "nonsense"]) == 2


def test_big_batches_flat_memory_many_chunks(tmp_path: Path) -> None:
    """Inputs spanning many chunks merge completely and in order."""
    sources = [
        MergeSource(host_file(tmp_path, f"h{n}", n, count=20_000), host=f"h{n}") for n in range(3)
    ]
    report = merge_captures(sources, tmp_path / "out.pcapng")
    assert report.packets == 60_000
    stamps = [p.ts_ns for p in load(tmp_path / "out.pcapng").packets]
    assert stamps == sorted(stamps)


def test_block_rewrite_touches_only_id_and_time(tmp_path: Path) -> None:
    path = write_pcapng(tmp_path / "one.pcapng", ["eth0"], [(0, T0, b"z" * 61, 99)])
    merge_captures([MergeSource(path, clock_offset_ns=5)], tmp_path / "o.pcapng")
    src = path.read_bytes()
    out = (tmp_path / "o.pcapng").read_bytes()
    i, j = src.index(b"z" * 61) - 28, out.index(b"z" * 61) - 28
    length = struct.unpack_from("<I", src, i + 4)[0]
    assert src[i : i + 8] == out[j : j + 8]
    assert struct.unpack_from("<III", out, j + 8) == (0, (T0 - 5) >> 32, (T0 - 5) & 0xFFFFFFFF)
    assert src[i + 20 : i + length] == out[j + 20 : j + length]
