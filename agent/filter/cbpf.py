"""Classic BPF programs: the instruction list, its canonical text, and the checker.

The canonical text is the one `tcpdump -ddd` prints, on one line (the form iptables'
xt_bpf takes): "N,code jt jf k,code jt jf k,...". It crosses SSH to the agent, and the
program cache keys on it, so the same program from any spelling of an expression
shares one compiled sampler.

`check()` accepts what Linux's own classic-BPF checker (bpf_check_classic and
check_load_and_stores in net/core/filter.c) accepts, minus the ancillary "extension"
loads and negative offsets, which only mean something on a socket and which XDP cannot
run — plus one thing the kernel refuses: backward `ja` jumps, the loops libpcap compiles
for `protochain` (its own interpreter runs them: `tcpdump -r` selects with them). The
translator bounds those loops (to_c.MAX_BACKWARD_JUMPS); a loop that nothing inside can
leave, or one that jumps before the program's start, is refused as unboundable. A program
that passes is safe to translate; a tampered or hand-made one is refused with one line
before the translator ever sees it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..errors import UsageError

MAX_INSNS = 4096  # BPF_MAXINSNS
MEMWORDS = 16  # BPF_MEMWORDS: the scratch memory M[0..15]
# Loops (distinct heads of backward jumps) a program may have. Each is bounded (to_c),
# but the verifier's work grows with every loop the run can pass through: three
# `protochain` loops in one expression load, more exceed its budget (to_c's note).
MAX_LOOPS = 3

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
    _check_loops_can_end(program)
    _check_scratch_loads(program)
    return tuple(program)


def ja_target(pc: int, k: int) -> int:
    """Where `ja k` at pc lands: k is signed, as libpcap's interpreter reads it (its
    bpf_filter sign-extends k, for `protochain`); may be out of range, check() tells."""
    offset = k - (1 << 32) if k >= NEGATIVE_OFFSET else k
    return pc + 1 + offset


def is_backward_jump(insn: Insn) -> bool:
    return insn.code == JMP | JA and insn.k >= NEGATIVE_OFFSET


def backward_jumps(program: Sequence[Insn]) -> list[int]:
    """Indexes of the backward `ja` instructions (each closes a loop)."""
    return [pc for pc, insn in enumerate(program) if is_backward_jump(insn)]


def _can_leave(pc: int, insn: Insn, first: int, last: int) -> bool:
    """Whether instruction pc can end a run of the loop [first, last]: a return, a packet
    load (out of bounds ends the program), a division by X (by 0 ends it), a jump out."""
    code = insn.code
    cls = opclass(code)
    if cls == RET:
        return True
    if (cls == LD and mode_of(code) in (ABS, IND)) or (cls == LDX and mode_of(code) == MSH):
        return True
    if cls == ALU and op_of(code) in (DIV, MOD) and src_of(code) == X:
        return True
    if cls == JMP:
        return any(not first <= t <= last for t in successors(pc, insn))
    return False


def _check_loops_can_end(program: Sequence[Insn]) -> None:
    """Refuse a loop that no packet can ever leave: it would spin forever in libpcap, and
    no bound makes it select anything; and more loops than the verifier can follow.
    Every other loop the translator bounds."""
    heads = {ja_target(pc, program[pc].k) for pc in backward_jumps(program)}
    if len(heads) > MAX_LOOPS:
        raise FilterError(
            f"filter program: {len(heads)} loops (backward jumps to {len(heads)} places); "
            f"with each bounded, the BPF verifier can follow at most {MAX_LOOPS} "
            "(e.g. three `protochain`s)"
        )
    for pc in backward_jumps(program):
        first = ja_target(pc, program[pc].k)
        if not any(_can_leave(i, program[i], first, pc) for i in range(first, pc + 1)):
            raise FilterError(
                f"filter program: instruction {pc} loops back to {first} and nothing in "
                "between can leave the loop (no return, packet load or jump out): it "
                "never ends, so no bound can make it select anything"
            )


def successors(pc: int, insn: Insn) -> tuple[int, ...]:
    """Where control goes after instruction pc (none after a return)."""
    cls = opclass(insn.code)
    if cls == RET:
        return ()
    if cls != JMP:
        return (pc + 1,)
    if op_of(insn.code) == JA:
        return (ja_target(pc, insn.k),)
    return (pc + 1 + insn.jt, pc + 1 + insn.jf)


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
            if k >= NEGATIVE_OFFSET:  # a backward jump: libpcap loops this way for `protochain`
                if ja_target(pc, k) < 0:
                    raise FilterError(f"{where}: jumps backwards before the first instruction")
            elif k >= length - pc - 1:
                raise FilterError(f"{where}: jump past the end")
        elif pc + jt + 1 >= length or pc + jf + 1 >= length:
            raise FilterError(f"{where}: jump past the end")


def _check_scratch_loads(program: Sequence[Insn]) -> None:
    """Every M[k] read is preceded by a write on every path (check_load_and_stores).

    The kernel's checker makes one pass in order, which sees every predecessor first
    because its jumps go forward only. With loops, the words written on entry to an
    instruction are the intersection over its predecessors, iterated to a fixed point
    (it gives the kernel's answer on loop-free programs).
    """
    every = (1 << MEMWORDS) - 1
    written_in = [every] * len(program)  # start from "all": the fixed point only shrinks
    written_in[0] = 0
    changed = True
    while changed:
        changed = False
        for pc, insn in enumerate(program):
            written = _written_after(insn, written_in[pc])
            # As the kernel's pass, a return falls through to the next instruction.
            after_ret = (pc + 1,) if opclass(insn.code) == RET and pc + 1 < len(program) else ()
            for target in successors(pc, insn) or after_ret:
                if written_in[target] & written != written_in[target]:
                    written_in[target] &= written
                    changed = True
    for pc, (code, _jt, _jf, k) in enumerate(program):
        reads = opclass(code) in (LD, LDX) and mode_of(code) == MEM
        if reads and not written_in[pc] & (1 << k):
            raise FilterError(
                f"filter program: instruction {pc} reads M[{k}] before any write to it"
            )


def _written_after(insn: Insn, written: int) -> int:
    return written | (1 << insn.k) if opclass(insn.code) in (ST, STX) else written


def jump_targets(program: Iterable[Insn]) -> set[int]:
    """Indexes some jump lands on (where the translator needs a label)."""
    targets: set[int] = set()
    for pc, insn in enumerate(program):
        if opclass(insn.code) == JMP:
            targets.update(successors(pc, insn))
    return targets
