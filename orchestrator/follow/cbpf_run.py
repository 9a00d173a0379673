"""Run a checked classic-BPF program on a packet's bytes, as libpcap's bpf_filter does.

Journeys ask "would the receiver have captured this packet?": the receiver's capture
filter (the program the controller compiled for it, agent/filter/cbpf.py) decides. Only
programs `cbpf.check` accepted are run here, so every opcode is known and every jump
lands inside the program; backward `ja` loops (libpcap's `protochain`) are bounded by a
step budget.

Journeys see only the first bytes of a frame (join.HEAD_BYTES). A load past them on a
frame that was longer is not a reject but an unknown: `selects` then says True (the
packet is counted as one the receiver would have captured).
"""

from __future__ import annotations

from ...agent.filter import cbpf
from ...agent.filter.cbpf import (
    ABS,
    ALU,
    IMM,
    JA,
    JEQ,
    JGE,
    JGT,
    JMP,
    JSET,
    LD,
    LDX,
    LEN,
    MEM,
    MEMWORDS,
    MISC,
    MSH,
    RET,
    RET_A,
    SIZE_BYTES,
    ST,
    STX,
    TAX,
    Program,
)

_U32 = 0xFFFFFFFF
MAX_STEPS = 1 << 16  # a bounded protochain loop runs far fewer


class _Unknown(Exception):
    """A load past the bytes held of a longer frame."""


def selects(program: Program, frame: bytes, wire_len: int | None = None) -> bool:
    """Whether `program` accepts the packet whose first bytes are `frame` (`wire_len`:
    its length on the wire, when more than was kept)."""
    length = len(frame) if wire_len is None else wire_len
    try:
        return run(program, frame, length) != 0
    except _Unknown:
        return True


def run(program: Program, frame: bytes, wire_len: int) -> int:
    """The program's return value (0: reject)."""
    a = x = 0
    mem = [0] * MEMWORDS
    pc = 0
    truncated = wire_len > len(frame)

    def load(offset: int, size: int) -> int | None:
        if offset + size > len(frame):
            if truncated and offset + size <= wire_len:
                raise _Unknown
            return None
        return int.from_bytes(frame[offset : offset + size], "big")

    for _ in range(MAX_STEPS):
        insn = program[pc]
        code, k = insn.code, insn.k
        klass = cbpf.opclass(code)
        pc += 1
        if klass == RET:
            return a if cbpf.mode_of(code) == RET_A else k
        if klass in (LD, LDX):
            mode, size = cbpf.mode_of(code), cbpf.size_of(code)
            if mode == IMM:
                value = k
            elif mode == LEN:
                value = wire_len
            elif mode == MEM:
                value = mem[k]
            elif mode == MSH:  # ldxb 4*([k]&0xf): the IPv4 header length
                byte = load(k, 1)
                if byte is None:
                    return 0
                value = (byte & 0x0F) * 4
            else:
                offset = k if mode == ABS else (x + k) & _U32
                loaded = load(offset, SIZE_BYTES[size])
                if loaded is None:
                    return 0
                value = loaded
            if klass == LD:
                a = value
            else:
                x = value
        elif klass == ST:
            mem[k] = a
        elif klass == STX:
            mem[k] = x
        elif klass == ALU:
            a = _alu(code, a, x if cbpf.src_of(code) else k)
            if a is None:
                return 0  # division by zero ends the program with 0, as in the kernel
        elif klass == JMP:
            op = cbpf.op_of(code)
            if op == JA:
                pc = cbpf.ja_target(pc - 1, k)
                continue
            operand = x if cbpf.src_of(code) else k
            taken = (
                a == operand
                if op == JEQ
                else a > operand
                if op == JGT
                else a >= operand
                if op == JGE
                else bool(a & operand)
                if op == JSET
                else False
            )
            pc += insn.jt if taken else insn.jf
        elif klass == MISC:
            if code == MISC | TAX:
                x = a
            else:
                a = x
    raise _Unknown  # a loop past the budget: not this module's verdict to give


def _alu(code: int, a: int, operand: int) -> int | None:
    op = cbpf.op_of(code)
    if op == cbpf.NEG:
        return -a & _U32
    if op in (cbpf.DIV, cbpf.MOD) and operand == 0:
        return None
    result = {
        cbpf.ADD: lambda: a + operand,
        cbpf.SUB: lambda: a - operand,
        cbpf.MUL: lambda: a * operand,
        cbpf.DIV: lambda: a // operand,
        cbpf.MOD: lambda: a % operand,
        cbpf.OR: lambda: a | operand,
        cbpf.AND: lambda: a & operand,
        cbpf.LSH: lambda: a << (operand & 31) if operand < 32 else 0,
        cbpf.RSH: lambda: a >> operand if operand < 32 else 0,
        cbpf.XOR: lambda: a ^ operand,
    }[op]()
    return result & _U32


__all__ = ["run", "selects"]
