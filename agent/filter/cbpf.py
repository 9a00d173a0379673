"""Classic BPF programs: the instruction list, its canonical text, and the checker.

The canonical text is the one `tcpdump -ddd` prints, on one line (the form iptables'
xt_bpf takes): "N,code jt jf k,code jt jf k,...". It crosses SSH to the agent, and the
program cache keys on it, so the same program from any spelling of an expression
shares one compiled sampler.

`check()` accepts exactly what Linux's own classic-BPF checker (bpf_check_classic and
check_load_and_stores in net/core/filter.c) accepts, minus the ancillary "extension"
loads and negative offsets, which only mean something on a socket and which XDP cannot
run. A program that passes it is safe to translate; a tampered or hand-made one is
refused with one line before the translator ever sees it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..errors import UsageError

MAX_INSNS = 4096  # BPF_MAXINSNS
MEMWORDS = 16  # BPF_MEMWORDS: the scratch memory M[0..15]

# Instruction classes and fields (linux/bpf_common.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00,
    0x10,
    0x20,
    0x30,
    0x40,
    0x50,
    0x60,
    0x70,
    0x80,
    0x90,
    0xA0,
)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08  # source operand
RET_A = 0x10
TAX, TXA = 0x00, 0x80

SIZE_BYTES = {W: 4, H: 2, B: 1}
ALU_OPS = (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR)
COND_JUMPS = (JEQ, JGT, JGE, JSET)

# Every opcode Linux's checker knows (its codes[] table).
OPCODES: frozenset[int] = frozenset(
    [ALU | op | src for op in ALU_OPS for src in (K, X)]
    + [ALU | NEG]
    + [LD | size | mode for size in (W, H, B) for mode in (ABS, IND)]
    + [LD | W | LEN, LD | IMM, LD | MEM]
    + [LDX | W | LEN, LDX | B | MSH, LDX | IMM, LDX | MEM]
    + [ST, STX, MISC | TAX, MISC | TXA, RET | K, RET | RET_A, JMP | JA]
    + [JMP | op | src for op in COND_JUMPS for src in (K, X)]
)

# Packet offsets from 2**31 on are the kernel's negative "extension" offsets
# (SKF_AD_OFF, SKF_NET_OFF, SKF_LL_OFF): socket-only, so refused here.
NEGATIVE_OFFSET = 1 << 31


class Insn(NamedTuple):
    """One `struct sock_filter`: opcode, jump-if-true, jump-if-false, constant."""

    code: int
    jt: int
    jf: int
    k: int


Program = tuple[Insn, ...]


class FilterError(UsageError):
    """A filter expression or program that cannot be used (exit 2, one line)."""


def opclass(code: int) -> int:
    return code & 0x07


def size_of(code: int) -> int:
    return code & 0x18


def mode_of(code: int) -> int:
    return code & 0xE0


def op_of(code: int) -> int:
    return code & 0xF0


def src_of(code: int) -> int:
    return code & 0x08


# -- canonical text --------------------------------------------------------------------
_CANONICAL = re.compile(r"[0-9]+(,[0-9]+ [0-9]+ [0-9]+ [0-9]+)+")


def to_text(program: Sequence[Insn]) -> str:
    """The canonical one-line text: "N,code jt jf k,..." (as `tcpdump -ddd`, joined)."""
    return ",".join([str(len(program))] + [f"{i.code} {i.jt} {i.jf} {i.k}" for i in program])


def from_text(text: str) -> Program:
    """Parse the canonical text strictly; check() must still run on the result."""
    if len(text) > 64 + 32 * MAX_INSNS or not _CANONICAL.fullmatch(text):
        raise FilterError("filter program: not a cBPF program text (N,code jt jf k,...)")
    count, *rows = text.split(",")
    insns = []
    for row in rows:
        code, jt, jf, k = (int(field) for field in row.split(" "))
        if code > 0xFFFF or jt > 0xFF or jf > 0xFF or k > 0xFFFFFFFF:
            raise FilterError(f"filter program: field out of range in {row!r}")
        insns.append(Insn(code, jt, jf, k))
    if int(count) != len(insns):
        raise FilterError(f"filter program: says {int(count)} instructions, holds {len(insns)}")
    return tuple(insns)


# -- the checker -----------------------------------------------------------------------
def check(program: Sequence[Insn]) -> Program:
    """Accept the program only if Linux's classic-BPF checker would (no extensions).

    Returns it as a tuple; raises FilterError naming the first bad instruction.
    """
    length = len(program)
    if not 1 <= length <= MAX_INSNS:
        raise FilterError(f"filter program: {length} instructions (1 to {MAX_INSNS} allowed)")
    for pc, insn in enumerate(program):
        _check_insn(pc, insn, length)
    if opclass(program[-1].code) != RET:
        raise FilterError("filter program: the last instruction is not a return")
    _check_scratch_loads(program)
    return tuple(program)


def _check_insn(pc: int, insn: Insn, length: int) -> None:
    code, jt, jf, k = insn
    where = f"filter program: instruction {pc} ({code:#x})"
    if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF and 0 <= k <= 0xFFFFFFFF):
        raise FilterError(f"{where}: field out of range")
    if code not in OPCODES:
        raise FilterError(f"{where}: unknown opcode")
    cls, op = opclass(code), op_of(code)
    if cls == ALU and op in (DIV, MOD) and src_of(code) == K and k == 0:
        raise FilterError(f"{where}: division by the constant 0")
    if cls == ALU and op in (LSH, RSH) and src_of(code) == K and k >= 32:
        raise FilterError(f"{where}: shift by {k} bits")
    uses_scratch = (cls in (LD, LDX) and mode_of(code) == MEM) or cls in (ST, STX)
    if uses_scratch and k >= MEMWORDS:
        raise FilterError(f"{where}: scratch memory index {k} (0 to {MEMWORDS - 1})")
    if cls == LD and mode_of(code) in (ABS, IND) and k >= NEGATIVE_OFFSET:
        raise FilterError(f"{where}: negative or extension offset {k:#x}")
    if cls == JMP:
        if op == JA:
            if k >= NEGATIVE_OFFSET:  # libpcap loops this way for `protochain`
                raise FilterError(
                    f"{where}: jumps backwards (a loop, as libpcap compiles `protochain`): "
                    "classic BPF in the kernel allows forward jumps only"
                )
            if k >= length - pc - 1:
                raise FilterError(f"{where}: jump past the end")
        elif pc + jt + 1 >= length or pc + jf + 1 >= length:
            raise FilterError(f"{where}: jump past the end")


def _check_scratch_loads(program: Sequence[Insn]) -> None:
    """Every M[k] read is preceded by a write on every path (check_load_and_stores).

    Jumps only go forward, so one pass in order sees every predecessor of an
    instruction before the instruction itself.
    """
    every = (1 << MEMWORDS) - 1
    masks = [every] * len(program)
    valid = 0
    for pc, (code, jt, jf, k) in enumerate(program):
        valid &= masks[pc]
        cls = opclass(code)
        if cls in (ST, STX):
            valid |= 1 << k
        elif cls in (LD, LDX) and mode_of(code) == MEM:
            if not valid & (1 << k):
                raise FilterError(
                    f"filter program: instruction {pc} reads M[{k}] before any write to it"
                )
        elif cls == JMP:
            if op_of(code) == JA:
                masks[pc + 1 + k] &= valid
            else:
                masks[pc + 1 + jt] &= valid
                masks[pc + 1 + jf] &= valid
            valid = every


def jump_targets(program: Iterable[Insn]) -> set[int]:
    """Indexes some jump lands on (where the translator needs a label)."""
    targets = set()
    for pc, (code, jt, jf, k) in enumerate(program):
        if opclass(code) != JMP:
            continue
        if op_of(code) == JA:
            targets.add(pc + 1 + k)
        else:
            targets.update((pc + 1 + jt, pc + 1 + jf))
    return targets
