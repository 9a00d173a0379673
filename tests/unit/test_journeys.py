"""Journeys (orchestrator/follow/journeys.py): packet ids in the merged file, and per pair
what left, arrived, was lost, duplicated or reordered, and how long it took — on
synthetic captures with every number known (scenarios_clock.journeys_mesh)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from xdpcap.agent.filter import spec
from xdpcap.orchestrator.follow.journeys import HostView, parse_address
from xdpcap.orchestrator.merge import captures as captures_module
from xdpcap.orchestrator.merge.blocks import decode_packet
from xdpcap.orchestrator.merge.captures import MergeSource, merge_captures
from xdpcap.orchestrator.merge.identity import identify, key_id
from xdpcap.orchestrator.merge.reader import CaptureReader
from xdpcap.orchestrator.run.follow import follow

from .scenarios_clock import (
    JOURNEY_C_WINDOW,
    JOURNEY_SKEW,
    T0,
    US,
    address,
    capture,
    echo,
    eth,
    ipv4,
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


def _ids_match_the_packets(path: Path) -> int:
    """Every epb_packetid in `path` is its packet's own id (the marks landed on the packets
    they were meant for); how many there are."""
    stamped = 0
    for batch in CaptureReader(path).batches():
        for block in batch.blocks:
            packet = decode_packet(block, 0)
            option = [value for code, value in packet.options if code == 5]
            if option:
                assert int.from_bytes(option[0], "little") == key_id(
                    identify(1, packet.data).packet
                )
                stamped += 1
    return stamped


def test_the_merge_writes_one_packet_id_per_packet_seen_twice(tmp_path: Path, engine: str) -> None:
    paths = journeys_mesh(tmp_path)
    _, journeys = follow(
        paths, NAMES, JOURNEY_SKEW, _hosts(), clock_correction=False, marks_folder=tmp_path
    )
    sources = [
        MergeSource(p, host=n, clock_offset_ns=s) for p, n, s in zip(paths, NAMES, JOURNEY_SKEW)
    ]
    out = tmp_path / "merged.pcapng"
    with journeys.marks:
        report = merge_captures(sources, out, packet_marks=journeys.marks)
    assert not Path(journeys.marks.folder).exists()  # the marks go once merged
    assert journeys.marks.late == 0
    assert report.engine == engine
    assert _ids_match_the_packets(out) == 2 * 21 + 1
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
    with journeys.marks:
        merge_captures(sources, tmp_path / "out-c.pcapng", packet_marks=journeys.marks)
        monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1")
        merge_captures(sources, tmp_path / "out-py.pcapng", packet_marks=journeys.marks)
    assert (tmp_path / "out-c.pcapng").read_bytes() == (tmp_path / "out-py.pcapng").read_bytes()
    assert _ids_match_the_packets(tmp_path / "out-c.pcapng") == 2 * 21 + 1


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


# -- the C join's journeys are the Python engine's -----------------------------------------
def _random_mesh(folder: Path, seed: int) -> list[Path]:
    """Four hosts, random UDP, TCP and ICMP between them and to an address nobody owns:
    losses, duplicates, delays that reorder, and packets seen leaving two hosts."""
    import random

    rng = random.Random(seed)
    on: list[list] = [[], [], [], []]
    nobody = bytes([10, 0, 0, 99])
    for i in range(1500):
        sender = rng.randrange(4)
        receiver = rng.choice([h for h in range(4) if h != sender] + [9])
        dst = nobody if receiver == 9 else address(receiver)
        t = T0 + i * 50 * US + rng.randrange(40 * US)
        kind = rng.random()
        if kind < 0.6:
            frame = udp(
                rng.choice((53, 4000, 9999)), rng.choice((9999, 7777)), i, address(sender), dst
            )
        elif kind < 0.8:
            tcp = struct.pack("!HHIIBBHHH", 1000 + i % 7, 80, i, 0, 0x50, 0x10, 512, 0, 0)
            frame = eth(ipv4(6, tcp + b"x" * (i % 5), ident=i, src=address(sender), dst=dst))
        else:
            frame = eth(echo(8, 7, i, ident=i, src=address(sender), dst=dst))
        on[sender].append((t, frame, 2))
        if receiver == 9:
            continue
        roll = rng.random()
        copies = 0 if roll < 0.15 else 2 if roll < 0.2 else 1
        for copy in range(copies):
            on[receiver].append((t + rng.randrange(20 * US, 3_000 * US) + copy * US, frame, 1))
        if rng.random() < 0.05:  # seen leaving a third host too (a forwarder)
            third = rng.choice([h for h in range(4) if h not in (sender, receiver)])
            on[third].append((t + 5 * US, frame, 2))
    return [capture(folder / f"h{h}.pcapng", on[h]) for h in range(4)]


@pytest.mark.parametrize("declared", [True, False])
def test_c_and_python_journeys_agree(tmp_path: Path, monkeypatch, declared: bool) -> None:
    if captures_module._fastmerge is None:
        pytest.skip("the C extension is not built")
    from xdpcap.orchestrator.follow import journeys as journeys_module

    # Small reservoirs and lost-time room: the dice and the buckets are exercised too.
    monkeypatch.setattr(journeys_module, "SAMPLES", 16)
    monkeypatch.setattr(journeys_module, "LOST_EXACT", 8)
    monkeypatch.setattr(journeys_module, "LOST_BUCKETS", 8)
    paths = _random_mesh(tmp_path, 7)
    names = ["h0", "h1", "h2", "h3"]
    if declared:
        hosts = [HostView(n, {address(i)}) for i, n in enumerate(names)]
        hosts[2].filters = dict(spec.compile_filter("udp port 9999 or icmp").programs)
        hosts[3].captures_inbound = True
    else:
        hosts = [HostView(n) for n in names]
    results = {}
    for engine in ("c", "python"):
        monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1" if engine == "python" else "0")
        _, journeys = follow(paths, names, [0, 0, 0, 0], hosts, clock_correction=False)
        with journeys.marks as marks:
            results[engine] = (
                journeys.result(None),
                [Path(path).read_bytes() for path in marks.paths],
            )
    assert results["c"] == results["python"]
    result = results["c"][0]
    assert sum(p["lost"] for p in result["pairs"]) > 0
    assert sum(p["duplicated"] for p in result["pairs"]) > 0
    assert sum(p["reordered"] for p in result["pairs"]) > 0


def _busy_window(folder: Path) -> list[Path]:
    """Three hosts: five quiet seconds (~2,400 sightings in a 2 s window: the C join's
    first FIFO of 4,096 wraps), then two busy ones (~12,000: it grows, wrapped). Mostly
    packets from an address nobody owns, each seen
    once arriving (keys that stay single and leave the window unshared), among them
    packets between the hosts whose second sighting comes up to 1.5 s after the first
    (a single made a group after the FIFO has grown and wrapped), packets from outside
    seen arriving at two hosts, DNS questions and answers (exchanges), and a packet now
    and then seen twice on one host. The clocks are off by milliseconds, so some packets
    are seen arriving before they were seen leaving."""
    import random

    rng = random.Random(5)
    on: list[list] = [[], [], []]
    offsets = [0, 3_000 * US, -5_000 * US]
    outside = bytes([192, 0, 2, 9])
    for i in range(15_000):
        t = T0 + (i * 1_000 * US if i < 5_000 else 5_000_000 * US + (i - 5_000) * 200 * US)
        host = rng.randrange(3)
        kind = rng.random()
        if kind < 0.7:  # from outside: one sighting, arriving
            frame = udp(4000, 7777, i, outside, address(host))
            on[host].append((t, frame, 1))
            if rng.random() < 0.02:
                on[host].append((t + 30 * US, frame, 1))
            if rng.random() < 0.05:  # flooded: a second host sees it arrive too
                on[(host + 1) % 3].append((t + 40 * US, frame, 1))
        elif kind < 0.9:  # between the hosts, arriving late or never
            other = (host + 1 + rng.randrange(2)) % 3
            frame = udp(5000, 9999, i, address(host), address(other))
            on[host].append((t, frame, 2))
            if rng.random() < 0.9:
                late = rng.choice((50 * US, 200_000 * US, 1_500_000 * US))
                on[other].append((t + late, frame, 1))
        else:  # a question and, mostly, its answer (the question's arrival not always seen)
            other = (host + 1) % 3
            query = struct.pack("!HHHHHH", 5353, 53, 20, 0, i & 0xFFFF, 0x0100) + b"q"
            frame = eth(ipv4(17, query, ident=i, src=address(host), dst=address(other)))
            on[host].append((t, frame, 2))
            if rng.random() < 0.5:
                on[other].append((t + 100 * US, frame, 1))
            if rng.random() < 0.8:
                reply = struct.pack("!HHHHHH", 53, 5353, 20, 0, i & 0xFFFF, 0x8180) + b"r"
                frame = eth(ipv4(17, reply, ident=i + 1, src=address(other), dst=address(host)))
                on[other].append((t + 200 * US, frame, 2))
                on[host].append((t + 300 * US, frame, 1))
    for h in range(3):
        on[h] = [(t + offsets[h], frame, direction) for t, frame, direction in on[h]]
    return [capture(folder / f"w{h}.pcapng", on[h]) for h in range(3)]


def test_engines_agree_on_a_busy_window(tmp_path: Path, monkeypatch) -> None:
    """Keys seen once are held as FIFO entries alone in the C join (no group): through a
    window that outgrows the FIFO, singles expiring and singles made groups late, the
    journeys, the clocks and the packet ids are the Python engine's."""
    if captures_module._fastmerge is None:
        pytest.skip("the C extension is not built")
    paths = _busy_window(tmp_path)
    names = ["w0", "w1", "w2"]
    hosts = [HostView(n, {address(i)}) for i, n in enumerate(names)]
    results = {}
    for engine in ("c", "python"):
        monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1" if engine == "python" else "0")
        alignment, journeys = follow(paths, names, [0, 0, 0], hosts, clock_correction=True)
        assert alignment is not None
        with journeys.marks as marks:
            results[engine] = (
                (alignment.shifts_ns, alignment.rates_ppb, alignment.packets_read),
                journeys.result(alignment),
                [Path(path).read_bytes() for path in marks.paths],
            )
    assert results["c"] == results["python"]
    clocks, result, _ = results["c"]
    assert clocks[0][1] - clocks[0][0] == pytest.approx(3_000 * US, abs=100 * US)  # found
    assert sum(p["arrived"] for p in result["pairs"]) > 2000
    assert sum(p["lost"] for p in result["pairs"]) > 0


def test_join_engines_agree_on_a_busy_window(tmp_path: Path) -> None:
    """The same without journeys, where every first sighting may stay single (leaving
    ones too): each pair's bounds, samples and floors are the Python engine's."""
    if captures_module._fastmerge is None:
        pytest.skip("the C extension is not built")
    from xdpcap.orchestrator.follow.join import join_captures

    from .test_join import _summary  # each pair's counts, samples and floors

    paths = _busy_window(tmp_path)
    runs = {e: join_captures(paths, [0, 0, 0], engine=e) for e in ("c", "python")}
    c, py = runs["c"], runs["python"]

    assert {k: _summary(v) for k, v in c.pairs.items()} == {
        k: _summary(v) for k, v in py.pairs.items()
    }
    assert c.held_high_water == py.held_high_water > 4096
    assert c.packets == py.packets
    assert any(p.answer_count for p in c.pairs.values())


def test_residence_time_on_the_python_engine(tmp_path: Path, monkeypatch) -> None:
    """The test above runs on the C join when it is built: the same on the Python one."""
    monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1")
    test_residence_time_of_a_forwarding_host(tmp_path)
