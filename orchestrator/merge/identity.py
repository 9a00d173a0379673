"""What the clock alignment reads of each packet: who it is, and whom it answers.

Two kinds of identity, computed from a packet's bytes:

- **The same packet on two hosts.** What does not change between the sender's egress
  and the receiver's ingress on a routed or bridged path: IP source and destination,
  protocol, the IPv4 identification (IPv6: the flow label), the transport header without
  its checksum, and the first 32 bytes of payload. Not the TTL or hop limit, not the IP
  checksum, not the link layer (a router rewrites them). Limits: NAT rewrites addresses
  and ports, tunnels wrap the packet (capture the inner interface), and two packets equal
  in all of this within the matching window cannot be told apart (they are skipped).
- **A packet that answers another.** An ICMP echo reply answers its request (id, seq),
  a TCP SYN-ACK its SYN (ack = seq + 1), a DNS response its query (id, ports): the answer
  left its host after the question arrived there.

Only IPv4 and IPv6 over Ethernet (VLAN tags skipped), raw IP and Linux cooked captures
are read; anything else is ignored.

The keys are those bytes themselves (at most 88: IPv6 addresses, a TCP header and the
payload prefix). The join names each by a 61-bit
id (`key_id`): cheap in C and in Python, small to hold for every packet in the matching
window, and the size of pcapng's epb_packetid. Two different keys share an id with a
chance of about 2^-61 per pair (a difference divisible by the prime); a pair of packets
mistaken for one is bounded like any retransmission. The merge's C extension computes
the same keys and ids (`_fastmerge.identify`, `_fastmerge.key_id`): a change here is a
change there, and tests/unit/test_join.py compares the two.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Directions as epb_flags bits 0-1 say them.
UNKNOWN, INBOUND, OUTBOUND = 0, 1, 2
PAYLOAD_PREFIX = 32
ID_PRIME = (1 << 61) - 1

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL = 113
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)


@dataclass(frozen=True)
class Identity:
    """What one packet says about itself: `packet` identifies it on any host; `question`
    is set on a packet that asks (echo request, SYN, DNS query), `answer` on one that
    answers — both to the same value for a matching pair."""

    packet: bytes
    question: bytes | None = None
    answer: bytes | None = None


def identify(linktype: int, frame: bytes) -> Identity | None:
    """The packet's identity, or None when it is not IP (or too short to tell)."""
    ip = _ip_payload(linktype, frame)
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        if ihl < 20 or len(ip) < ihl:
            return None
        proto = ip[9]
        src, dst = ip[12:16], ip[16:20]
        ident = ip[4:6]
        fragment = struct.unpack_from("!H", ip, 6)[0] & 0x1FFF
        l4 = ip[ihl:] if fragment == 0 else b""  # a later fragment has no transport header
        stable_ip = bytes([4, proto]) + src + dst + ident + ip[6:8]
    elif version == 6 and len(ip) >= 40:
        proto = ip[6]
        src, dst = ip[8:24], ip[24:40]
        flow = bytes([ip[1] & 0x0F]) + ip[2:4]
        l4 = ip[40:]
        stable_ip = bytes([6, proto]) + src + dst + flow
    else:
        return None
    transport, payload = _transport(proto, l4)
    question, answer = _exchange(proto, src, dst, l4)
    return Identity(stable_ip + transport + payload[:PAYLOAD_PREFIX], question, answer)


def key_id(key: bytes) -> int:
    """The key and its length byte after it, read as a little-endian number, modulo the
    prime 2^61 − 1 (keys of different lengths stay apart)."""
    return int.from_bytes(key + bytes((len(key),)), "little") % ID_PRIME


def _ip_payload(linktype: int, frame: bytes) -> bytes | None:
    if linktype == LINKTYPE_ETHERNET:
        at = 12
        ethertype = struct.unpack_from("!H", frame, at)[0] if len(frame) >= 14 else 0
        while ethertype in _VLAN_TPIDS and len(frame) >= at + 6:
            at += 4
            ethertype = struct.unpack_from("!H", frame, at)[0]
        if ethertype not in (0x0800, 0x86DD):
            return None
        return frame[at + 2 :]
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return frame
    if linktype == LINKTYPE_LINUX_SLL and len(frame) >= 16:
        return frame[16:] if struct.unpack_from("!H", frame, 14)[0] in (0x0800, 0x86DD) else None
    return None


def _transport(proto: int, l4: bytes) -> tuple[bytes, bytes]:
    """(the transport header without its checksum, the payload after it)."""
    if proto == 6 and len(l4) >= 20:
        offset = (l4[12] >> 4) * 4
        return l4[0:16] + l4[18:20], l4[max(offset, 20) :]
    if proto == 17 and len(l4) >= 8:
        return l4[0:6], l4[8:]
    if proto in (1, 58) and len(l4) >= 8:
        return l4[0:2] + l4[4:8], l4[8:]
    return b"", l4


def _exchange(proto: int, src: bytes, dst: bytes, l4: bytes) -> tuple[bytes | None, bytes | None]:
    """(question key, answer key): a question and the answer to it share one key."""
    if proto in (1, 58) and len(l4) >= 8:
        request, reply = (8, 0) if proto == 1 else (128, 129)
        if l4[0] == request:
            return b"echo" + src + dst + l4[4:8], None
        if l4[0] == reply:
            return None, b"echo" + dst + src + l4[4:8]
    elif proto == 6 and len(l4) >= 14:
        flags = l4[13] & 0x12  # SYN and ACK
        sport_dport = l4[0:4]
        if flags == 0x02:
            seq = struct.unpack_from("!I", l4, 4)[0]
            return b"syn" + src + dst + sport_dport + struct.pack("!I", seq), None
        if flags == 0x12:
            ack = (struct.unpack_from("!I", l4, 8)[0] - 1) & 0xFFFFFFFF
            return None, b"syn" + dst + src + l4[2:4] + l4[0:2] + struct.pack("!I", ack)
    elif proto == 17 and len(l4) >= 12:
        sport, dport = struct.unpack_from("!HH", l4, 0)
        dns_id, qr = l4[8:10], l4[10] >> 7
        if dport == 53 and qr == 0:
            return b"dns" + src + dst + l4[0:2] + dns_id, None
        if sport == 53 and qr == 1:
            return None, b"dns" + dst + src + l4[2:4] + dns_id
    return None, None
