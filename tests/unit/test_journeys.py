"""Journeys (orchestrator/merge/journeys.py): packet ids in the merged file, and per pair
what left, arrived, was lost, duplicated or reordered, and how long it took — on
synthetic captures with every number known (scenarios_clock.journeys_mesh)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from xdpcap.agent.filter import spec
from xdpcap.orchestrator.clock.observe import identify, key_id
from xdpcap.orchestrator.merge import captures as captures_module
from xdpcap.orchestrator.merge.captures import MergeSource, merge_captures
from xdpcap.orchestrator.merge.follow import follow
from xdpcap.orchestrator.merge.journeys import HostView, parse_address
from xdpcap.orchestrator.merge.reader import CaptureReader

from .scenarios_clock import (
    JOURNEY_C_WINDOW,
    JOURNEY_SKEW,
    T0,
    US,
    address,
    capture,
    journeys_mesh,
    udp,
)

NAMES = ["a", "b", "c"]


def _hosts(declared: bool = True) -> list[HostView]:
    if not declared:
        return [HostView(name) for name in NAMES]
    return [
        HostView("a", {address(0)}),
        HostView("b", {address(1)}),
        HostView(
            "c",
            {address(2)},
            filters=dict(spec.compile_filter("udp port 9999").programs),
            captures_inbound=True,
            window_ns=JOURNEY_C_WINDOW,
        ),
    ]


def _pairs(result: dict) -> dict[tuple[str, str], dict]:
    return {(p["sender"], p["receiver"]): p for p in result["pairs"]}


@pytest.fixture(params=["c", "python"])
def engine(request, monkeypatch) -> str:
    if request.param == "python":
        monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1")
    elif captures_module._fastmerge is None:
        pytest.skip("the C extension is not built")
    return request.param


def test_counts_per_pair_are_exact(tmp_path: Path, engine: str) -> None:
    paths = journeys_mesh(tmp_path)
    # The true offsets as the clocks and no solve: every delay is known to the ns.
    _, journeys = follow(paths, NAMES, JOURNEY_SKEW, _hosts(), clock_correction=False)
    pairs = _pairs(journeys.result(None))
    assert set(pairs) == {("a", "b"), ("b", "a"), ("a", "c")}
    ab = pairs[("a", "b")]
    assert (ab["left"], ab["arrived"], ab["lost"]) == (10, 8, 2)
    assert (ab["duplicated"], ab["reordered"]) == (1, 1)
    # Arrived: 100, 110, 120, 140, 150, 160, 180 µs and 15 ms (#8).
    delays = sorted([(100 + 10 * i) * US for i in (0, 1, 2, 4, 5, 6, 9)] + [15_000 * US])
    assert ab["delay_ns"] == {
        "p50": delays[3],  # nearest rank: the 4th of 8
        "p90": delays[7],
        "p99": delays[7],
        "max": 15_000 * US,
    }
    assert [e["time_ns"] for e in ab["lost_examples"]] == [
        T0 + 30_000 * US,
        T0 + 70_000 * US,
    ]
    assert ab["lost_examples"][0] == {
        "time_ns": T0 + 30_000 * US,
        "src": "10.0.0.1",
        "dst": "10.0.0.2",
        "protocol": "udp",
        "sport": 4000,
        "dport": 5000,
    }
    assert sum(ab["timeline"]["lost"]) == 2
    ba = pairs[("b", "a")]
    assert (ba["left"], ba["arrived"], ba["lost"], ba["duplicated"], ba["reordered"]) == (
        10,
        10,
        0,
        0,
        0,
    )
    assert ba["delay_ns"] == {"p50": 50 * US, "p90": 50 * US, "p99": 50 * US, "max": 50 * US}
    ac = pairs[("a", "c")]
    # Port 7777: c's filter would not have taken them; after c's window: not seen.
    assert (ac["left"], ac["arrived"], ac["lost"]) == (5, 3, 2)
    assert ac["delay_ns"]["max"] == 200 * US


def test_the_solved_clocks_correct_the_delays(tmp_path: Path) -> None:
    paths = journeys_mesh(tmp_path)
    alignment, journeys = follow(paths, NAMES, [0, 0, 0], _hosts(), clock_correction=True)
    assert alignment is not None
    pairs = _pairs(journeys.result(alignment))
    # Counts do not depend on the clocks; delays are the true ones less the solve's error.
    assert [(p["left"], p["arrived"], p["lost"]) for p in pairs.values()] == [
        (10, 8, 2),
        (5, 3, 2),
        (10, 10, 0),
    ]
    error_b = (alignment.shifts_ns[1] - alignment.shifts_ns[0]) - JOURNEY_SKEW[1]
    assert pairs[("b", "a")]["delay_ns"]["max"] == 50 * US + error_b
    assert pairs[("a", "b")]["delay_ns"]["max"] == 15_000 * US - error_b
    assert abs(error_b) <= 100 * US  # within what the traffic bounds


def test_addresses_are_learned_from_the_traffic(tmp_path: Path) -> None:
    """Plain files: no declared addresses, no filter; c captured inbound only, so the
    port-7777 packets count as lost too (nothing says c would not have seen them)."""
    paths = journeys_mesh(tmp_path)
    _, journeys = follow(paths, NAMES, JOURNEY_SKEW, _hosts(False), clock_correction=False)
    result = journeys.result(None)
    assert result["addresses"] == {"a": ["10.0.0.1"], "b": ["10.0.0.2"], "c": ["10.0.0.3"]}
    pairs = _pairs(result)
    assert (pairs[("a", "b")]["left"], pairs[("a", "b")]["lost"]) == (10, 2)
    # c's window is its first to last packet (1.2 ms to 31.2 ms after T0): #4 (41 ms)
    # and the two late ones fall outside it; #1 and the three to port 7777 are lost.
    assert (pairs[("a", "c")]["left"], pairs[("a", "c")]["lost"]) == (7, 4)


def _packet_ids(path: Path) -> list[int | None]:
    ids = []
    reader = CaptureReader(path)
    for batch in reader.batches():
        for block in batch.blocks:
            block = bytes(block)
            cap = struct.unpack_from("<I", block, 20)[0]
            at, found = 28 + (cap + 3 & ~3), None
            while at + 4 <= len(block) - 4:
                code, length = struct.unpack_from("<HH", block, at)
                if code == 0:
                    break
                if code == 5:
                    found = struct.unpack_from("<Q", block, at + 4)[0]
                at += 4 + (length + 3 & ~3)
            ids.append(found)
    return ids


def test_the_merge_writes_one_packet_id_per_packet_seen_twice(tmp_path: Path, engine: str) -> None:
    paths = journeys_mesh(tmp_path)
    _, journeys = follow(paths, NAMES, JOURNEY_SKEW, _hosts(), clock_correction=False)
    sources = [
        MergeSource(p, host=n, clock_offset_ns=s) for p, n, s in zip(paths, NAMES, JOURNEY_SKEW)
    ]
    out = tmp_path / "merged.pcapng"
    report = merge_captures(sources, out, packet_ids=journeys.packet_ids())
    assert report.engine == engine
    ids = _packet_ids(out)
    seen = [i for i in ids if i is not None]
    # a→b: 8 arrived (#5 three times in all), b→a: 10, a→c: 3; each twice at least.
    assert len(set(seen)) == 8 + 10 + 3 == journeys.result(None)["packet_ids"]
    assert len(seen) == 2 * 21 + 1
    first = udp(4000, 5000, 100, address(0), address(1))
    assert ids[0] == key_id(identify(1, first).packet)  # a's first packet, then b's copy
    assert ids[1] == ids[0]


def test_both_merge_paths_write_the_same_bytes(tmp_path: Path, monkeypatch) -> None:
    if captures_module._fastmerge is None:
        pytest.skip("the C extension is not built")
    paths = journeys_mesh(tmp_path)
    _, journeys = follow(paths, NAMES, JOURNEY_SKEW, _hosts(), clock_correction=False)
    sources = [MergeSource(p, host=n) for p, n in zip(paths, NAMES)]
    merge_captures(sources, tmp_path / "out-c.pcapng", packet_ids=journeys.packet_ids())
    monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1")
    merge_captures(sources, tmp_path / "out-py.pcapng", packet_ids=journeys.packet_ids())
    assert (tmp_path / "out-c.pcapng").read_bytes() == (tmp_path / "out-py.pcapng").read_bytes()


def test_residence_time_of_a_forwarding_host(tmp_path: Path) -> None:
    """r forwards a → b between its two interfaces 30 µs after each packet arrives."""
    a, b = address(0), address(1)
    on_a, on_b, on_r = [], [], []
    for i in range(4):
        t = T0 + i * 1_000 * US
        frame = udp(1, 2, 700 + i, a, b)
        on_a.append((t, frame, 2))
        on_r.append((t + 10 * US, 0, frame, 1))
        on_r.append((t + (40 + i) * US, 1, frame, 2))
        on_b.append((t + (60 + i) * US, frame, 1))
    r_path = tmp_path / "r.pcapng"
    with r_path.open("wb") as f:
        from xdpcap.agent.pcapng import PcapngWriter

        writer = PcapngWriter(f)
        writer.add_interface("eth0", snaplen=65535)
        writer.add_interface("eth1", snaplen=65535)
        for ts, iface, frame, direction in sorted(on_r, key=lambda p: p[0]):
            writer.write_packet(iface, ts, frame, len(frame), flags=direction)
        writer.flush()
    paths = [capture(tmp_path / "a.pcapng", on_a), r_path, capture(tmp_path / "b.pcapng", on_b)]
    hosts = [HostView("a", {a}), HostView("r"), HostView("b", {b})]
    _, journeys = follow(paths, ["a", "r", "b"], [0, 0, 0], hosts, clock_correction=False)
    result = journeys.result(None)
    assert result["residence"] == [
        {
            "host": "r",
            "packets": 4,
            "delay_ns": {"p50": 31 * US, "p90": 33 * US, "p99": 33 * US, "max": 33 * US},
        }
    ]
    pairs = _pairs(result)
    assert (pairs[("a", "b")]["arrived"], pairs[("a", "b")]["lost"]) == (4, 0)
    assert pairs[("a", "b")]["delay_ns"]["max"] == 63 * US
    assert pairs[("r", "b")]["delay_ns"]["max"] == 20 * US


def test_parse_address() -> None:
    assert parse_address("10.0.0.1/24") == bytes([10, 0, 0, 1])
    assert len(parse_address("fd00::1")) == 16
