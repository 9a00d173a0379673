"""Clocks from the traffic without a network: the solver on synthetic bounds, packet
identities on crafted frames, and the whole pass on synthetic capture files."""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import pytest
from xdpcap.orchestrator.clock.align import align
from xdpcap.orchestrator.clock.solver import shortest_paths, solve
from xdpcap.orchestrator.merge.identity import identify

from .scenarios_clock import capture as _capture
from .scenarios_clock import echo as _echo
from .scenarios_clock import eth as _eth
from .scenarios_clock import ipv4 as _ipv4

US = 1_000

# -- the solver --------------------------------------------------------------------------


def _bounds_from(truth: list[int], delays: dict[tuple[int, int], int]) -> dict:
    """o_j − o_i ≤ t_j − t_i for a packet i → j with this minimum one-way delay."""
    return {(i, j): truth[j] - truth[i] + delay for (i, j), delay in delays.items()}


def test_two_sided_bounds_give_the_middle() -> None:
    truth = [0, 300_000 * US, -150_000 * US]
    delays = {(a, b): 20 * US for a in range(3) for b in range(3) if a != b}
    solution = solve(3, _bounds_from(truth, delays), [0, 0, 0], reference=0)
    assert [h.offset_ns for h in solution.hosts] == truth  # symmetric delays: exact
    assert solution.hosts[1].lower_ns == truth[1] - 20 * US
    assert solution.hosts[1].upper_ns == truth[1] + 20 * US
    assert [h.source for h in solution.hosts] == ["reference", "traffic", "traffic"]
    assert solution.inconsistent == []


def test_asymmetric_delays_cost_half_the_asymmetry() -> None:
    truth = [0, 5_000 * US]
    solution = solve(2, _bounds_from(truth, {(0, 1): 10 * US, (1, 0): 30 * US}), [0, 0], 0)
    assert solution.hosts[1].offset_ns == truth[1] - 10 * US  # (30 − 10) / 2


def test_tight_bounds_pin_the_offset() -> None:
    truth = [0, 42]
    solution = solve(2, _bounds_from(truth, {(0, 1): 0, (1, 0): 0}), [0, 0], 0)
    assert solution.hosts[1].offset_ns == 42
    assert solution.hosts[1].lower_ns == solution.hosts[1].upper_ns == 42


def test_contradicting_bounds_are_reported_and_the_probe_used() -> None:
    bounds = {(0, 1): -10 * US, (1, 0): -10 * US}  # each packet arrived before it left
    solution = solve(2, bounds, [0, 7 * US], 0)
    assert solution.inconsistent == [0, 1]
    assert [h.offset_ns for h in solution.hosts] == [0, 7 * US]
    assert {h.source for h in solution.hosts} == {"probe"}


def test_one_sided_bound_moves_the_prior_into_the_feasible_side() -> None:
    # Only answers from host 1 seen on host 0: o_0 − o_1 ≤ −2 ms, so o_1 ≥ 2 ms.
    solution = solve(2, {(1, 0): -2_000 * US}, [0, 500 * US], 0)
    assert solution.hosts[1].offset_ns == 2_000 * US
    assert solution.hosts[1].source == "traffic and probe"
    assert solution.hosts[1].upper_ns == math.inf
    # A prior already inside the feasible side stays where it is.
    assert solve(2, {(1, 0): -2_000 * US}, [0, 9_000 * US], 0).hosts[1].offset_ns == 9_000 * US


def test_unbounded_hosts_keep_their_prior() -> None:
    solution = solve(3, {(0, 1): 5, (1, 0): 5}, [0, 0, 123], 0)
    assert solution.hosts[2].offset_ns == 123 and solution.hosts[2].source == "probe"


def test_hosts_fixed_one_by_one_stay_consistent() -> None:
    """A chain 0 – 1 – 2 without bounds between 0 and 2: fixing 1 must keep 2 feasible."""
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(2, 7)
        truth = [0] + [rng.randint(-(10**9), 10**9) for _ in range(n - 1)]
        delays = {}
        for _ in range(rng.randint(1, n * n)):
            a, b = rng.randrange(n), rng.randrange(n)
            if a != b:
                delays[(a, b)] = rng.randint(1, 500) * US
        bounds = _bounds_from(truth, delays)
        solution = solve(n, bounds, [0] * n, 0)
        offsets = [h.offset_ns for h in solution.hosts]
        assert solution.inconsistent == []
        for (i, j), limit in bounds.items():  # every bound holds for the answer
            assert offsets[j] - offsets[i] <= limit
        for h, clock in enumerate(solution.hosts):  # the truth is always feasible
            assert clock.lower_ns <= truth[h] <= clock.upper_ns


def test_shortest_paths_find_indirect_bounds() -> None:
    dist = shortest_paths(3, {(0, 1): 5, (1, 2): 7, (2, 0): 1})
    assert dist[0][2] == 12 and dist[1][0] == 8


