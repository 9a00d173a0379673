"""From the hosts' captures to bounds on their clock offsets.

With o_H the clock of host H minus the reference clock, a time t read on H happened at
t − o_H in the reference's time. Two rules bound the offsets:

- The same packet leaving A at t_A (A's egress) and arriving at B at t_B (B's ingress)
  cannot arrive before it left: t_B − o_B ≥ t_A − o_A, so o_B − o_A ≤ t_B − t_A.
  Packets the other way bound the difference from the other side (the NTP idea, with the
  capture points measuring the one-way delays themselves).
- An answer cannot be seen before its question was: an echo reply seen on Y at t_Y and
  its request seen on X at t_X (any direction, X ≠ Y) give o_Y − o_X ≤ t_Y − t_X. This
  works with ingress-only captures too.

Only the tightest bound per ordered pair of hosts matters for constant offsets; the raw
delays of matched packets are kept (a bounded sample) for the one-way delay report.

The pass reads every host's file once, at most MAX_PACKETS packets each: memory stays
bounded however long the capture, and a long capture's first 200,000 packets per host
hold far more pairs than the offsets need.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...agent.pcapng_reader import CaptureReader
from .observe import INBOUND, OUTBOUND, identify

MAX_PACKETS = 200_000  # read per host
# Observations of one packet further apart than this (after the prior correction) are
# not the same packet: a retransmission, or an id that wrapped.
MATCH_WINDOW_NS = 2_000_000_000
MAX_COPIES = 8  # a key seen more often than this is ambiguous: skipped
DELAY_SAMPLES = 100_000  # kept per ordered host pair, for the median


@dataclass
class Bound:
    """The tightest bound o_to − o_from ≤ limit_ns found, and what gave it."""

    limit_ns: int
    kind: str  # "same packet" or "answer"
    count: int = 0  # how many observations bounded this pair at all


@dataclass
class DelaySample:
    """A uniform sample (reservoir) of at most DELAY_SAMPLES values, and how many there were."""

    values: list[int] = field(default_factory=list)
    count: int = 0

    def add(self, value: int, rng: random.Random) -> None:
        self.count += 1
        if len(self.values) < DELAY_SAMPLES:
            self.values.append(value)
        else:
            slot = rng.randrange(self.count)
            if slot < DELAY_SAMPLES:
                self.values[slot] = value


@dataclass
class Constraints:
    hosts: list[str]
    # (from, to) host index → o_to − o_from ≤ bound.limit_ns
    bounds: dict[tuple[int, int], Bound] = field(default_factory=dict)
    # (sender, receiver) → raw t_receiver − t_sender of packets seen on both (a sample)
    delays: dict[tuple[int, int], DelaySample] = field(default_factory=dict)
    packets_read: list[int] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # hosts read only in part

    def add(self, a: int, b: int, limit_ns: int, kind: str) -> None:
        bound = self.bounds.get((a, b))
        if bound is None:
            self.bounds[(a, b)] = Bound(limit_ns, kind, 1)
            return
        bound.count += 1
        if limit_ns < bound.limit_ns:
            bound.limit_ns, bound.kind = limit_ns, kind


# One observation: (host index, time on that host, time after the prior correction,
# direction).
_Seen = tuple[int, int, int, int]


def gather(
    paths: Sequence[str | os.PathLike[str]], names: Sequence[str], priors_ns: Sequence[int]
) -> Constraints:
    """Read each file (host i = paths[i], its prior offset priors_ns[i]) and bound."""
    result = Constraints(list(names))
    packets: dict[bytes, list[_Seen]] = {}
    questions: dict[bytes, list[_Seen]] = {}
    answers: dict[bytes, list[_Seen]] = {}
    for host, path in enumerate(paths):
        read = 0
        reader = CaptureReader(path, strict=False)
        for packet in reader.packets():
            if read >= MAX_PACKETS:
                result.truncated.append(names[host])
                break
            read += 1
            identity = identify(reader.interfaces[packet.if_id].linktype, packet.data)
            if identity is None:
                continue
            seen = (host, packet.ts_ns, packet.ts_ns - priors_ns[host], (packet.flags or 0) & 3)
            packets.setdefault(identity.packet, []).append(seen)
            if identity.question is not None:
                questions.setdefault(identity.question, []).append(seen)
            elif identity.answer is not None:
                answers.setdefault(identity.answer, []).append(seen)
        result.packets_read.append(read)
    rng = random.Random(0)  # the delay sample: the same files give the same report
    for copies in packets.values():
        if 2 <= len(copies) <= MAX_COPIES:
            _same_packet(result, copies, rng)
    for key, asked in questions.items():
        answered = answers.get(key)
        if answered and len(asked) <= MAX_COPIES and len(answered) <= MAX_COPIES:
            _answer_after_question(result, asked, answered)
    return result


def _same_packet(result: Constraints, copies: list[_Seen], rng: random.Random) -> None:
    for sender, t_sent, aligned_sent, direction in copies:
        if direction != OUTBOUND:
            continue
        arrivals = [
            c
            for c in copies
            if c[3] == INBOUND and c[0] != sender and abs(c[2] - aligned_sent) <= MATCH_WINDOW_NS
        ]
        for receiver in {c[0] for c in arrivals}:
            # The nearest copy on that host is this packet's arrival.
            _, t_arrived, _, _ = min(
                (c for c in arrivals if c[0] == receiver), key=lambda c: abs(c[2] - aligned_sent)
            )
            raw = t_arrived - t_sent
            result.add(sender, receiver, raw, "same packet")
            result.delays.setdefault((sender, receiver), DelaySample()).add(raw, rng)


def _answer_after_question(result: Constraints, asked: list[_Seen], answered: list[_Seen]) -> None:
    for answer_host, t_answer, aligned_answer, _ in answered:
        for question_host, t_question, aligned_question, _ in asked:
            if question_host == answer_host:
                continue
            if abs(aligned_answer - aligned_question) <= MATCH_WINDOW_NS:
                result.add(question_host, answer_host, t_answer - t_question, "answer")
