"""Journeys: where each packet went, and how each leg between two hosts fared.

Built inside the clock alignment's one streaming pass (follow/join.py): `Journeys` is
its `on_match` and sees every packet key's group as it closes, a packet's sightings on
all hosts with their times on each host's own clock. Nothing reads the inputs again.
With the C join (`_fastmerge.Join`) the per-group work below runs in C (`jr_close`,
the same steps and the same dice): Python is told the hosts before the pass
(`setup_c`) and reads the aggregates after it (`load_c`), never a group.

What it keeps, and why memory stays bounded:

- **Packet ids** are not kept here: the pass writes which sightings get one
  (`marks`, merge/packet_ids.py: a file per host, read by the merge in file order), so
  neither side holds anything per packet; `marks.packets` counts them for run.json.
- **Per ordered host pair** (sender → receiver), from packets seen leaving the sender
  (outbound) to one of the receiver's addresses: how many arrived (inbound at the
  receiver), arrived twice or more (`duplicated`: the extra copies), arrived after a
  packet that left later (`reordered`, counted in the order the join closes groups:
  the order of arrival, unless a later sighting on a third host holds a group open);
  a uniform sample (at most SAMPLES) of raw (t_send, t_recv) pairs and the pair with the
  largest raw gap, corrected with the solved offsets and drifts after the solve (as
  constraints.PairSamples): **the delay percentiles come from that bounded uniform
  sample** (exact while a pair has at most SAMPLES arrivals), the max from every packet.
- **Lost candidates** (left the sender, not seen arriving): their send times, because
  whether the receiver would have seen them depends on its window in solved clock time,
  known only after the solve; with the first EXAMPLES of each flow's details. Each is
  checked when it closes against the receiver's capture filter (cbpf_run on the packet's
  first bytes) and direction. A flow keeps its first LOST_EXACT send times exactly (8
  bytes each: the window edge is applied to each after the solve, exactly); past that,
  all its send times go into LOST_BUCKETS time buckets (8 bytes each) whose width
  doubles as the flow's span grows (`LostTimes`), and the window edge is applied to
  each bucket's middle: a count exact but for the two buckets the edges cut (each at
  most 1/LOST_BUCKETS of the flow's span, ~1/512 of it once bucketed). At most
  8 × max(LOST_EXACT, LOST_BUCKETS) = 32 KiB per flow that lost packets, for any
  capture length.
- **Residence time** per host that saw a packet arrive on one interface and leave on
  another: a count, a uniform sample and the max (one clock: nothing to correct).

A host's addresses come from its agent (the capture's summary, `addresses`), or from its
file's interface descriptions (if_IPv4addr, if_IPv6addr), or are learned in the pass:
the source of a packet it sent that it did not forward, and the destination of a packet
that arrived at it and nowhere else and that it did not forward. A packet to an address
no host owns is no pair's business.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ...agent.filter.cbpf import Program
from ..merge.identity import INBOUND, OUTBOUND, _ip_payload
from .cbpf_run import selects
from .join import HEAD_BYTES, Match
from .summaries import SplitMix, reservoir

if TYPE_CHECKING:
    from ..merge.blocks import Interface
    from ..merge.packet_ids import PacketMarks


class SolvedClocks(Protocol):
    """What the journeys need of the clock alignment (clock.align.Alignment): each
    host's offset and drift against the reference, from an epoch."""

    shifts_ns: list[int]
    rates_ppb: list[int]
    epoch_ns: int


SAMPLES = 1024  # delay samples kept per ordered host pair (and residence per host)
EXAMPLES = 20  # lost packets described per pair
LOST_EXACT = 4096  # lost send times kept exactly per flow; then LOST_BUCKETS buckets
LOST_BUCKETS = 1024
TIMELINE_BUCKETS = 120  # the loss-over-time series per pair
SERIES_POINTS = 300  # delay-over-time points per pair in run.json (from the sample)
IF_IPV4ADDR, IF_IPV6ADDR = 4, 5
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
LINKS = {1: "ether", 101: "raw"}