# -- packet identities ---------------------------------------------------------------------


def test_same_packet_whatever_the_hop_changed() -> None:
    sent = identify(1, _eth(_echo(8, 1, 1, ttl=64)))
    routed = identify(1, b"\x06" * 12 + _eth(_echo(8, 1, 1, ttl=63))[12:])  # new MACs, TTL
    tagged = identify(1, _eth(_echo(8, 1, 1, ttl=62), vlan=True))
    raw = identify(101, _echo(8, 1, 1, ttl=61))
    assert sent.packet == routed.packet == tagged.packet == raw.packet
    assert identify(1, _eth(_echo(8, 1, 2))).packet != sent.packet  # another sequence
    assert identify(1, _eth(_echo(8, 1, 1, ident=8))).packet != sent.packet  # another IP id


def test_echo_reply_answers_its_request() -> None:
    request = identify(1, _eth(_echo(8, 9, 3)))
    reply = identify(1, _eth(_echo(0, 9, 3, src=b"\x0a\0\0\x02", dst=b"\x0a\0\0\x01")))
    assert request.question is not None and request.question == reply.answer
    other = identify(1, _eth(_echo(0, 9, 4, src=b"\x0a\0\0\x02", dst=b"\x0a\0\0\x01")))
    assert other.answer != request.question


def test_syn_ack_answers_its_syn() -> None:
    syn = _ipv4(6, struct.pack("!HHIIBBHHH", 40000, 80, 1000, 0, 0x50, 0x02, 65535, 0, 0))
    syn_ack = _ipv4(
        6,
        struct.pack("!HHIIBBHHH", 80, 40000, 5000, 1001, 0x50, 0x12, 65535, 0, 0),
        src=b"\x0a\0\0\x02",
        dst=b"\x0a\0\0\x01",
    )
    assert identify(101, syn).question == identify(101, syn_ack).answer is not None


def test_dns_response_answers_its_query() -> None:
    query = _ipv4(17, struct.pack("!HHHHHH", 5353, 53, 20, 0, 0xABCD, 0x0100) + b"q")
    response = _ipv4(
        17,
        struct.pack("!HHHHHH", 53, 5353, 20, 0, 0xABCD, 0x8180) + b"r",
        src=b"\x0a\0\0\x02",
        dst=b"\x0a\0\0\x01",
    )
    assert identify(101, query).question == identify(101, response).answer is not None


def test_not_ip_is_not_identified() -> None:
    assert identify(1, b"\xff" * 12 + b"\x08\x06" + bytes(28)) is None  # ARP
    assert identify(1, b"\x00" * 10) is None
    assert identify(147, _echo(8, 1, 1)) is None  # a link type it does not read


# -- the whole pass on files ---------------------------------------------------------------


def test_align_recovers_skews_from_files(tmp_path: Path) -> None:
    a, b = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    skew_b, delay = 250_000 * US, 40 * US  # b's clock runs 250 ms ahead
    on_a, on_b = [], []
    for seq in range(20):
        t = 1_700_000_000 * 10**9 + seq * 100_000 * US
        request = _eth(_echo(8, 1, seq, ident=seq, src=a, dst=b))
        reply = _eth(_echo(0, 1, seq, ident=1000 + seq, src=b, dst=a))
        on_a.append((t, request, 2))
        on_b.append((t + delay + skew_b, request, 1))
        on_b.append((t + delay + 30 * US + skew_b, reply, 2))
        on_a.append((t + 2 * delay + 30 * US, reply, 1))
    _capture(tmp_path / "a.pcapng", on_a)
    _capture(tmp_path / "b.pcapng", on_b)
    alignment = align([tmp_path / "a.pcapng", tmp_path / "b.pcapng"], ["a", "b"], [0, 0])
    assert alignment.reference == "a"
    assert alignment.shifts_ns == [0, skew_b]
    assert alignment.bounds_same_packet == 2
    (ab, ba) = alignment.delays
    assert (ab.sender, ab.receiver, ab.packets, ab.min_ns, ab.median_ns) == (
        "a",
        "b",
        20,
        delay,
        delay,
    )
    assert (ba.min_ns, ba.median_ns) == (delay, delay)
    assert "feasible" in alignment.describe(1) and "reference" in alignment.describe(0)


