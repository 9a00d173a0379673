"""Member offsets of kernel structs on the running kernel, from its BTF.

The sampler is compiled with whatever headers the host has (Debian ships one version's
headers for several kernels), so the two offsets the attribution reads inside kernel
objects — a socket's cookie and an exec's filename — and the three the owner's XDP
tracepoints need (a net_device's ifindex and namespace, a namespace's cookie) come from
/sys/kernel/btf/vmlinux, which describes the kernel actually running.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off+len
_MAGIC = 0xEB9F
_TYPE = struct.Struct("<III")  # name_off, info, size_or_type
_MEMBER = struct.Struct("<III")  # name_off, type, offset (bits; bitfields: low 24 bits)
_STRUCT, _UNION = 4, 5
# Bytes after the common head, per kind: fixed, or per `vlen` item.
_EXTRA_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_EXTRA_PER_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # STRUCT..ENUM64


class BtfError(ValueError):
    """The kernel's BTF is missing, damaged, or lacks the member asked for."""


def member_offsets(wanted: dict[str, str], path: Path = VMLINUX) -> dict[str, int]:
    """Byte offsets of `wanted` {struct name: member name} (top-level members)."""
    return {
        struct_name: offset
        for (struct_name, _), offset in members(list(wanted.items()), path).items()
    }


def members(wanted: Sequence[tuple[str, str]], path: Path = VMLINUX) -> dict[tuple[str, str], int]:
    """Byte offsets of (struct name, member name) pairs: several members of one struct."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BtfError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_members(data, wanted)


def parse_member_offsets(data: bytes, wanted: dict[str, str]) -> dict[str, int]:
    return {s: offset for (s, _), offset in parse_members(data, list(wanted.items())).items()}


def parse_members(data: bytes, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    if len(data) < _HEADER.size:
        raise BtfError("BTF too short")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
        data
    )
    if magic != _MAGIC:
        raise BtfError("not BTF (bad magic)")
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]

    def name_at(offset: int) -> bytes:
        return strings[offset : strings.index(b"\0", offset)]

    targets: dict[bytes, set[bytes]] = {}
    for struct_name, member in wanted:
        targets.setdefault(struct_name.encode(), set()).add(member.encode())
    found: dict[tuple[str, str], int] = {}
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end and len(found) < len(set(wanted)):
        name_off, info, _size = _TYPE.unpack_from(data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        pos += _TYPE.size
        if kind == _STRUCT and name_off and name_at(name_off) in targets:
            struct_name = name_at(name_off)
            for index in range(vlen):
                m_name, _m_type, m_offset = _MEMBER.unpack_from(data, pos + index * 12)
                if m_name and name_at(m_name) in targets[struct_name]:
                    bits = m_offset & 0xFFFFFF if info >> 31 else m_offset
                    found[(struct_name.decode(), name_at(m_name).decode())] = bits // 8
        pos += _EXTRA_FIXED.get(kind, 0) + _EXTRA_PER_ITEM.get(kind, 0) * vlen
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise BtfError(f"no {', '.join(f'{s}.{m}' for s, m in missing)} in the kernel's BTF")
    return found
