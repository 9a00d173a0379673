"""One filter, four engines, the same verdicts: tcpdump (libpcap's own interpreter), the
kernel's classic BPF (a socket filter), and our translation to C running in XDP and in tc.

Every corpus expression is compiled once by xdpcap (a dead Ethernet handle), checked, and
translated; all translations go into one XDP and one tc program per expression, compiled
by bcc in one go and run with BPF_PROG_TEST_RUN on the fixed corpus and on seeded
mutations of it. tcpdump reads the same frames from a pcap file with the same expression.
The kernel refuses loops (libpcap's `protochain`): for those, tcpdump alone is the oracle.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from xdpcap.agent.bcc_import import import_bcc
from xdpcap.agent.filter import cbpf, libpcap, to_c
from xdpcap.agent.filter.cbpf import FilterError
from xdpcap.agent.headers import apply_environment, find_kernel_headers

from .bpf_test_run import TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS, prog_test_run
from .filter_corpus import (
    EXPRESSIONS,
    corpus_frames,
    mutated_frames,
    tcpdump_selects,
    write_pcap,
)
from .socket_filter import KernelSocketFilter, kernel_accepts

MUTATION_SEEDS = (11, 12, 13)
ETH_HLEN = 14
MUTATIONS_PER_SEED = 150


@dataclass(frozen=True)
class Case:
    expression: str
    program: cbpf.Program
    function: str  # the XDP function running its translation; function + "_tc" on tc

    @property
    def loops(self) -> bool:
        return bool(cbpf.backward_jumps(self.program))


def _cases() -> tuple[list[Case], dict[str, str]]:
    """Expressions our checker accepts (as cases), and those it refuses (with why)."""
    cases: list[Case] = []
    refused: dict[str, str] = {}
    for i, expression in enumerate(EXPRESSIONS):
        try:
            program = cbpf.check(libpcap.compile_expression(expression, "ether"))
        except FilterError as exc:
            refused[expression] = str(exc)
        else:
            cases.append(Case(expression, program, f"filter_{i}"))
    return cases, refused


CASES, REFUSED = _cases()


def _xdp_source(cases: list[Case]) -> str:
    parts = ["#include <uapi/linux/bpf.h>", "#include <uapi/linux/pkt_cls.h>"]
    for case in cases:
        parts.append(to_c.translate(case.program, name=f"{case.function}_c"))
        parts.append(to_c.translate(case.program, name=f"{case.function}_skb", skb=True))
        parts.append(
            f"int {case.function}(struct xdp_md *ctx)\n"
            "{\n"
            "\tconst __u8 *data = (const __u8 *)(long)ctx->data;\n"
            "\tconst __u8 *end = (const __u8 *)(long)ctx->data_end;\n"
            f"\treturn {case.function}_c(data, end, bpf_xdp_get_buff_len(ctx))"
            " ? XDP_PASS : XDP_DROP;\n"
            "}\n"
            f"int {case.function}_tc(struct __sk_buff *skb)\n"
            "{\n"
            "\tconst __u8 *data = (const __u8 *)(long)skb->data;\n"
            "\tconst __u8 *end = (const __u8 *)(long)skb->data_end;\n"
            f"\treturn {case.function}_skb(skb, data, end, skb->len)"
            " ? TC_ACT_OK : TC_ACT_SHOT;\n"
            "}\n"
        )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def xdp_programs():
    """Function name → loaded program fd (XDP, and tc as name + "_tc"): every
    translation, one bcc compile."""
    bcc = import_bcc()
    with tempfile.TemporaryDirectory(prefix="xdpcap-filter-test-") as workdir:
        apply_environment(find_kernel_headers(Path(workdir)))
        bpf = bcc.BPF(text=_xdp_source(CASES).encode(), cflags=["-Wno-unused-value"])
        try:
            fds = {}
            for c in CASES:
                fds[c.function] = int(bpf.load_func(c.function.encode(), bcc.BPF.XDP).fd)
                tc = f"{c.function}_tc"
                fds[tc] = int(bpf.load_func(tc.encode(), bcc.BPF.SCHED_CLS).fd)
            yield fds
        finally:
            bpf.cleanup()


def _frame_sets() -> dict[str, list[bytes]]:
    sets = {"corpus": corpus_frames()}
    for seed in MUTATION_SEEDS:
        sets[f"mutated-{seed}"] = mutated_frames(seed, MUTATIONS_PER_SEED)
    return sets


FRAME_SETS = _frame_sets()


@pytest.fixture(scope="module")
def pcaps(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("filter-frames")
    paths = {}
    for name, frames in FRAME_SETS.items():
        paths[name] = folder / f"{name}.pcap"
        write_pcap(paths[name], frames)
    return paths


def _tc_test_run_takes(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN refuses (EINVAL) a tc run on an IPv4 or IPv6 frame too short for
    its network header (measured on 6.18: under 14 + 20 and 14 + 40 bytes)."""
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00":
        return len(frame) >= ETH_HLEN + 20
    if ethertype == b"\x86\xdd":
        return len(frame) >= ETH_HLEN + 40
    return True


def _kernel_selects(case: Case, frames: list[bytes]) -> set[int]:
    kernel = KernelSocketFilter(case.program)
    try:
        return {i for i, frame in enumerate(frames) if kernel.accepts(frame)}
    finally:
        kernel.close()


def test_every_expression_is_accepted_loops_included() -> None:
    """libpcap's `protochain` loops back: the kernel refuses it, we bound it."""
    assert not REFUSED, REFUSED
    loops = [c.expression for c in CASES if c.loops]
    assert len(loops) == sum("protochain" in e for e in EXPRESSIONS) >= 3, loops
    assert all(not kernel_accepts(c.program) for c in CASES if c.loops)
    assert len(CASES) >= 100


@pytest.mark.parametrize("frame_set", list(FRAME_SETS))
def test_four_engines_agree(xdp_programs, pcaps, frame_set: str) -> None:
    frames = FRAME_SETS[frame_set]
    tc_frames = [i for i, frame in enumerate(frames) if _tc_test_run_takes(frame)]
    disagreements = []
    selected_somewhere = 0
    for case in CASES:
        by_tcpdump = set(tcpdump_selects(pcaps[frame_set], case.expression))
        by_kernel = by_tcpdump if case.loops else _kernel_selects(case, frames)
        verdicts = [prog_test_run(xdp_programs[case.function], frame) for frame in frames]
        assert set(verdicts) <= {XDP_PASS, XDP_DROP}
        by_xdp = {i for i, verdict in enumerate(verdicts) if verdict == XDP_PASS}
        tc_verdicts = {
            i: prog_test_run(xdp_programs[f"{case.function}_tc"], frames[i]) for i in tc_frames
        }
        assert set(tc_verdicts.values()) <= {TC_ACT_OK, TC_ACT_SHOT}
        by_tc = {i for i, verdict in tc_verdicts.items() if verdict == TC_ACT_OK}
        if not by_tcpdump == by_kernel == by_xdp or by_tc != by_tcpdump & set(tc_frames):
            disagreements.append(
                (
                    case.expression,
                    sorted(by_tcpdump ^ by_xdp)[:5],
                    sorted((by_tcpdump & set(tc_frames)) ^ by_tc)[:5],
                    sorted(by_tcpdump ^ by_kernel)[:5],
                )
            )
        selected_somewhere += bool(by_tcpdump)
    assert not disagreements, (
        f"(expression, xdp≠tcpdump, tc≠tcpdump, kernel≠tcpdump): {disagreements}"
    )
    # The comparison means something only if the frames make the filters choose.
    assert selected_somewhere >= len(CASES) // 2