@dataclass
class HostView:
    """What journeys know of a host before the pass."""

    name: str
    addresses: set[bytes] = field(default_factory=set)  # packed, 4 or 16 bytes
    # The receiver's capture filter, by link ("ether", "raw"): None selects every packet.
    filters: dict[str, Program] | None = None
    captures_inbound: bool | None = None  # None: inferred (it saw something arrive)
    window_ns: tuple[int, int] | None = None  # on its own clock; None: first..last packet


@dataclass
class _Pair:
    arrived: int = 0
    duplicated: int = 0
    # (t_send, t_recv); from the C join an array("q") of them, flat
    samples: list[tuple[int, int]] | array = field(default_factory=list)
    widest: tuple[int, int] | None = None  # the (t_send, t_recv) of the largest raw gap


@dataclass
class _Flow:
    """Packets from one sender to one destination address."""

    latest_sent: int | None = None  # the latest send time of the packets that arrived
    reordered: int = 0
    pending: LostTimes = field(default_factory=lambda: LostTimes())  # lost candidates' t_send
    examples: list[dict] = field(default_factory=list)  # with "t_send" on the sender clock


class LostTimes:
    """A flow's lost send times (sender clock): exact up to LOST_EXACT, then all of them
    in LOST_BUCKETS buckets from the earliest, the width a power of two that doubles
    (neighbours merged) when a time falls past the last. _fastmerge.c's `lost_time`."""

    __slots__ = ("counts", "exact", "origin", "width")

    def __init__(self) -> None:
        self.exact: array | None = array("q")
        self.counts: list[int] | None = None
        self.origin = 0
        self.width = 1

    def add(self, t: int) -> None:
        if self.exact is not None and len(self.exact) < LOST_EXACT:
            self.exact.append(t)
            return
        if self.exact is not None:
            self.counts = [0] * LOST_BUCKETS
            self.origin = min(self.exact)
            while max(self.exact) - self.origin >= self.width * LOST_BUCKETS:
                self.width *= 2
            for held in self.exact:
                self._fold(held)
            self.exact = None
        self._fold(t)

    def _fold(self, t: int) -> None:
        counts = self.counts
        since = max(0, t - self.origin)
        while since // self.width >= LOST_BUCKETS:
            half = LOST_BUCKETS // 2
            counts[:half] = [counts[2 * i] + counts[2 * i + 1] for i in range(half)]
            counts[half:] = [0] * half
            self.width *= 2
        counts[since // self.width] += 1

    def times(self) -> list[tuple[int, int]]:
        """(send time, packets): each exact time once, or each bucket's middle."""
        if self.counts is None:
            return [(t, 1) for t in self.exact]
        return [
            (self.origin + k * self.width + self.width // 2, count)
            for k, count in enumerate(self.counts)
            if count
        ]

    @classmethod
    def of(cls, exact: list[int], histogram: tuple[int, int, list[int]] | None) -> LostTimes:
        held = cls()
        if histogram is None:
            held.exact = array("q", exact)
        else:
            held.exact = None
            held.origin, held.width, held.counts = histogram[0], histogram[1], list(histogram[2])
        return held


@dataclass
class _Residence:
    count: int = 0
    samples: list[int] = field(default_factory=list)
    max_ns: int = 0


class Journeys:
    """The on_match of the pass: `Journeys(hosts)`, then `result(alignment)` after it.
    `marks`: what the pass wrote for the merge's packet ids (run/follow.py sets it)."""

    def __init__(self, hosts: Sequence[HostView], priors_ns: Sequence[int] | None = None) -> None:
        self.hosts = list(hosts)
        # The clocks when no alignment is solved (the probe's, or none).
        self.priors = list(priors_ns) if priors_ns is not None else [0] * len(hosts)
        self.owner: dict[bytes, int] = {}
        self.declared = [bool(h.addresses) for h in hosts]
        for index, host in enumerate(hosts):
            for address in host.addresses:
                self.owner.setdefault(address, index)
        self.marks: PacketMarks | None = None
        self.packets: list[int] = []  # per host, read by the pass (run/follow.py sets it)
        self.pairs: dict[tuple[int, int], _Pair] = {}
        self.flows: dict[tuple[int, bytes], _Flow] = {}
        self.residence: dict[int, _Residence] = {}
        self.first = [None] * len(hosts)  # each host's first and last time seen
        self.last = [None] * len(hosts)
        self.inbound = [0] * len(hosts)
        self.rng = SplitMix(25)

    # ------------------------------------------------------------------ the pass
    def __call__(self, match: Match) -> None:
        sightings = match.sightings
        first, last = self.first, self.last
        outbound = False
        for s in sightings:
            h, t = s.host, s.ts_ns
            if first[h] is None or t < first[h]:
                first[h] = t
            if last[h] is None or t > last[h]:
                last[h] = t
            if s.direction == INBOUND:
                self.inbound[h] += 1
            elif s.direction == OUTBOUND:
                outbound = True
        if len(sightings) > 1 and len({(s.host, s.iface) for s in sightings}) > 1:
            self._residence(sightings)
        if outbound:
            self._legs(match)

    def _residence(self, sightings) -> None:
        """Arrived on one interface of a host and left by another: the host's own time."""
        for s in sightings:
            if s.direction != INBOUND:
                continue
            leaving = [
                o.ts_ns
                for o in sightings
                if o.host == s.host
                and o.direction == OUTBOUND
                and o.iface != s.iface
                and o.ts_ns >= s.ts_ns
            ]
            if leaving:
                gap = min(leaving) - s.ts_ns
                held = self.residence.setdefault(s.host, _Residence())
                held.count += 1
                held.max_ns = max(held.max_ns, gap)
                reservoir(held.samples, held.count, gap, self.rng, SAMPLES)
                return

    def _legs(self, match: Match) -> None:
        parsed = _parse(match.linktype, match.head)
        if parsed is None:
            return
        src, dst, proto, sport, dport = parsed
        sightings = match.sightings
        inbound_hosts = {s.host for s in sightings if s.direction == INBOUND}
        outbound_hosts = {s.host for s in sightings if s.direction == OUTBOUND}
        # Learn addresses where no host declared any: a packet a host sent and did not
        # forward is from it; one that arrived at one host only, not forwarded, is to it.
        for h in sorted(outbound_hosts - inbound_hosts):  # in host order, as in C
            if not self.declared[h]:
                self.owner.setdefault(src, h)
        ends = inbound_hosts - outbound_hosts
        if len(ends) == 1:
            (h,) = ends
            if not self.declared[h]:
                self.owner.setdefault(dst, h)
        receiver = self.owner.get(dst)
        for s in sightings:
            if s.direction != OUTBOUND or s.host == receiver:
                continue
            arrivals = sorted(
                o.ts_ns for o in sightings if o.host == receiver and o.direction == INBOUND
            )
            if arrivals and receiver is not None:
                self._arrived(s.host, receiver, dst, s.ts_ns, arrivals)
            elif receiver is None or self._would_capture(receiver, match):
                self._lost(s.host, dst, s.ts_ns, src, proto, sport, dport)

    def _arrived(
        self, sender: int, receiver: int, dst: bytes, t_send: int, arrivals: list[int]
    ) -> None:
        pair = self.pairs.get((sender, receiver))
        if pair is None:
            pair = self.pairs[(sender, receiver)] = _Pair()
        pair.arrived += 1
        pair.duplicated += len(arrivals) - 1
        t_recv = arrivals[0]
        reservoir(pair.samples, pair.arrived, (t_send, t_recv), self.rng, SAMPLES)
        if pair.widest is None or t_recv - t_send > pair.widest[1] - pair.widest[0]:
            pair.widest = (t_send, t_recv)
        flow = self._flow(sender, dst)
        if flow.latest_sent is not None and t_send < flow.latest_sent:
            flow.reordered += 1
        else:
            flow.latest_sent = t_send

    def _lost(
        self, sender: int, dst: bytes, t_send: int, src: bytes, proto: int, sport, dport
    ) -> None:
        flow = self._flow(sender, dst)
        flow.pending.add(t_send)
        if len(flow.examples) < 4 * EXAMPLES:  # some fall outside the window at the end
            flow.examples.append(
                {
                    "t_send": t_send,
                    "src": _text(src),
                    "dst": _text(dst),
                    "protocol": PROTOCOLS.get(proto, str(proto)),
                    "sport": sport,
                    "dport": dport,
                }
            )

    def _flow(self, sender: int, dst: bytes) -> _Flow:
        flow = self.flows.get((sender, dst))
        if flow is None:
            flow = self.flows[(sender, dst)] = _Flow()
        return flow

    def _would_capture(self, receiver: int, match: Match) -> bool:
        """The receiver's direction and filter (its window is checked at the end)."""
        host = self.hosts[receiver]
        if host.captures_inbound is False:
            return False
        if not host.filters:
            return True
        program = host.filters.get(LINKS.get(match.linktype, ""))
        if program is None:
            return True  # no program for this link: not ours to judge
        wire = None if len(match.head) < HEAD_BYTES else HEAD_BYTES + 1
        return selects(program, match.head, wire)

    # ------------------------------------------------------------ the C join's way
    def setup_c(self, join) -> None:
        """Hand the C join what the per-group work needs to know of the hosts."""
        hosts = []
        for host in self.hosts:
            filters = host.filters or {}
            inbound = -1 if host.captures_inbound is None else int(host.captures_inbound)
            hosts.append(
                (
                    sorted(host.addresses) if host.addresses else [],
                    inbound,
                    _program_bytes(filters.get("ether")),
                    _program_bytes(filters.get("raw")),
                )
            )
        join.journeys_setup(
            hosts,
            samples=SAMPLES,
            examples=4 * EXAMPLES,
            exact=LOST_EXACT,
            buckets=LOST_BUCKETS,
            seed=self.rng.state,
        )

    def load_c(self, state: dict) -> None:
        """What the C join kept, as the Python engine would have kept it."""
        self.first, self.last, self.inbound = state["first"], state["last"], state["inbound"]
        self.owner = {address: host for address, host in state["owner"]}
        for sender, receiver, arrived, duplicated, samples, widest in state["pairs"]:
            # The sample stays int64 pairs (16 bytes each) until result() reads it.
            self.pairs[(sender, receiver)] = _Pair(
                arrived, duplicated, array("q", samples), tuple(widest)
            )
        for sender, dst, latest, reordered, exact, histogram, examples in state["flows"]:
            self.flows[(sender, dst)] = _Flow(
                latest,
                reordered,
                LostTimes.of(exact, histogram),
                [
                    {
                        "t_send": t,
                        "src": _text(src),
                        "dst": _text(dst),
                        "protocol": PROTOCOLS.get(proto, str(proto)),
                        "sport": sport,
                        "dport": dport,
                    }
                    for t, src, proto, sport, dport in examples
                ],
            )
        for host, count, samples, maximum in state["residence"]:
            self.residence[host] = _Residence(count, samples, maximum)

    # ------------------------------------------------------------- after the pass
    def add_interfaces(self, interfaces: Sequence[Sequence[Interface]]) -> None:
        """Addresses from each file's interface descriptions (after the pass: the
        readers met them on the way)."""
        for host, ifaces in enumerate(interfaces):
            for iface in ifaces:
                for code, value in iface.options:
                    if code == IF_IPV4ADDR and len(value) >= 4:
                        self.owner[bytes(value[:4])] = host
                    elif code == IF_IPV6ADDR and len(value) >= 16:
                        self.owner[bytes(value[:16])] = host

    def result(self, alignment: SolvedClocks | None) -> dict:
        """run.json's `journeys`, every time on the solved reference clock."""
        n = len(self.hosts)
        offsets = alignment.shifts_ns if alignment else self.priors
        rates = [r / 1e9 for r in alignment.rates_ppb] if alignment else [0.0] * n
        epoch = alignment.epoch_ns if alignment else 0

        def ref(host: int, t: int) -> int:
            """A host's time on the reference clock: undrifted, less its offset."""
            return t - round(rates[host] * (t - epoch)) - offsets[host]

        windows = [self._window(h, ref) for h in range(n)]
        pairs: dict[tuple[int, int], dict] = {}
        for (sender, receiver), pair in self.pairs.items():
            entry = pairs.setdefault((sender, receiver), _empty(self, sender, receiver))
            entry["arrived"] = pair.arrived
            entry["duplicated"] = pair.duplicated
            # ref() inlined: 1024 samples x 600 pairs on the fleet profile.
            rate_s, rate_r = rates[sender], rates[receiver]
            off_s, off_r = offsets[sender], offsets[receiver]
            samples = pair.samples
            if isinstance(samples, array):  # from the C join: t_send, t_recv, t_send, ...
                samples = zip(samples[0::2], samples[1::2])
            points = [
                (a - round(rate_s * (a - epoch)) - off_s, b - round(rate_r * (b - epoch)) - off_r)
                for a, b in samples
            ]
            delays = sorted([y - x for x, y in points])
            widest = ref(receiver, pair.widest[1]) - ref(sender, pair.widest[0])
            entry["delay_ns"] = {
                "p50": _percentile(delays, 50),
                "p90": _percentile(delays, 90),
                "p99": _percentile(delays, 99),
                "max": max(widest, delays[-1]),
            }
            entry["delay_sampled"] = len(delays)
            series = sorted([(x, y - x) for x, y in points])
            step = max(1, math.ceil(len(series) / SERIES_POINTS))
            entry["delay_series"] = [list(p) for p in series[::step]]
        lost_times: dict[tuple[int, int], list[int]] = {}
        for (sender, dst), flow in self.flows.items():
            receiver = self.owner.get(dst)
            if receiver is None or receiver == sender:
                continue
            window = windows[receiver]
            inbound = self.hosts[receiver].captures_inbound
            if (
                window is None
                or inbound is False
                or (inbound is None and not self.inbound[receiver])
            ):
                continue
            entry = pairs.setdefault((sender, receiver), _empty(self, sender, receiver))
            entry["reordered"] += flow.reordered
            start, end = window
            # A packet sent just before the receiver's window closed may arrive after it:
            # the receiver could not have seen it, so it did not "leave" for it. The pair's
            # largest delay seen is the margin (none known: no margin).
            end -= entry["delay_ns"]["max"] if entry.get("delay_ns") else 0
            times = [
                (r, count)
                for r, count in ((ref(sender, t), count) for t, count in flow.pending.times())
                if start <= r <= end
            ]
            lost_times.setdefault((sender, receiver), []).extend(times)
            entry["lost"] += sum(count for _, count in times)
            for example in flow.examples:
                t = ref(sender, example["t_send"])
                if start <= t <= end and len(entry["lost_examples"]) < 4 * EXAMPLES:
                    shown = {k: v for k, v in example.items() if k != "t_send"}
                    entry["lost_examples"].append({"time_ns": t, **shown})
        out = []
        for key in sorted(pairs):
            entry = pairs[key]
            entry["left"] = entry["arrived"] + entry["lost"]
            if not entry["left"]:
                continue  # only packets outside the receiver's window: no exchange
            entry["lost_examples"] = sorted(entry["lost_examples"], key=lambda e: e["time_ns"])[
                :EXAMPLES
            ]
            entry["timeline"] = self._timeline(key, entry, lost_times.get(key, []), ref, windows)
            out.append(entry)
        return {
            "pairs": out,
            "residence": [
                {
                    "host": self.hosts[h].name,
                    "packets": held.count,
                    "delay_ns": _percentiles(sorted(held.samples), held.max_ns),
                }
                for h, held in sorted(self.residence.items())
            ],
            "addresses": {
                host.name: sorted(_text(a) for a, h in self.owner.items() if h == index)
                for index, host in enumerate(self.hosts)
            },
            "packet_ids": self.marks.packets if self.marks else 0,
            "delay_sample_size": SAMPLES,
            "note": "delay percentiles from a uniform sample of at most "
            f"{SAMPLES} arrivals per pair (exact below that), max from every packet; "
            "times on the solved reference clock",
        }

    def _window(self, host: int, ref) -> tuple[int, int] | None:
        declared = self.hosts[host].window_ns
        if declared and declared[1] > declared[0]:
            return ref(host, declared[0]), ref(host, declared[1])
        if self.first[host] is None:
            return None
        return ref(host, self.first[host]), ref(host, self.last[host])

    def _timeline(self, key, entry, lost: list[tuple[int, int]], ref, windows) -> dict:
        """Lost packets over time, in TIMELINE_BUCKETS buckets over the receiver's window."""
        window = windows[key[1]]
        if window is None:
            return {"start_ns": 0, "width_ns": 0, "lost": []}
        start, end = window
        width = max(1, math.ceil((end - start + 1) / TIMELINE_BUCKETS))
        counts = [0] * TIMELINE_BUCKETS
        for t, count in lost:
            counts[min((t - start) // width, TIMELINE_BUCKETS - 1)] += count
        return {"start_ns": start, "width_ns": width, "lost": counts}


def _empty(journeys: Journeys, sender: int, receiver: int) -> dict:
    return {
        "sender": journeys.hosts[sender].name,
        "receiver": journeys.hosts[receiver].name,
        "left": 0,
        "arrived": 0,
        "lost": 0,
        "duplicated": 0,
        "reordered": 0,
        "delay_ns": None,
        "delay_sampled": 0,
        "delay_series": [],
        "lost_examples": [],
    }


def _percentile(ordered: list[int], p: int) -> int | None:
    """Nearest rank: the smallest value with at least p % of them at or below it."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p * len(ordered) / 100) - 1)]


def _percentiles(ordered: list[int], maximum: int) -> dict:
    return {
        "p50": _percentile(ordered, 50),
        "p90": _percentile(ordered, 90),
        "p99": _percentile(ordered, 99),
        "max": maximum,
    }


def _parse(linktype: int, head: bytes) -> tuple[bytes, bytes, int, int | None, int | None] | None:
    """(source, destination, protocol, source port, destination port) of an IP frame."""
    ip = _ip_payload(linktype, head)
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        proto, src, dst, l4 = ip[9], ip[12:16], ip[16:20], ip[ihl:]
        if struct.unpack_from("!H", ip, 6)[0] & 0x1FFF:
            l4 = b""  # a later fragment: no ports
    elif version == 6 and len(ip) >= 40:
        proto, src, dst, l4 = ip[6], ip[8:24], ip[24:40], ip[40:]
    else:
        return None
    if proto in (6, 17, 132) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
        return bytes(src), bytes(dst), proto, sport, dport
    return bytes(src), bytes(dst), proto, None, None


def _program_bytes(program: Program | None) -> bytes | None:
    """A checked cBPF program as struct sock_filter, little-endian (_fastmerge.c runs it)."""
    if not program:
        return None
    return b"".join(struct.pack("<HBBI", i.code, i.jt, i.jf, i.k) for i in program)


def _text(address: bytes) -> str:
    return str(ipaddress.ip_address(address))


def parse_address(text: str) -> bytes:
    """A summary's address ("10.0.0.1" or "10.0.0.1/24") packed."""
    return ipaddress.ip_interface(text).ip.packed
