"""The clock alignment's streaming join (follow/join.py): the same results as the pass it
replaced, in bounded memory, over the whole capture, and the same from its C and its
Python engine."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from xdpcap.orchestrator.clock.align import align
from xdpcap.orchestrator.follow import join as join_module
from xdpcap.orchestrator.follow.join import Match, Sighting, join_captures
from xdpcap.orchestrator.follow.summaries import SAMPLES, Floor, PairSamples
from xdpcap.orchestrator.merge.identity import INBOUND, OUTBOUND, identify, key_id

from .scenarios_clock import (
    IN,
    OUT,
    T0,
    US,
    address,
    capture,
    drifting_mesh,
    echo,
    eth,
    ingress_only,
    ipv4,
    skewed_pair,
)

fastmerge = join_module._fastmerge
needs_c = pytest.mark.skipif(fastmerge is None, reason="the C extension is not built")
ENGINES = ["python", pytest.param("c", marks=needs_c)]


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch) -> str:
    """Run align() on one engine (the environment switch the merge also obeys)."""
    monkeypatch.setenv("XDPCAP_NO_FASTMERGE", "1" if request.param == "python" else "0")
    return request.param


# -- the same results as the pass before it ------------------------------------------------
# What the in-memory pass (hosts × packets, 200,000 packets per host) gave on these inputs.
BEFORE = {
    "skewed_pair": {
        "reference": "a",
        "hosts": {
            "a": {"offset_ns": 0, "drift_ppb": 0, "feasible_ns": [0, 0], "source": "reference"},
            "b": {
                "offset_ns": 250000000,
                "drift_ppb": 0,
                "feasible_ns": [249960000, 250040000],
                "source": "traffic",
            },
        },
        "epoch_ns": 1700000001075034880,
        "one_way_delays": [
            {"sender": "a", "receiver": "b", "packets": 20, "min_ns": 40000, "median_ns": 40000},
            {"sender": "b", "receiver": "a", "packets": 20, "min_ns": 40000, "median_ns": 40000},
        ],
        "bounds_same_packet": 2,
        "bounds_answer": 0,
        "inconsistent": [],
        "truncated": [],
    },
    "ingress_only": {
        "reference": "a",
        "hosts": {
            "a": {"offset_ns": 0, "drift_ppb": 0, "feasible_ns": [0, 0], "source": "reference"},
            "b": {
                "offset_ns": -80000000,
                "drift_ppb": 0,
                "feasible_ns": [-80060000, -79940000],
                "source": "traffic",
            },
        },
        "epoch_ns": 1700000000410275072,
        "one_way_delays": [],
        "bounds_same_packet": 0,
        "bounds_answer": 2,
        "inconsistent": [],
        "truncated": [],
    },
}


@pytest.mark.parametrize("scenario", [skewed_pair, ingress_only])
def test_same_alignment_as_the_pass_before(tmp_path: Path, engine: str, scenario) -> None:
    paths = scenario(tmp_path)
    assert align(paths, ["a", "b"], [0, 0]).to_dict() == BEFORE[scenario.__name__]


def test_same_offsets_and_drifts_as_before_on_a_drifting_mesh(tmp_path: Path, engine: str) -> None:
    """1,200 packets per pair: more than the sample keeps, so the epoch (the median of the
    sample's times) moves; the offsets, taken to the old epoch, and the drifts do not."""
    paths, _, _ = drifting_mesh(tmp_path)
    before = {"h0": (-32352354, -47210), "h1": (0, 0), "h2": (-48917399, -50249)}
    before_epoch = 1700000014999716864
    alignment = align(paths, ["h0", "h1", "h2"], [0, 0, 0])
    for name, clock, rate in zip(alignment.names, alignment.clocks, alignment.rates_ppb):
        at_old_epoch = clock.offset_ns + rate * (before_epoch - alignment.epoch_ns) // 10**9
        assert rate == before[name][1]
        assert abs(at_old_epoch - before[name][0]) <= 2


def test_offsets_and_drifts_match_the_truth(tmp_path: Path, engine: str) -> None:
    paths, offsets, drifts = drifting_mesh(tmp_path, hosts=4, seconds=20, per_second=10, seed=9)
    alignment = align(paths, [f"h{h}" for h in range(4)], [0] * 4)
    ref = alignment.names.index(alignment.reference)
    for h in range(4):
        truth_rate = drifts[h] - drifts[ref]
        assert abs(alignment.rates_ppb[h] - truth_rate) < 500  # 0.5 ppm
        at = alignment.epoch_ns
        truth = offsets[h] - offsets[ref] + (at - T0) * truth_rate // 10**9
        assert abs(alignment.clocks[h].offset_ns - truth) < 20 * US


# -- bounded memory, every packet ---------------------------------------------------------


def _steady_pings(folder: Path, seconds: int, per_second: int, pad: int = 0) -> list[Path]:
    """a pings b `per_second` times a second for `seconds`, equal clocks; frames padded
    with `pad` bytes."""
    on_a, on_b = [], []
    for i in range(seconds * per_second):
        t = T0 + i * (10**9 // per_second)
        # Ids wrap after 65,536 packets: far outside the window, a new packet again.
        request = eth(echo(8, 1, i & 0xFFFF, ident=i & 0xFFFF, src=address(0), dst=address(1)))
        request += bytes(pad)
        on_a.append((t, request, OUT))
        on_b.append((t + 30 * US, request, IN))
    return [capture(folder / "a.pcapng", on_a), capture(folder / "b.pcapng", on_b)]


def test_memory_is_bounded_by_the_window(tmp_path: Path, engine: str) -> None:
    """120 s at 200 packets/s per host: 48,000 packets; the window holds 2 s of them, each
    an echo request held twice (the packet, and the question it asks)."""
    paths = _steady_pings(tmp_path, seconds=120, per_second=200)
    result = join_captures(paths, [0, 0], engine=engine)
    window = 2 * (200 * 2) * 2  # 2 s of both hosts' packets, two keys each
    assert sum(result.packets) == 48_000
    assert result.pairs[(0, 1)].same_count == 24_000  # every packet matched
    assert result.held_high_water <= window + 10
    # Per pair, fixed sizes: a uniform sample and a floor.
    assert len(result.pairs[(0, 1)].same) == SAMPLES
    assert len(result.pairs[(0, 1)].same_floor.points()) <= 256


def test_memory_is_bounded_on_the_python_heap(tmp_path: Path) -> None:
    """The Python engine's own allocations stay flat as the capture grows (1 kB frames:
    both captures fill the readers' chunks)."""
    import tracemalloc

    peaks = []
    for seconds in (60, 180):
        folder = tmp_path / str(seconds)
        folder.mkdir()
        paths = _steady_pings(folder, seconds=seconds, per_second=50, pad=1000)
        tracemalloc.start()
        join_captures(paths, [0, 0], engine="python")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.2  # 3 times the packets, not 3 times the memory


def test_drift_is_recovered_from_the_second_half_of_a_long_capture(
    tmp_path: Path, engine: str
) -> None:
    """250,000 packets per host that no other host saw come first (the pass before read
    only the first 200,000 of each host); the shared traffic after them gives the drift."""
    paths, _, drifts = drifting_mesh(
        tmp_path, hosts=2, seconds=20, per_second=20, seed=3, before=250_000
    )
    alignment = align(paths, ["a", "b"], [0, 0])
    assert alignment.truncated == []
    truth_rate = drifts[1] - drifts[0]
    assert truth_rate != 0
    assert abs(alignment.rates_ppb[1] - truth_rate) < 500


# -- the C engine is the Python engine ----------------------------------------------------


def _mixed_traffic(folder: Path) -> list[Path]:
    """Four hosts; echoes, SYNs, DNS, IPv6, a VLAN; duplicates and ambiguous keys; one
    pair with more bounds than the sample keeps; slight disorder; ingress-only host 3."""
    rng = random.Random(11)
    seen: list[list[tuple[int, bytes, int]]] = [[] for _ in range(4)]
    offsets = [0, 3_000 * US, -7_000 * US, 12_000 * US]
    for i in range(3000):
        t = T0 + i * 2_000 * US + rng.randrange(1_000 * US)
        a, b = rng.sample(range(4), 2)
        kind = rng.randrange(5)
        src, dst = address(a), address(b)
        if kind == 0:
            frame = eth(echo(8, a, i & 0xFFFF, ident=i, src=src, dst=dst), vlan=rng.random() < 0.2)
        elif kind == 1:
            syn = struct.pack("!HHIIBBHHH", 40000 + i % 100, 80, i, 0, 0x50, 0x02, 65535, 0, 0)
            frame = eth(ipv4(6, syn, ident=i, src=src, dst=dst))
        elif kind == 2:
            query = struct.pack("!HHHHHH", 5353, 53, 20, 0, i & 0xFFFF, 0x0100) + b"q"
            frame = eth(ipv4(17, query, ident=i, src=src, dst=dst))
        elif kind == 3:
            body = struct.pack("!BBHHH", 128, 0, 0, a, i & 0xFFFF) + b"six"
            v6 = struct.pack(
                "!IHBB16s16s", 0x60000000 | i & 0xFFFFF, len(body), 58, 64, src * 4, dst * 4
            )
            frame = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + v6 + body
        else:
            frame = eth(echo(8, 9, 9, ident=9, src=src, dst=dst))  # the same key, again and again
        arrive = t + rng.randint(20, 400) * US
        if a != 3:
            seen[a].append((t + offsets[a], frame, OUT))
        seen[b].append((arrive + offsets[b], frame, IN))
        if rng.random() < 0.05:  # a duplicate arrival
            seen[b].append((arrive + 50 * US + offsets[b], frame, IN))
        if kind in (0, 1, 2) and rng.random() < 0.8:  # the answer
            if kind == 0:
                answer = eth(echo(0, a, i & 0xFFFF, ident=i + 1, src=dst, dst=src))
            elif kind == 1:
                answer = eth(
                    ipv4(
                        6,
                        struct.pack(
                            "!HHIIBBHHH", 80, 40000 + i % 100, 77, i + 1, 0x50, 0x12, 65535, 0, 0
                        ),
                        src=dst,
                        dst=src,
                    )
                )
            else:
                response = struct.pack("!HHHHHH", 53, 5353, 20, 0, i & 0xFFFF, 0x8180) + b"r"
                answer = eth(ipv4(17, response, ident=i + 7, src=dst, dst=src))
            back = arrive + rng.randint(10, 100) * US
            seen[b].append((back + offsets[b], answer, OUT))
            seen[a].append((back + rng.randint(20, 400) * US + offsets[a], answer, IN))
    for i in range(2 * SAMPLES):  # one pair with more than the sample keeps
        t = T0 + i * 5_000 * US
        frame = eth(echo(8, 77, i, ident=i, src=address(0), dst=address(1)))
        seen[0].append((t, frame, OUT))
        seen[1].append((t + rng.randint(20, 400) * US + offsets[1], frame, IN))
    paths = []
    for host in range(4):
        packets = sorted(seen[host], key=lambda p: p[0])
        for k in range(0, len(packets) - 1, 97):  # a few neighbours swapped: disorder
            packets[k], packets[k + 1] = packets[k + 1], packets[k]
        path = folder / f"m{host}.pcapng"
        with path.open("wb") as f:
            from xdpcap.agent.pcapng import PcapngWriter

            writer = PcapngWriter(f)
            writer.add_interface("eth0", snaplen=65535)
            for ts, frame, direction in packets:
                writer.write_packet(0, ts, frame, len(frame), flags=direction)
            writer.flush()
        paths.append(path)
    return paths


def _summary(pair: PairSamples) -> tuple:
    return (
        pair.same_count,
        pair.answer_count,
        pair.same,
        pair.answers,
        pair.same_floor.points(),
        pair.answer_floor.points(),
    )


@needs_c
def test_c_and_python_engines_agree(tmp_path: Path) -> None:
    paths = _mixed_traffic(tmp_path)
    priors = [0, 2_900 * US, -7_050 * US, 11_000 * US]
    results, matches = {}, {}
    for engine in ("c", "python"):
        found: list[Match] = []
        results[engine] = join_captures(paths, priors, on_match=found.append, engine=engine)
        matches[engine] = found
    c, py = results["c"], results["python"]
    assert c.packets == py.packets
    assert c.held_high_water == py.held_high_water
    assert list(c.pairs) == list(py.pairs)
    assert {k: _summary(v) for k, v in c.pairs.items()} == {
        k: _summary(v) for k, v in py.pairs.items()
    }
    assert any(p.answer_count for p in c.pairs.values())  # answers were joined too
    assert c.pairs[(0, 1)].same_count > SAMPLES  # the dice were rolled
    assert matches["c"] == matches["python"] and len(matches["c"]) > 3000


@needs_c
def test_engines_agree_on_other_parameters(tmp_path: Path, monkeypatch) -> None:
    """The C join takes its window, MAX_COPIES and sizes from constraints.py (through
    join.py): other values change both engines alike."""
    paths = _mixed_traffic(tmp_path)
    monkeypatch.setattr(join_module, "MATCH_WINDOW_NS", 150 * US)
    monkeypatch.setattr(join_module, "MAX_COPIES", 2)
    results = {e: join_captures(paths, [0, 0, 0, 0], engine=e) for e in ("c", "python")}
    c, py = results["c"], results["python"]
    assert {k: _summary(v) for k, v in c.pairs.items()} == {
        k: _summary(v) for k, v in py.pairs.items()
    }
    assert c.held_high_water == py.held_high_water
    # Offsets up to 12 ms and a 150 µs window: most packets no longer meet.
    assert sum(p.same_count for p in c.pairs.values()) < 2 * SAMPLES


@needs_c
def test_engines_agree_on_classic_pcap_and_big_endian_inputs(tmp_path: Path) -> None:
    """Blocks the C loop hands back to Python (classic pcap records, big-endian
    sections) reach the join as they reach the Python engine."""
    from .test_pcapng_reader import big_endian_section, write_pcap

    skew_b, skew_c = 30_000 * US, -20_000 * US
    on_a, on_b, on_c = [], [], []
    for seq in range(50):
        t = T0 + seq * 50_000 * US
        request = eth(echo(8, 1, seq, ident=seq, src=address(0), dst=address(1)))
        reply = eth(echo(0, 1, seq, ident=500 + seq, src=address(1), dst=address(0)))
        on_a += [(t, request, OUT), (t + 90 * US, reply, IN)]
        on_b += [(t + 40 * US + skew_b, request, len(request))]  # pcap: no direction
        on_b += [(t + 50 * US + skew_b, reply, len(reply))]
        from_c = eth(echo(8, 2, seq, ident=900 + seq, src=address(2), dst=address(0)))
        on_c.append(((t + 10 * US + skew_c), from_c, len(from_c)))  # big-endian: outbound
        on_a.append((t + 45 * US, from_c, IN))
    paths = [
        capture(tmp_path / "a.pcapng", on_a),
        write_pcap(tmp_path / "b.pcap", on_b, nanos=True),
        tmp_path / "c.pcapng",
    ]
    paths[2].write_bytes(big_endian_section("c0", on_c))
    found: dict[str, list[Match]] = {"c": [], "python": []}
    results = {
        engine: join_captures(paths, [0, 0, 0], on_match=found[engine].append, engine=engine)
        for engine in ("c", "python")
    }
    c, py = results["c"], results["python"]
    assert c.packets == py.packets == [150, 100, 50]
    assert {k: _summary(v) for k, v in c.pairs.items()} == {
        k: _summary(v) for k, v in py.pairs.items()
    }
    assert found["c"] == found["python"]
    assert c.pairs[(0, 1)].answer_count == 50  # asked on a, answered on b
    assert c.pairs[(2, 0)].same_count == 50  # left c, arrived at a


@needs_c
def test_engines_agree_on_damaged_inputs(tmp_path: Path) -> None:
    """Bytes flipped and files cut short: both engines read the same packets before the
    damage and join them alike, times past the year 2116 included (left out by both)."""
    originals = [p.read_bytes() for p in _mixed_traffic(tmp_path)]
    far = eth(echo(8, 5, 5, ident=5, src=address(0), dst=address(1)))
    future = capture(tmp_path / "future.pcapng", [(T0, far, OUT), (int(1.2e19), far, OUT)])
    rng = random.Random(1)
    for trial in range(12):
        paths = [future]
        for host, data in enumerate(originals):
            data = bytearray(data)
            for _ in range(rng.randint(0, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(len(data))]
            paths.append(tmp_path / f"t{trial}h{host}.pcapng")
            paths[-1].write_bytes(bytes(data))
        runs = {}
        for engine in ("c", "python"):
            found: list[Match] = []
            result = join_captures(paths, [0, 0, 5, -7, 0], on_match=found.append, engine=engine)
            pairs = {k: _summary(v) for k, v in result.pairs.items()}
            runs[engine] = (result.packets, pairs, result.held_high_water, found)
        assert runs["c"] == runs["python"], trial
        assert all(s.ts_ns < 1 << 62 for m in runs["c"][3] for s in m.sightings)


@needs_c
def test_identities_are_the_same_in_c(tmp_path: Path) -> None:
    frames = [
        (1, eth(echo(8, 1, 1, src=address(0), dst=address(1)))),
        (1, eth(echo(0, 1, 1, src=address(1), dst=address(0)), vlan=True)),
        (
            101,
            ipv4(
                6,
                struct.pack("!HHIIBBHHH", 1, 80, 5, 0, 0x50, 0x02, 9, 0, 0),
                src=b"abcd",
                dst=b"efgh",
            ),
        ),
        (
            101,
            ipv4(
                6,
                struct.pack("!HHIIBBHHH", 80, 1, 9, 6, 0x50, 0x12, 9, 0, 0),
                src=b"efgh",
                dst=b"abcd",
            ),
        ),
        (
            113,
            bytes(14)
            + b"\x08\x00"
            + ipv4(17, struct.pack("!HHHHHH", 9, 53, 20, 0, 7, 0x0100), src=b"abcd", dst=b"efgh"),
        ),
        (1, b"\xff" * 12 + b"\x08\x06" + bytes(28)),  # ARP
        (1, b"\xff" * 12 + b"\x08\x00"),  # no IP header at all
        (147, echo(8, 1, 1, src=b"abcd", dst=b"efgh")),
    ]
    rng = random.Random(4)
    for _ in range(20_000):  # damaged and odd headers
        linktype, frame = rng.choice(frames[:5])
        frame = bytearray(frame[: rng.randint(0, len(frame))])
        for _ in range(rng.randint(0, 3)):
            if frame:
                frame[rng.randrange(len(frame))] = rng.randrange(256)
        frames.append((linktype, bytes(frame)))
    identified = 0
    for linktype, frame in frames:
        mine = identify(linktype, frame)
        expected = None if mine is None else (mine.packet, mine.question, mine.answer)
        assert fastmerge.identify(linktype, frame) == expected, (linktype, frame.hex())
        identified += mine is not None
        if mine is not None:
            assert fastmerge.key_id(mine.packet) == key_id(mine.packet)
    assert identified > 5_000


# -- what the join keeps for what builds on it ---------------------------------------------


def test_matches_say_where_and_when_each_packet_was_seen(tmp_path: Path, engine: str) -> None:
    paths = skewed_pair(tmp_path)
    found: list[Match] = []
    join_captures(paths, [0, 250_000 * US], on_match=found.append, engine=engine)
    assert len(found) == 40  # 20 requests, 20 replies
    first = found[0]
    request = eth(echo(8, 1, 0, ident=0, src=address(0), dst=address(1)))
    assert first.packet_id == key_id(identify(1, request).packet)
    assert (first.linktype, first.head) == (1, request)  # its first sighting's frame
    assert first.sightings == (
        Sighting(0, OUTBOUND, T0, iface=0),
        Sighting(1, INBOUND, T0 + 40 * US + 250_000 * US, iface=0),
    )


def test_floor_keeps_the_tightest_bound_per_bucket() -> None:
    floor = Floor()
    for i in range(1000):  # 10 s; the buckets widen to hold them
        floor.add(T0 + i * 10_000_000, T0 + i * 10_000_000 + 100 + (i * 37) % 50)
    points = floor.points()
    assert len(points) <= 256
    assert min(b - a for a, b in points) == 100  # the tightest bound of all is kept
