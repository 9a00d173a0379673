"""One filter, three engines, the same verdicts: tcpdump (libpcap's own interpreter), the
kernel's classic BPF (a socket filter), and our translation to C running in XDP.

Every corpus expression is compiled once by xdpcap (a dead Ethernet handle), checked, and
translated; all translations go into one XDP program per expression function, compiled by
bcc in one go and run with BPF_PROG_TEST_RUN on the fixed corpus and on seeded mutations
of it. tcpdump reads the same frames from a pcap file with the same expression.
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

from .bpf_test_run import XDP_DROP, XDP_PASS, prog_test_run
from .filter_corpus import EXPRESSIONS, corpus_frames, mutated_frames, tcpdump_selects, write_pcap
from .socket_filter import KernelSocketFilter

MUTATION_SEEDS = (11, 12, 13)
MUTATIONS_PER_SEED = 150


@dataclass(frozen=True)
class Case:
    expression: str
    program: cbpf.Program
    function: str  # the XDP function running its translation


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
    parts = ["#include <uapi/linux/bpf.h>"]
    for case in cases:
        parts.append(to_c.translate(case.program, name=f"{case.function}_c"))
        parts.append(
            f"int {case.function}(struct xdp_md *ctx)\n"
            "{\n"
            "\tconst __u8 *data = (const __u8 *)(long)ctx->data;\n"
            "\tconst __u8 *end = (const __u8 *)(long)ctx->data_end;\n"
            f"\treturn {case.function}_c(data, end, bpf_xdp_get_buff_len(ctx))"
            " ? XDP_PASS : XDP_DROP;\n"
            "}\n"
        )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def xdp_programs():
    """Function name → loaded XDP program fd: every translation, one bcc compile."""
    bcc = import_bcc()
    with tempfile.TemporaryDirectory(prefix="xdpcap-filter-test-") as workdir:
        apply_environment(find_kernel_headers(Path(workdir)))
        bpf = bcc.BPF(text=_xdp_source(CASES).encode(), cflags=["-Wno-unused-value"])
        try:
            yield {
                c.function: int(bpf.load_func(c.function.encode(), bcc.BPF.XDP).fd) for c in CASES
            }
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


def test_only_loops_are_refused() -> None:
    """libpcap's `protochain` loops back; the kernel (and we) allow forward jumps only."""
    assert REFUSED, "the corpus should hold a protochain expression"
    for expression, reason in REFUSED.items():
        assert "protochain" in expression, (expression, reason)
        assert "backwards" in reason
    assert len(CASES) >= 100


@pytest.mark.parametrize("frame_set", list(FRAME_SETS))
def test_three_engines_agree(xdp_programs, pcaps, frame_set: str) -> None:
    frames = FRAME_SETS[frame_set]
    disagreements = []
    selected_somewhere = 0
    for case in CASES:
        by_tcpdump = set(tcpdump_selects(pcaps[frame_set], case.expression))
        kernel = KernelSocketFilter(case.program)
        try:
            by_kernel = {i for i, frame in enumerate(frames) if kernel.accepts(frame)}
        finally:
            kernel.close()
        verdicts = [prog_test_run(xdp_programs[case.function], frame) for frame in frames]
        assert set(verdicts) <= {XDP_PASS, XDP_DROP}
        by_xdp = {i for i, verdict in enumerate(verdicts) if verdict == XDP_PASS}
        if not by_tcpdump == by_kernel == by_xdp:
            disagreements.append(
                (
                    case.expression,
                    sorted(by_tcpdump ^ by_xdp)[:5],
                    sorted(by_tcpdump ^ by_kernel)[:5],
                )
            )
        selected_somewhere += bool(by_tcpdump)
    assert not disagreements, f"(expression, xdp≠tcpdump, kernel≠tcpdump): {disagreements}"
    # The comparison means something only if the frames make the filters choose.
    assert selected_somewhere >= len(CASES) // 2
