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

The times of every bounding pair are kept (a bounded uniform sample per host pair): a
drifting clock is estimated from how the bounds move over the capture (drift.py)
before the tightest bound per pair is taken, and the one-way delays are reported.

The pass reads every host's file once, at most MAX_PACKETS packets each: memory stays
bounded however long the capture, and a long capture's first 200,000 packets per host
hold far more pairs than the offsets need.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..merge.reader import CaptureReader
from .observe import INBOUND, OUTBOUND, identify

MAX_PACKETS = 200_000  # read per host
# Observations of one packet further apart than this (after the prior correction) are
# not the same packet: a retransmission, or an id that wrapped.
MATCH_WINDOW_NS = 2_000_000_000
MAX_COPIES = 8  # a key seen more often than this is ambiguous: skipped
SAMPLES = 100_000  # kept per ordered host pair and kind


@dataclass
class PairSamples:
    """What bounds o_to − o_from for one ordered pair of hosts: (t_from, t_to) times of
    a packet seen leaving `from` and arriving at `to` (`same`), or of a question seen
    on `from` and its answer on `to` (`answers`); each a bounded uniform sample."""

    same: list[tuple[int, int]] = field(default_factory=list)
    answers: list[tuple[int, int]] = field(default_factory=list)
    same_count: int = 0
    answer_count: int = 0

    def add(self, t_from: int, t_to: int, same: bool, rng: random.Random) -> None:
        if same:
            self.same_count += 1
            _reservoir(self.same, self.same_count, (t_from, t_to), rng)
        else:
            self.answer_count += 1
            _reservoir(self.answers, self.answer_count, (t_from, t_to), rng)


@dataclass
class Constraints:
    hosts: list[str]
    samples: dict[tuple[int, int], PairSamples] = field(default_factory=dict)
    packets_read: list[int] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # hosts read only in part

    def pair(self, a: int, b: int) -> PairSamples:
        return self.samples.setdefault((a, b), PairSamples())


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
    rng = random.Random(0)  # the samples: the same files give the same result
    for copies in packets.values():
        if 2 <= len(copies) <= MAX_COPIES:
            _same_packet(result, copies, rng)
    for key, asked in questions.items():
        answered = answers.get(key)
        if answered and len(asked) <= MAX_COPIES and len(answered) <= MAX_COPIES:
            _answer_after_question(result, asked, answered, rng)
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
            result.pair(sender, receiver).add(t_sent, t_arrived, True, rng)


def _answer_after_question(
    result: Constraints, asked: list[_Seen], answered: list[_Seen], rng: random.Random
) -> None:
    for answer_host, t_answer, aligned_answer, _ in answered:
        for question_host, t_question, aligned_question, _ in asked:
            if question_host == answer_host:
                continue
            if abs(aligned_answer - aligned_question) <= MATCH_WINDOW_NS:
                result.pair(question_host, answer_host).add(t_question, t_answer, False, rng)


def _reservoir(values: list, count: int, value: object, rng: random.Random) -> None:
    """Keep a uniform sample of at most SAMPLES values; `count` includes this one."""
    if len(values) < SAMPLES:
        values.append(value)
    else:
        slot = rng.randrange(count)
        if slot < SAMPLES:
            values[slot] = value
