"""epb_packetid on the merge's Python path: what _fastmerge.c's `packet_id_at` and
`write_with_packet_id` do in the C loop (tests/unit/test_journeys.py compares them).

A packet whose id (observe.key_id of its identity) the alignment's pass saw at two or
more capture points gets option 5 (epb_packetid, 8 bytes) with that id, inserted before
opt_endofopt (or after its last option); every other block is written as it is.
"""

from __future__ import annotations

import struct
from array import array

from .identity import identify, key_id

OPT_PACKETID = 5
_U32 = struct.Struct("<I")
_OPTION = struct.Struct("<HH")


def id_set(packet_ids: bytes) -> set[int]:
    return set(array("Q", packet_ids))


def with_packet_id(block: bytes | memoryview, linktype: int | None, ids: set[int]) -> bytes | None:
    """The enhanced packet block with its epb_packetid, or None to keep it as it is."""
    if linktype is None:
        return None
    cap = _U32.unpack_from(block, 20)[0]
    identity = identify(linktype, bytes(block[28 : 28 + cap]))
    if identity is None:
        return None
    packet_id = key_id(identity.packet)
    if packet_id not in ids:
        return None
    blen = len(block)
    at, end = 28 + (cap + 3 & ~3), blen - 4
    while at + 4 <= end:
        code, length = _OPTION.unpack_from(block, at)
        if code == 0:
            break
        if code == OPT_PACKETID or at + 4 + length > end:
            return None
        at += 4 + (length + 3 & ~3)
    if at > end:
        return None
    new_len = at + 20
    return b"".join(
        (
            block[:4],
            _U32.pack(new_len),
            block[8:at],
            struct.pack("<HHQ", OPT_PACKETID, 8, packet_id),
            b"\0\0\0\0",  # opt_endofopt
            _U32.pack(new_len),
        )
    )
