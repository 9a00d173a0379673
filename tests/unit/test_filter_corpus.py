"""The frame corpus and tcpdump expressions behind the filter-translator differential tests:
deterministic, within AF_PACKET's bounds, and (checked with the real tcpdump) every
expression compiles, matters on the corpus, and together they use every cBPF opcode class."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.integration import filter_corpus as fc

pytestmark = pytest.mark.skipif(
    shutil.which("tcpdump") is None, reason="tcpdump is the oracle for the filter corpus"
)

# Listing prefixes (after collapsing spaces) that the expressions must produce between them.
REQUIRED_INSTRUCTIONS = (
    ("ldb [",),
    ("ldh [",),
    ("ld [",),
    ("ldxb 4*(",),
    ("ldb [x +", "ldh [x +", "ld [x +"),
    ("st M[",),
    ("ldx M[", "ld M["),
    ("ld #pktlen", "ld len"),
    ("tax",),
    ("txa",),
    ("ret",),
    ("jgt",),
    ("jge",),
    ("jeq",),
    ("jset",),
    ("neg",),
)
ALU_OPS = ("add", "sub", "mul", "div", "mod", "and", "or", "xor", "lsh", "rsh")
LISTING_LINE = re.compile(r"^\(\d+\)\s+(\S+)\s*(.*?)\s*(?:jt \d+\s+jf \d+)?$")


@pytest.fixture(scope="module")
def corpus_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.pcap"
    fc.write_pcap(path, fc.corpus_frames())
    return path


@pytest.fixture(scope="module")
def selections(corpus_pcap: Path) -> dict[str, list[int]]:
    return {expr: fc.tcpdump_selects(corpus_pcap, expr) for expr in fc.EXPRESSIONS}


@pytest.fixture(scope="module")
def listings(corpus_pcap: Path) -> dict[str, list[str]]:
    """Each expression's `tcpdump -d` listing, one "op operand" string per instruction."""
    found = {}
    for expr in fc.EXPRESSIONS:
        lines = fc.tcpdump_program(corpus_pcap, expr).splitlines()
        matches = [LISTING_LINE.match(line.strip()) for line in lines]
        assert all(matches), f"unexpected listing for {expr!r}: {lines}"
        found[expr] = [" ".join(filter(None, m.groups())) for m in matches if m]
    return found


def test_corpus_is_deterministic_and_unique() -> None:
    frames = fc.corpus_frames()
    assert frames == fc.corpus_frames()
    assert frames == list(fc._corpus.__wrapped__())  # rebuilt from scratch, not the cache
    assert len(set(frames)) == len(frames)


def test_corpus_frames_fit_af_packet_and_span_all_sizes() -> None:
    lengths = [len(frame) for frame in fc.corpus_frames()]
    assert 150 <= len(lengths) <= 300
    assert all(fc.MIN_FRAME <= n <= fc.MAX_FRAME for n in lengths)
    assert min(lengths) == 14 and max(lengths) == 1514
    assert sum(n <= 20 for n in lengths) >= 3  # runts


def test_mutated_frames_are_deterministic_per_seed_and_within_bounds() -> None:
    for seed in range(20):
        frames = fc.mutated_frames(seed, 200)
        assert frames == fc.mutated_frames(seed, 200)
        assert len(frames) == 200
        assert all(fc.MIN_FRAME <= len(f) <= fc.MAX_FRAME for f in frames)
    assert fc.mutated_frames(1, 50) != fc.mutated_frames(2, 50)
    assert fc.mutated_frames(3, 0) == []


def test_write_pcap_is_classic_little_endian_with_distinct_timestamps(tmp_path: Path) -> None:
    frames = [b"\x01" * 14, b"\x02" * 60, b"\x03" * 1514]
    path = tmp_path / "f.pcap"
    fc.write_pcap(path, frames)
    data = path.read_bytes()
    assert struct.unpack_from("<IHHiIII", data) == (0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    at, stamps = 24, []
    for frame in frames:
        sec, usec, caplen, length = struct.unpack_from("<IIII", data, at)
        assert caplen == length == len(frame)
        assert data[at + 16 : at + 16 + caplen] == frame
        stamps.append((sec, usec))
        at += 16 + caplen
    assert at == len(data)
    assert stamps == sorted(set(stamps))


def test_tcpdump_selects_returns_file_indexes(corpus_pcap: Path) -> None:
    frames = fc.corpus_frames()
    arp = [i for i, f in enumerate(frames) if f[12:14] == b"\x08\x06"]
    full = [i for i, f in enumerate(frames) if len(f) == 1514]
    assert fc.tcpdump_selects(corpus_pcap, "arp") == arp
    assert fc.tcpdump_selects(corpus_pcap, "len = 1514") == full
    assert fc.tcpdump_selects(corpus_pcap, "len >= 14") == list(range(len(frames)))


def test_tcpdump_failure_reports_its_stderr(corpus_pcap: Path) -> None:
    with pytest.raises(RuntimeError, match="syntax error"):
        fc.tcpdump_selects(corpus_pcap, "tcp and")


def test_tcpdump_reads_mutated_frames(tmp_path: Path) -> None:
    frames = fc.mutated_frames(7, 300)
    path = tmp_path / "mutated.pcap"
    fc.write_pcap(path, frames)
    selected = fc.tcpdump_selects(path, "ip or ip6 or vlan")
    assert selected == sorted(set(selected)) and 0 < len(selected) < len(frames)


def test_expressions_are_many_and_distinct() -> None:
    assert len(fc.EXPRESSIONS) >= 50
    assert len(set(fc.EXPRESSIONS)) == len(fc.EXPRESSIONS)


def test_every_expression_selects_some_corpus_frame(selections: dict[str, list[int]]) -> None:
    assert [expr for expr, picked in selections.items() if not picked] == []


def test_most_expressions_reject_some_corpus_frame(selections: dict[str, list[int]]) -> None:
    total = len(fc.corpus_frames())
    rejecting = [expr for expr, picked in selections.items() if len(picked) < total]
    assert len(rejecting) >= 40


def test_every_expression_compiles(listings: dict[str, list[str]]) -> None:
    assert [expr for expr, insns in listings.items() if not insns[-1].startswith("ret")] == []


def test_listings_use_every_opcode_class(listings: dict[str, list[str]]) -> None:
    instructions = {insn for insns in listings.values() for insn in insns}

    def present(prefix: str) -> bool:
        return any(insn.startswith(prefix) for insn in instructions)

    missing = [alts for alts in REQUIRED_INSTRUCTIONS if not any(map(present, alts))]
    # Each ALU operation both with a constant (`add #1`) and with the X register (`add x`).
    missing += [
        (f"{op} {src}",) for op in ALU_OPS for src in ("#", "x") if not present(f"{op} {src}")
    ]
    assert missing == []
