"""Packet ids from the pass to the merge (merge/packet_ids.py): marks written per host in
file order, bounded while the pass runs, landing on the packets they name on both merge
paths, and identical from the C and the Python join."""

from __future__ import annotations

from pathlib import Path

import pytest
from xdpcap.orchestrator.follow import join as join_module
from xdpcap.orchestrator.follow.join import join_captures
from xdpcap.orchestrator.follow.summaries import MATCH_WINDOW_NS, MAX_COPIES
from xdpcap.orchestrator.merge import captures as captures_module
from xdpcap.orchestrator.merge.captures import MergeSource, merge_captures
from xdpcap.orchestrator.merge.packet_ids import RECORD, PacketMarks

from .test_join import _mixed_traffic, _steady_pings
from .test_journeys import _ids_match_the_packets

needs_c = pytest.mark.skipif(join_module._fastmerge is None, reason="the C extension is not built")


def _marks(marks: PacketMarks, host: int) -> list[tuple[int, int]]:
    return list(RECORD.iter_unpack(Path(marks.paths[host]).read_bytes()))


@needs_c
def test_the_c_join_holds_marks_only_for_its_horizon(tmp_path: Path) -> None:
    """300 s of pings, 200 a second: 60,000 packets per host, every one seen on both. The
    C join writes each host's marks as it goes, holding a packet's slot only for the
    packets of the last MAX_COPIES + 1 windows (+ the checkpoints' eighth of a window and
    one flush's worth): not the capture's."""
    paths = _steady_pings(tmp_path, seconds=300, per_second=200)
    with PacketMarks(paths, tmp_path) as marks:
        result = join_captures(paths, [0, 0], engine="c", marks=marks)
        per_second = 200
        horizon_s = (MAX_COPIES + 1) * MATCH_WINDOW_NS / 1e9 + MATCH_WINDOW_NS / 8e9
        assert result.packets == [60_000, 60_000]
        assert marks.packets == 60_000 and marks.late == 0
        assert marks.held_high_water <= horizon_s * per_second + 2 * 4096
        assert marks.held_high_water < 60_000 // 2
        for host in (0, 1):
            records = _marks(marks, host)
            assert [ordinal for ordinal, _ in records] == list(range(60_000))
        assert _marks(marks, 0) == _marks(marks, 1)  # the same packet, the same id


@needs_c
def test_c_and_python_joins_write_the_same_marks(tmp_path: Path) -> None:
    paths = _mixed_traffic(tmp_path)
    written = {}
    for engine in ("c", "python"):
        with PacketMarks(paths, tmp_path) as marks:
            join_captures(paths, [0, 3_000_000, -7_000_000, 12_000_000], engine=engine, marks=marks)
            written[engine] = ([_marks(marks, h) for h in range(4)], marks.packets)
    assert written["c"] == written["python"]
    assert written["c"][1] > 1000


@pytest.mark.parametrize("fast", [True, False])
def test_ids_land_on_their_packets_through_disorder(tmp_path: Path, monkeypatch, fast) -> None:
    """_mixed_traffic's files are slightly out of time order: the C merge meets it and
    starts again on the Python path, which sorts within a window; the marks, read in file
    order before any sorting, still name the packets they were written for."""
    if fast and captures_module._fastmerge is None:
        pytest.skip("the C extension is not built")
    monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "0" if fast else "1")
    paths = _mixed_traffic(tmp_path)
    priors = [0, 3_000_000, -7_000_000, 12_000_000]
    with PacketMarks(paths, tmp_path) as marks:
        join_captures(paths, priors, marks=marks)
        sources = [MergeSource(p, clock_offset_ns=s) for p, s in zip(paths, priors)]
        report = merge_captures(sources, tmp_path / "out.pcapng", packet_marks=marks)
        sightings = sum(len(_marks(marks, h)) for h in range(4))
    assert report.sources[0].out_of_order or any(s.out_of_order for s in report.sources)
    assert _ids_match_the_packets(tmp_path / "out.pcapng") == sightings > 2000
    assert not Path(marks.folder).exists()
