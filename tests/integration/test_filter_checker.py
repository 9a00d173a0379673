"""The agent's cBPF checker against Linux's own, on random programs.

The kernel (SO_ATTACH_FILTER runs bpf_check_classic) is the reference: on every program
without extension or negative offsets the two must agree exactly; with them, the kernel
may accept (they mean something on a socket) but xdpcap must refuse (not in XDP).
"""

from __future__ import annotations

import random

from xdpcap.agent.filter import cbpf, to_c
from xdpcap.agent.filter.cbpf import FilterError, Insn

from .socket_filter import kernel_accepts

PROGRAMS = 6000
INTERESTING_K = (0, 1, 2, 14, 15, 16, 31, 32, 33, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFF000)
CODES = sorted(cbpf.OPCODES)


def _random_insn(rng: random.Random, pc: int, length: int) -> Insn:
    # Now and then any 16 bits: mostly opcodes neither checker knows.
    code = rng.randrange(0x10000) if rng.random() < 0.03 else rng.choice(CODES)
    room = max(length - pc - 2, 0)
    jt = rng.randint(0, room + 1) if rng.random() < 0.9 else rng.randrange(256)
    jf = rng.randint(0, room + 1) if rng.random() < 0.9 else rng.randrange(256)
    if rng.random() < 0.6:
        k = rng.choice(INTERESTING_K)
    elif rng.random() < 0.5:
        k = rng.randint(0, room + 1)
    else:
        k = rng.randrange(1 << 32)
    return Insn(code, jt, jf, k)


def _random_program(rng: random.Random) -> list[Insn]:
    length = rng.randint(1, 12)
    program = [_random_insn(rng, pc, length) for pc in range(length)]
    if rng.random() < 0.8:  # most programs should end well, or nearly all are refused early
        program[-1] = Insn(rng.choice((cbpf.RET | cbpf.K, cbpf.RET | cbpf.RET_A)), 0, 0, 96)
    return program


def _uses_offsets_xdp_cannot_run(program: list[Insn]) -> bool:
    return any(
        cbpf.opclass(i.code) == cbpf.LD
        and cbpf.mode_of(i.code) in (cbpf.ABS, cbpf.IND)
        and i.k >= cbpf.NEGATIVE_OFFSET
        for i in program
    )


def _ours_accepts(program: list[Insn]) -> bool:
    try:
        cbpf.check(program)
    except FilterError:
        return False
    return True


def test_checker_agrees_with_the_kernel_on_random_programs() -> None:
    rng = random.Random(20261204)
    accepted = refused = 0
    disagreements = []
    for _ in range(PROGRAMS):
        program = _random_program(rng)
        ours, kernel = _ours_accepts(program), kernel_accepts(program)
        if _uses_offsets_xdp_cannot_run(program):
            if ours:
                disagreements.append(("accepted an extension/negative load", program))
            continue
        if ours != kernel:
            disagreements.append((f"ours {ours}, kernel {kernel}", program))
        accepted += ours
        refused += not ours
        if ours:
            to_c.translate(program)  # whatever passes must translate
    assert not disagreements, disagreements[:3]
    # Both outcomes must be common, or the comparison proves little.
    assert accepted > PROGRAMS // 10 and refused > PROGRAMS // 10, (accepted, refused)