def test_answers_alone_bound_ingress_only_captures(tmp_path: Path) -> None:
    """-Q in: each host saw only what arrived; echo pairs still order the hosts."""
    a, b = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    skew_b = -80_000 * US
    on_a, on_b = [], []
    for seq in range(10):
        t = 1_700_000_000 * 10**9 + seq * 100_000 * US
        # a pings b: b sees the request arrive, a the reply.
        on_b.append((t + 50 * US + skew_b, _eth(_echo(8, 1, seq, src=a, dst=b)), 1))
        on_a.append((t + 110 * US, _eth(_echo(0, 1, seq, src=b, dst=a)), 1))
        # b pings a: a sees the request, b the reply.
        on_a.append((t + 500 * US, _eth(_echo(8, 2, seq, src=b, dst=a)), 1))
        on_b.append((t + 560 * US + skew_b, _eth(_echo(0, 2, seq, src=a, dst=b)), 1))
    _capture(tmp_path / "a.pcapng", on_a)
    _capture(tmp_path / "b.pcapng", on_b)
    alignment = align([tmp_path / "a.pcapng", tmp_path / "b.pcapng"], ["a", "b"])
    assert alignment.bounds_answer == 2 and alignment.bounds_same_packet == 0
    clock = alignment.clocks[1]
    assert clock.lower_ns <= skew_b <= clock.upper_ns
    assert abs(clock.offset_ns - skew_b) <= 60 * US  # half the round trips' spread


@pytest.mark.parametrize("count", [1, 3])
def test_files_without_shared_traffic_keep_their_priors(tmp_path: Path, count: int) -> None:
    paths = []
    for i in range(count):
        paths.append(tmp_path / f"{i}.pcapng")
        _capture(paths[-1], [(10**18 + i, _eth(_echo(8, i, i, ident=i)), 2)])
    priors = [i * 1000 for i in range(count)]
    alignment = align(paths, [str(i) for i in range(count)], priors)
    reference = priors[(count - 1) // 2]  # the median prior's host
    assert alignment.shifts_ns == [p - reference for p in priors]
    assert {c.source for c in alignment.clocks} <= {"probe", "reference"}


# -- drift -------------------------------------------------------------------------------


def test_drift_is_recovered_from_bounds_both_ways() -> None:
    from xdpcap.orchestrator.clock.drift import pair_slope, rates
    from xdpcap.orchestrator.follow.summaries import PairSamples

    rate = 100e-6  # B runs 100 ppm fast against A
    rng = random.Random(3)
    start = 1_700_000_000 * 10**9
    forward, backward = PairSamples(), PairSamples()
    for i in range(600):  # 30 s of pings, one-way delays of 3 to 40 µs
        t = start + i * 50_000 * US
        offset = round(rate * (t - start)) + 7_000 * US  # o_B − o_A at t
        forward.add(t, t + rng.randint(3, 40) * US + offset, True, rng)
        back = t + 20_000 * US
        backward.add(
            back + round(rate * (back - start)) + 7_000 * US,
            back + rng.randint(3, 40) * US,
            True,
            rng,
        )
    slope = pair_slope(forward, backward)
    assert abs(slope - rate) < 0.05e-6
    assert rates(2, {(0, 1): forward, (1, 0): backward}, reference=0) == [0.0, slope]
    assert rates(2, {(0, 1): forward}, reference=0) == [0.0, 0.0]  # one way: no rate


def test_reader_takes_a_drift_out(tmp_path: Path) -> None:
    from xdpcap.orchestrator.merge.reader import CaptureReader

    path = tmp_path / "d.pcapng"
    epoch = 1_700_000_000 * 10**9
    _capture(path, [(epoch + s * 10**9, _eth(_echo(8, 1, s)), 2) for s in range(0, 31, 10)])
    reader = CaptureReader(path, shift_ns=5, drift_ppb=100_000, drift_epoch_ns=epoch)
    got = [p.ts_ns for p in reader.packets()]
    # 100 ppm: 1 ms gained per 10 s, taken out along with the constant shift.
    assert got == [epoch + s * 10**9 - s * 100_000 - 5 for s in range(0, 31, 10)]


def test_rates_that_contradict_the_bounds_fall_back_to_constant_offsets(
    tmp_path: Path, monkeypatch
) -> None:
    import xdpcap.orchestrator.clock.align as clocksync

    a, b = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    on_a, on_b = [], []
    for seq in range(20):  # 2 s of pings both ways, clocks equal, 40 µs each way
        t = 1_700_000_000 * 10**9 + seq * 100_000 * US
        request = _eth(_echo(8, 1, seq, ident=seq, src=a, dst=b))
        reply = _eth(_echo(0, 1, seq, ident=500 + seq, src=b, dst=a))
        on_a += [(t, request, 2), (t + 100 * US, reply, 1)]
        on_b += [(t + 40 * US, request, 1), (t + 60 * US, reply, 2)]
    _capture(tmp_path / "a.pcapng", on_a)
    _capture(tmp_path / "b.pcapng", on_b)
    monkeypatch.setattr(clocksync, "rates", lambda n, samples, reference: [0.0, 1e-3])
    alignment = clocksync.align([tmp_path / "a.pcapng", tmp_path / "b.pcapng"], ["a", "b"])
    assert alignment.inconsistent == []  # 1000 ppm contradicts them; no drift does not
    assert alignment.rates_ppb == [0, 0] and alignment.shifts_ns == [0, 0]
