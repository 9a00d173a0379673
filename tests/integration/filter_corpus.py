"""Frames and tcpdump expressions for differential tests of the cBPF→XDP filter translator.

The translated XDP program must select exactly the frames that `tcpdump -r corpus.pcap EXPR`
selects. This module supplies the frames (a fixed corpus plus seeded mutations), a list of
expressions that together exercise every cBPF opcode class libpcap emits, and the tcpdump
oracle itself. Pure Python, no root: the frames are later sent through AF_PACKET on a veth,
so every frame is 14..1514 bytes (a full Ethernet header, at most one untagged MTU frame).
"""

from __future__ import annotations

import functools
import random
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

MIN_FRAME = 14
MAX_FRAME = 1514
SNAPLEN = 262144
LINKTYPE_ETHERNET = 1
# Record i gets ts_sec = TS_BASE + i: distinct, increasing and readable in a dump.
TS_BASE = 1_700_000_000


# --- addresses ------------------------------------------------------------------------------


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ip4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def ip6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


MAC_A = mac("02:00:00:00:00:0a")  # owns 10.0.0.5 / 2001:db8::5
MAC_B = mac("02:00:00:00:00:0b")  # gateway 10.0.0.1 / 2001:db8::1
MAC_C = mac("02:00:00:00:00:0c")  # 192.168.1.10, 10.0.1.7, 172.16.0.3 live behind it
MAC_BCAST = mac("ff:ff:ff:ff:ff:ff")
MAC_MCAST4 = mac("01:00:5e:00:00:01")
MAC_MDNS4 = mac("01:00:5e:00:00:fb")
MAC_MCAST6 = mac("33:33:00:00:00:01")
MAC_SOLICIT6 = mac("33:33:ff:00:00:05")
MAC_STP = mac("01:80:c2:00:00:00")
MAC_LLDP = mac("01:80:c2:00:00:0e")

HOST = "10.0.0.5"
GATEWAY = "10.0.0.1"

ETH_IP, ETH_ARP, ETH_RARP, ETH_IP6 = 0x0800, 0x0806, 0x8035, 0x86DD
ETH_8021Q, ETH_8021AD, ETH_QINQ_OLD = 0x8100, 0x88A8, 0x9100
ETH_MPLS, ETH_MPLS_MCAST = 0x8847, 0x8848
ETH_PPPOED, ETH_PPPOES, ETH_LLDP, ETH_TEB = 0x8863, 0x8864, 0x88CC, 0x6558

PROTO_ICMP, PROTO_IGMP, PROTO_TCP, PROTO_UDP, PROTO_GRE = 1, 2, 6, 17, 47
PROTO_HOPOPTS, PROTO_ROUTING, PROTO_FRAGMENT, PROTO_AH = 0, 43, 44, 51
PROTO_ICMP6, PROTO_NONE6, PROTO_DSTOPTS = 58, 59, 60

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


# --- header builders ------------------------------------------------------------------------


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def payload(length: int, seed: int = 0) -> bytes:
    """Deterministic non-zero-ish filler; seed varies it between frames."""
    return bytes((i * 7 + seed * 13 + 1) & 0xFF for i in range(length))


def eth(
    ethertype: int,
    body: bytes,
    dst: bytes = MAC_B,
    src: bytes = MAC_A,
    tags: Sequence[tuple[int, int]] = (),
) -> bytes:
    """An Ethernet frame; tags are (TPID, TCI) pairs, outermost first."""
    tag_bytes = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in tags)
    return dst + src + tag_bytes + struct.pack("!H", ethertype) + body


def ipv4(
    src: str,
    dst: str,
    proto: int,
    body: bytes,
    *,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0x1234,
    frag: int = 0x4000,
    options: bytes = b"",
    total_length: int | None = None,
) -> bytes:
    """frag is the raw flags+offset field (default DF); options are padded to 32 bits."""
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    length = ihl * 4 + len(body) if total_length is None else total_length
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, tos, length, ident, frag, ttl, proto, 0, ip4(src), ip4(dst)
    )
    header += options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + body


def ipv6(src: str, dst: str, next_header: int, body: bytes, *, hop_limit: int = 64) -> bytes:
    return (
        struct.pack("!IHBB", 0x6000_0000, len(body), next_header, hop_limit)
        + ip6(src)
        + ip6(dst)
        + body
    )


def ip6_options(next_header: int, body: bytes, pad_to: int = 8) -> bytes:
    """Hop-by-hop or destination options header, PadN-filled to pad_to bytes."""
    size = max(pad_to, 8)
    pad = size - 2
    return struct.pack("!BBBB", next_header, size // 8 - 1, 1, pad - 2) + b"\0" * (pad - 2) + body


def ip6_routing(next_header: int, body: bytes) -> bytes:
    # Type 0 with segments-left 0 and one address: parsers must still skip its 24 bytes.
    return struct.pack("!BBBBI", next_header, 2, 0, 0, 0) + ip6("2001:db8::99") + body


def ip6_fragment(next_header: int, body: bytes, offset: int = 0, more: bool = False) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset << 3) | int(more), 0xABCD) + body


def tcp(
    sport: int,
    dport: int,
    flags: int,
    body: bytes = b"",
    *,
    seq: int = 1000,
    ack: int = 0,
    options: bytes = b"",
) -> bytes:
    # L4 checksums stay zero: no expression reads them and AF_PACKET does not check them.
    options += b"\0" * (-len(options) % 4)
    offset = (5 + len(options) // 4) << 4
    return (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset, flags, 64240, 0, 0)
        + options
        + body
    )


def udp(sport: int, dport: int, body: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body


def icmp(icmp_type: int, code: int, rest: bytes = b"\0\0\0\0", body: bytes = b"") -> bytes:
    raw = struct.pack("!BBH", icmp_type, code, 0) + rest + body
    return raw[:2] + struct.pack("!H", checksum(raw)) + raw[4:]


def icmp6(icmp_type: int, code: int, rest: bytes = b"\0\0\0\0", body: bytes = b"") -> bytes:
    return struct.pack("!BBH", icmp_type, code, 0) + rest + body


def dns(ident: int, name: str, response: bool = False) -> bytes:
    flags = 0x8180 if response else 0x0100
    answers = 1 if response else 0
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + ip4("93.184.216.34")
    return (
        struct.pack("!HHHHHH", ident, flags, 1, answers, 0, 0)
        + qname
        + struct.pack("!HH", 1, 1)
        + (answer if response else b"")
    )


def gre(proto: int, body: bytes, key: int | None = None) -> bytes:
    if key is None:
        return struct.pack("!HH", 0, proto) + body
    return struct.pack("!HHI", 0x2000, proto, key) + body


def vxlan(vni: int, inner: bytes) -> bytes:
    return struct.pack("!II", 0x0800_0000, vni << 8) + inner


def geneve(proto: int, inner: bytes, vni: int = 7, options: bytes = b"") -> bytes:
    return struct.pack("!BBHI", len(options) // 4, 0, proto, vni << 8) + options + inner


def mpls(labels: Sequence[int], body: bytes, ttl: int = 64) -> bytes:
    """Label stack, outermost first; the last entry carries the bottom-of-stack bit."""
    entries = [
        (label << 12) | (int(i == len(labels) - 1) << 8) | ttl for i, label in enumerate(labels)
    ]
    return b"".join(struct.pack("!I", e) for e in entries) + body


def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    return struct.pack("!HHBBH", 1, ETH_IP, 6, 4, op) + sha + ip4(spa) + tha + ip4(tpa)


def llc(dsap: int, ssap: int, ctrl: int, body: bytes) -> bytes:
    return bytes([dsap, ssap, ctrl]) + body


def pppoe(code: int, session: int, body: bytes) -> bytes:
    return struct.pack("!BBHH", 0x11, code, session, len(body)) + body


# --- the corpus -----------------------------------------------------------------------------


def _l2_src(l2_dst: bytes) -> bytes:
    # Frames to MAC_A come from the gateway; everything else is sent by MAC_A.
    return MAC_B if l2_dst == MAC_A else MAC_A


def _v4(src: str, dst: str, proto: int, body: bytes, l2_dst: bytes = MAC_B, **kw) -> bytes:
    return eth(ETH_IP, ipv4(src, dst, proto, body, **kw), dst=l2_dst, src=_l2_src(l2_dst))


def _v6(src: str, dst: str, nh: int, body: bytes, l2_dst: bytes = MAC_B, **kw) -> bytes:
    return eth(ETH_IP6, ipv6(src, dst, nh, body, **kw), dst=l2_dst, src=_l2_src(l2_dst))


def _ipv4_tcp_frames() -> list[bytes]:
    # (client, server, client port, server port, payload sizes of the data segments)
    flows = [
        (HOST, GATEWAY, 51000, 443, (0, 100, 517, 1460)),
        (GATEWAY, HOST, 40000, 80, (0, 78, 600)),
        ("192.168.1.10", "10.0.1.7", 50022, 22, (48, 1200)),
        ("172.16.0.3", "10.0.0.200", 9, 10, (1, 20)),
        ("10.0.0.77", "8.8.8.8", 33333, 53, (31,)),
        (HOST, "203.0.113.9", 60000, 8080, (300,)),
        ("198.51.100.20", HOST, 65535, 1, (0,)),
    ]
    frames: list[bytes] = []
    for n, (cli, srv, cport, sport, sizes) in enumerate(flows):
        frames.append(_v4(cli, srv, PROTO_TCP, tcp(cport, sport, SYN, options=b"\x02\x04\x05\xb4")))
        frames.append(_v4(srv, cli, PROTO_TCP, tcp(sport, cport, SYN | ACK, ack=1001), MAC_A))
        for i, size in enumerate(sizes):
            body = payload(size, seed=n * 10 + i)
            flags = ACK | (PSH if size else 0)
            frames.append(
                _v4(cli, srv, PROTO_TCP, tcp(cport, sport, flags, body, seq=1001, ack=1001), tos=i)
            )
        frames.append(_v4(cli, srv, PROTO_TCP, tcp(cport, sport, FIN | ACK, seq=9000, ack=1001)))
    frames.append(_v4(GATEWAY, HOST, PROTO_TCP, tcp(443, 51000, RST)))
    frames.append(_v4(HOST, GATEWAY, PROTO_TCP, tcp(51001, 443, RST | ACK)))
    frames.append(_v4(HOST, GATEWAY, PROTO_TCP, tcp(51002, 443, URG | ACK | PSH, b"!")))
    frames.append(_v4(HOST, GATEWAY, PROTO_TCP, tcp(80, 22, 0xFF, b"xmas")))  # every flag
    frames.append(_v4(HOST, GATEWAY, PROTO_TCP, tcp(12345, 80, 0, b"null")))  # no flag
    request = b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n"
    frames.append(_v4(GATEWAY, HOST, PROTO_TCP, tcp(40001, 80, PSH | ACK, request)))
    return frames


def _ipv4_udp_frames() -> list[bytes]:
    return [
        _v4(HOST, "8.8.8.8", PROTO_UDP, udp(5353, 53, dns(0x1111, "example.com")), tos=0x28),
        _v4("8.8.8.8", HOST, PROTO_UDP, udp(53, 5353, dns(0x1111, "example.com", True)), MAC_A),
        _v4("10.0.0.77", "10.0.0.53", PROTO_UDP, udp(53, 53, dns(0x2222, "a.b.c.d.e.f.test"))),
        _v4("172.16.0.3", "10.0.0.200", PROTO_UDP, udp(9, 10, b"discard")),
        _v4("172.16.0.3", "10.0.0.200", PROTO_UDP, udp(10, 9)),
        _v4(HOST, "129.6.15.28", PROTO_UDP, udp(123, 123, payload(48, 3)), tos=0xB8),
        _v4("0.0.0.0", "255.255.255.255", PROTO_UDP, udp(68, 67, payload(300, 4)), MAC_BCAST),
        _v4("10.0.0.255", "10.0.0.255", PROTO_UDP, udp(137, 137, payload(50, 5)), MAC_BCAST),
        _v4(HOST, "224.0.0.251", PROTO_UDP, udp(5353, 5353, dns(0, "_http._tcp.local")), MAC_MDNS4),
        _v4(
            HOST,
            "239.255.255.250",
            PROTO_UDP,
            udp(1900, 1900, b"M-SEARCH * HTTP/1.1\r\n\r\n"),
            mac("01:00:5e:7f:ff:fa"),
            ttl=4,
        ),
        _v4("10.0.1.7", HOST, PROTO_UDP, udp(40000, 443, payload(1200, 6)), MAC_A),  # QUIC
        _v4(HOST, GATEWAY, PROTO_UDP, udp(0, 0)),
        _v4(HOST, GATEWAY, PROTO_UDP, udp(65535, 100, payload(3, 7))),
    ]


def _icmp_frames() -> list[bytes]:
    echo = struct.pack("!HH", 0x4242, 1)
    quoted = ipv4(HOST, "192.0.2.1", PROTO_UDP, udp(40000, 33434))[:28]
    return [
        _v4(HOST, "8.8.8.8", PROTO_ICMP, icmp(8, 0, echo, payload(56, 8))),
        _v4("8.8.8.8", HOST, PROTO_ICMP, icmp(0, 0, echo, payload(56, 8)), MAC_A),
        _v4(GATEWAY, HOST, PROTO_ICMP, icmp(8, 0, echo, payload(1472, 9))),
        _v4(GATEWAY, HOST, PROTO_ICMP, icmp(3, 3, body=quoted), MAC_A),
        _v4(GATEWAY, HOST, PROTO_ICMP, icmp(11, 0, body=quoted), MAC_A, ttl=255),
        _v4(HOST, "224.0.0.1", PROTO_ICMP, icmp(8, 0, echo), MAC_MCAST4, ttl=1),
        _v4("10.0.1.7", HOST, PROTO_ICMP, icmp(13, 0, echo, b"\0" * 12), MAC_A),  # timestamp
    ]


def _ipv4_option_frames() -> list[bytes]:
    router_alert = b"\x94\x04\x00\x00"
    record_route = bytes([7, 15, 4]) + b"\0" * 12
    max_options = bytes([7, 39, 4]) + b"\0" * 36 + b"\x01"  # IHL 15: a 60-byte header
    igmp = struct.pack("!BBH4s", 0x16, 0, 0, ip4("224.0.0.22"))
    return [
        _v4(HOST, "224.0.0.22", PROTO_IGMP, igmp, MAC_MCAST4, ttl=1, options=router_alert),
        _v4(GATEWAY, HOST, PROTO_TCP, tcp(40002, 80, SYN), options=record_route),
        _v4(HOST, GATEWAY, PROTO_TCP, tcp(51003, 443, PSH | ACK, b"opt"), options=max_options),
        _v4(HOST, GATEWAY, PROTO_UDP, udp(5000, 53, dns(7, "opt.test")), options=b"\x01" * 4),
        _v4("8.8.8.8", HOST, PROTO_ICMP, icmp(0, 0, body=b"nop"), options=b"\x01\x01\x01\x00"),
    ]


def _fragment_frames() -> list[bytes]:
    # A 1000-byte UDP datagram in three fragments (offsets are in 8-byte units), and a TCP
    # segment whose second fragment carries bytes that would read as port 80.
    datagram = udp(7000, 53, payload(992, 11))
    tcp_segment = tcp(40003, 80, PSH | ACK, payload(100, 12))
    fake_ports = struct.pack("!HH", 80, 80) + payload(36, 13)
    return [
        _v4(HOST, GATEWAY, PROTO_UDP, datagram[:400], ident=0x99, frag=0x2000),
        _v4(HOST, GATEWAY, PROTO_UDP, datagram[400:800], ident=0x99, frag=0x2000 | 50),
        _v4(HOST, GATEWAY, PROTO_UDP, datagram[800:], ident=0x99, frag=100),
        _v4(GATEWAY, HOST, PROTO_TCP, tcp_segment[:64], ident=0x77, frag=0x2000),
        _v4(GATEWAY, HOST, PROTO_TCP, fake_ports, ident=0x77, frag=8),
        _v4(GATEWAY, HOST, PROTO_ICMP, fake_ports, ident=0x78, frag=0x1FFF),  # maximal offset
        _v4(GATEWAY, HOST, PROTO_TCP, tcp(40004, 80, SYN), frag=0),  # neither DF nor MF
        _v4(GATEWAY, HOST, PROTO_TCP, tcp(40005, 22, SYN), frag=0x8000),  # reserved "evil" bit
    ]


def _malformed_ipv4_frames() -> list[bytes]:
    good = ipv4(HOST, GATEWAY, PROTO_TCP, tcp(51004, 443, SYN))
    ihl = [bytes([0x40 | n]) + good[1:] for n in (0, 1, 4, 6, 15)]
    return [
        *(eth(ETH_IP, raw) for raw in ihl),
        eth(ETH_IP, bytes([0x65]) + good[1:]),  # version 6 under ethertype IPv4
        eth(ETH_IP, good[:2] + b"\x05\xdc" + good[4:]),  # total length claims 1500
        eth(ETH_IP, good[:2] + b"\x00\x10" + good[4:]),  # total length below the header
        eth(ETH_IP, ipv4(HOST, GATEWAY, 255, payload(20, 14))),  # reserved protocol
        eth(ETH_IP, ipv4(HOST, GATEWAY, PROTO_TCP, tcp(51005, 443, SYN))[:30]),  # cut header
        eth(ETH_IP, good[:30]),  # header cut before the destination address
        eth(ETH_IP, good[:27]),  # header cut inside the destination address
    ]


def _ipv6_frames() -> list[bytes]:
    a, b, c = "2001:db8::5", "2001:db8::1", "2001:db8:1::10"
    echo = struct.pack("!HH", 0x6666, 1)
    ns_target = ip6("2001:db8::5")
    mld = icmp6(143, 0, b"\0\0\0\0")
    tcp443 = tcp(52000, 443, SYN)
    udp53 = udp(5353, 53, dns(0x3333, "example.org"))
    return [
        _v6(a, b, PROTO_TCP, tcp443),
        _v6(b, a, PROTO_TCP, tcp(443, 52000, SYN | ACK), MAC_A),
        _v6(a, b, PROTO_TCP, tcp(52000, 443, PSH | ACK, payload(700, 15))),
        _v6(a, c, PROTO_TCP, tcp(52001, 22, FIN | ACK)),
        _v6(a, b, PROTO_UDP, udp53),
        _v6(b, a, PROTO_UDP, udp(53, 5353, dns(0x3333, "example.org", True)), MAC_A),
        _v6(a, b, PROTO_ICMP6, icmp6(128, 0, echo, payload(56, 16))),
        _v6(b, a, PROTO_ICMP6, icmp6(129, 0, echo, payload(56, 16)), MAC_A),
        _v6("fe80::b", "ff02::1:ff00:5", PROTO_ICMP6, icmp6(135, 0, body=ns_target), MAC_SOLICIT6),
        _v6("fe80::1", "ff02::1", PROTO_ICMP6, icmp6(134, 0, b"\x40\0\x07\x08"), MAC_MCAST6),
        _v6(a, "ff02::fb", PROTO_UDP, udp(5353, 5353, dns(0, "_ipp._tcp.local")), MAC_MCAST6),
        # Extension header chains: only protochain walks them.
        _v6("fe80::5", "ff02::16", PROTO_HOPOPTS, ip6_options(PROTO_ICMP6, mld), MAC_MCAST6),
        _v6(a, b, PROTO_HOPOPTS, ip6_options(PROTO_TCP, tcp443)),
        _v6(a, b, PROTO_HOPOPTS, ip6_options(PROTO_UDP, udp53, pad_to=16)),
        _v6(a, b, PROTO_ROUTING, ip6_routing(PROTO_UDP, udp53)),
        _v6(a, b, PROTO_DSTOPTS, ip6_options(PROTO_TCP, tcp(52002, 80, SYN))),
        _v6(a, b, PROTO_FRAGMENT, ip6_fragment(PROTO_UDP, udp53, more=True)),
        _v6(a, b, PROTO_FRAGMENT, ip6_fragment(PROTO_UDP, payload(64, 17), offset=100)),
        _v6(a, b, PROTO_FRAGMENT, ip6_fragment(PROTO_TCP, tcp443, more=True)),
        _v6(
            a,
            b,
            PROTO_HOPOPTS,
            ip6_options(
                PROTO_DSTOPTS,
                ip6_options(PROTO_ROUTING, ip6_routing(PROTO_FRAGMENT, ip6_fragment(6, tcp443))),
            ),
        ),
        _v6(a, b, PROTO_AH, struct.pack("!BBHII", PROTO_TCP, 4, 0, 0x100, 1) + b"\0" * 12 + tcp443),
        _v6(a, b, PROTO_HOPOPTS, ip6_options(PROTO_NONE6, b"")),
        _v6(a, b, PROTO_NONE6, b""),
        _v6(a, b, PROTO_DSTOPTS, ip6_options(PROTO_ICMP6, icmp6(128, 0, echo))),
    ]


def _vlan_frames() -> list[bytes]:
    tcp_host = ipv4(HOST, GATEWAY, PROTO_TCP, tcp(51010, 443, SYN))
    udp_dns = ipv4(HOST, "8.8.8.8", PROTO_UDP, udp(5353, 53, dns(0x4444, "vlan.test")))
    ping = ipv4(GATEWAY, HOST, PROTO_ICMP, icmp(8, 0, body=payload(32, 18)))
    tcp6 = ipv6("2001:db8::5", "2001:db8::1", PROTO_TCP, tcp(52010, 80, SYN))
    who_has = arp(1, MAC_A, HOST, b"\0" * 6, GATEWAY)
    q = ETH_8021Q
    return [
        eth(ETH_IP, tcp_host, tags=[(q, 100)]),
        eth(ETH_IP, udp_dns, tags=[(q, 100)]),
        eth(ETH_IP, tcp_host, tags=[(q, 0xA000 | 100)]),  # priority 5 on VLAN 100
        eth(ETH_IP, ping, tags=[(q, 200)]),
        eth(ETH_IP6, tcp6, tags=[(q, 200)]),
        eth(ETH_ARP, who_has, dst=MAC_BCAST, tags=[(q, 300)]),
        eth(ETH_IP, udp_dns, tags=[(q, 0)]),  # priority-tagged, no VLAN
        eth(ETH_IP, tcp_host, tags=[(q, 4095)]),
        eth(ETH_IP, tcp_host, tags=[(ETH_8021AD, 10), (q, 100)]),
        eth(ETH_IP6, tcp6, tags=[(ETH_8021AD, 20), (q, 200)]),
        eth(ETH_IP, ping, tags=[(q, 100), (q, 200)]),
        eth(ETH_IP, udp_dns, tags=[(ETH_QINQ_OLD, 30), (q, 100)]),
        eth(ETH_IP, udp_dns, tags=[(ETH_8021AD, 100)]),
        eth(ETH_MPLS, mpls([16], tcp_host), tags=[(q, 100)]),
    ]


def _inner_frames() -> list[bytes]:
    """Ethernet frames as they appear inside VXLAN, Geneve or GRE-TEB."""
    return [
        eth(ETH_IP, ipv4(HOST, GATEWAY, PROTO_TCP, tcp(51020, 443, SYN)), MAC_C, MAC_A),
        eth(ETH_ARP, arp(1, MAC_C, "10.9.0.1", b"\0" * 6, "10.9.0.2"), MAC_BCAST, MAC_C),
        eth(ETH_IP, ipv4("10.9.0.1", "10.9.0.2", PROTO_ICMP, icmp(8, 0)), MAC_A, MAC_C),
        eth(ETH_IP6, ipv6("2001:db8::5", "2001:db8::1", PROTO_UDP, udp(5353, 53)), MAC_C, MAC_A),
    ]


def _tunnel_frames() -> list[bytes]:
    outer_a, outer_b = "192.168.1.10", "172.16.0.3"
    inner_ip = ipv4(HOST, "10.0.1.7", PROTO_TCP, tcp(51021, 80, PSH | ACK, b"tunnelled"))
    inner_udp = ipv4("10.0.1.7", HOST, PROTO_UDP, udp(53, 5353, dns(5, "gre.test", True)))
    inner_eth = _inner_frames()
    geneve_option = struct.pack("!HBB", 0x0102, 0x80, 1) + b"\xaa\xbb\xcc\xdd"
    frames = [
        _v4(outer_a, outer_b, PROTO_GRE, gre(ETH_IP, inner_ip), MAC_C),
        _v4(outer_b, outer_a, PROTO_GRE, gre(ETH_IP, inner_udp, key=42), MAC_C),
        _v4(outer_a, outer_b, PROTO_GRE, gre(ETH_TEB, inner_eth[0]), MAC_C),
        _v4(outer_a, outer_b, PROTO_GRE, gre(ETH_IP6, inner_eth[3][14:]), MAC_C),
    ]
    for n, inner in enumerate(inner_eth):
        frames.append(_v4(outer_a, outer_b, PROTO_UDP, udp(49160 + n, 4789, vxlan(42, inner))))
        frames.append(
            _v4(outer_b, outer_a, PROTO_UDP, udp(49200 + n, 6081, geneve(ETH_TEB, inner)))
        )
    frames += [
        _v6("2001:db8::a", "2001:db8::b", PROTO_UDP, udp(50000, 4789, vxlan(7, inner_eth[2]))),
        _v6(
            "2001:db8::a", "2001:db8::b", PROTO_UDP, udp(50001, 6081, geneve(ETH_TEB, inner_eth[0]))
        ),
        _v4(outer_a, outer_b, PROTO_UDP, udp(49300, 6081, geneve(ETH_IP, inner_ip))),
        _v4(
            outer_a,
            outer_b,
            PROTO_UDP,
            udp(49301, 6081, geneve(ETH_TEB, inner_eth[2], options=geneve_option)),
        ),
        _v4(outer_a, outer_b, PROTO_UDP, udp(49302, 6081, b"\x00\x00")),  # truncated Geneve
    ]
    return frames


def _mpls_frames() -> list[bytes]:
    inner = ipv4(HOST, GATEWAY, PROTO_UDP, udp(5353, 53, dns(0x5555, "mpls.test")))
    inner_tcp = ipv4(GATEWAY, HOST, PROTO_TCP, tcp(80, 40006, PSH | ACK, payload(90, 19)))
    inner6 = ipv6("2001:db8::5", "2001:db8::1", PROTO_TCP, tcp(52020, 443, SYN))
    return [
        eth(ETH_MPLS, mpls([100], inner)),
        eth(ETH_MPLS, mpls([100, 200], inner_tcp)),
        eth(ETH_MPLS, mpls([300, 400, 500], inner)),
        eth(ETH_MPLS, mpls([100], inner6)),
        eth(ETH_MPLS_MCAST, mpls([1000], inner), dst=mac("01:00:5e:80:00:01")),
        eth(ETH_MPLS, mpls([3], b"")),  # label only, nothing behind it
    ]


def _link_layer_frames() -> list[bytes]:
    zero = b"\0" * 6
    bpdu = struct.pack("!HBB", 0, 0, 0) + payload(32, 20)
    snap = llc(0xAA, 0xAA, 0x03, b"\x00\x00\x0c\x20\x00" + payload(20, 21))  # Cisco CDP
    pppoe_tags = struct.pack("!HH", 0x0101, 0)  # Service-Name, empty
    ppp_ip = b"\x00\x21" + ipv4(HOST, GATEWAY, PROTO_TCP, tcp(51030, 80, SYN))
    ppp_udp = b"\x00\x21" + ipv4(HOST, "8.8.8.8", PROTO_UDP, udp(5353, 53, dns(6, "ppp.test")))
    ppp_ip6 = b"\x00\x57" + ipv6("2001:db8::5", "2001:db8::1", PROTO_ICMP6, icmp6(128, 0))
    lcp = b"\xc0\x21" + struct.pack("!BBH", 9, 1, 8) + b"\0\0\0\0"  # echo request
    lldp = b"\x02\x07\x04" + MAC_A + b"\x04\x02\x07\x31\x06\x02\x00\x78\x00\x00"

    def dot3(dst: bytes, body: bytes) -> bytes:
        return eth(len(body), body, dst=dst)

    return [
        eth(ETH_ARP, arp(1, MAC_A, HOST, zero, GATEWAY), dst=MAC_BCAST),
        eth(ETH_ARP, arp(2, MAC_B, GATEWAY, MAC_A, HOST), dst=MAC_A, src=MAC_B),
        eth(ETH_ARP, arp(1, MAC_C, "10.0.1.7", zero, "10.0.1.7"), dst=MAC_BCAST, src=MAC_C),
        eth(ETH_RARP, arp(3, MAC_C, "0.0.0.0", MAC_C, "0.0.0.0"), dst=MAC_BCAST, src=MAC_C),
        eth(ETH_RARP, arp(4, MAC_B, GATEWAY, MAC_C, "10.0.1.7"), dst=MAC_C, src=MAC_B),
        dot3(MAC_STP, llc(0x42, 0x42, 0x03, bpdu)),
        dot3(MAC_STP, llc(0x42, 0x42, 0x03, bpdu + b"\0" * 3)),
        dot3(mac("01:00:0c:cc:cc:cc"), snap),
        dot3(MAC_BCAST, llc(0xF0, 0xF0, 0x03, payload(40, 22))),  # NetBIOS
        dot3(MAC_B, llc(0xE0, 0xE0, 0x03, payload(30, 23))),  # IPX
        eth(1500, llc(0x42, 0x42, 0x03, bpdu), dst=MAC_STP),  # length field at its maximum
        eth(0x0600, payload(46, 24)),  # smallest ethertype: not a length, not STP
        eth(ETH_PPPOED, pppoe(0x09, 0, pppoe_tags), dst=MAC_BCAST),  # PADI
        eth(ETH_PPPOED, pppoe(0x07, 0, pppoe_tags), dst=MAC_A, src=MAC_C),  # PADO
        eth(ETH_PPPOED, pppoe(0x65, 0x0042, b""), dst=MAC_C),  # PADS
        eth(ETH_PPPOES, pppoe(0, 0x0042, ppp_ip), dst=MAC_C),
        eth(ETH_PPPOES, pppoe(0, 0x0042, ppp_udp), dst=MAC_C),
        eth(ETH_PPPOES, pppoe(0, 0x0042, ppp_ip6), dst=MAC_C),
        eth(ETH_PPPOES, pppoe(0, 0x0042, lcp), dst=MAC_C),
        eth(ETH_LLDP, lldp, dst=MAC_LLDP),
        eth(0x88F7, payload(44, 25), dst=mac("01:1b:19:00:00:00")),  # PTP
        eth(0x1234, payload(50, 26), dst=MAC_C, src=MAC_B),
        eth(0xFFFF, payload(46, 27), dst=MAC_BCAST, src=MAC_C),
    ]


def _runt_frames() -> list[bytes]:
    """Frames that end inside (or right after) a header, so every load can run off the end."""
    ip_header = ipv4(HOST, GATEWAY, PROTO_TCP, tcp(51040, 443, SYN))
    ip6_header = ipv6("2001:db8::5", "2001:db8::1", PROTO_TCP, tcp(52030, 443, SYN))
    tagged = eth(ETH_IP, ip_header, tags=[(ETH_8021Q, 100)])
    return [
        eth(ETH_IP, b""),
        eth(ETH_IP, ip_header[:1]),
        eth(ETH_IP, ip_header[:4]),
        eth(ETH_IP6, ip6_header[:6]),
        eth(ETH_ARP, b""),
        eth(ETH_8021Q, b"\x00\x64"),  # VLAN tag without an inner ethertype
        eth(ETH_IP, b"", dst=MAC_BCAST),
        eth(ETH_IP, ip_header[:20]),  # header only, TCP promised
        eth(ETH_IP, ip_header[:24]),  # ports but no flags
        eth(ETH_IP, ip_header[:33]),  # flags byte is the last byte
        eth(ETH_IP6, ip6_header[:40]),
        eth(ETH_IP6, ip6_header[:42]),
        tagged[:20],
        tagged[:40],
        eth(ETH_MPLS, b"\x00\x06\x41"),
        eth(ETH_PPPOES, pppoe(0, 1, b"\x00\x21")[:6]),
    ]


def _length_sweep_frames() -> list[bytes]:
    """UDP frames of many lengths; zero-filled or 0xff-filled so far-away loads vary."""
    frames = []
    for length in (60, 64, 65, 100, 101, 128, 256, 512, 1000, 1017, 1018, 1400, 1401, 1402):
        fill = b"\0" if length % 2 else b"\xff"
        frames.append(_v4(HOST, GATEWAY, PROTO_UDP, udp(7777, 7777, fill * (length - 42))))
    for length in (1024, 1500, 1513, 1514):
        frames.append(_v4(GATEWAY, HOST, PROTO_UDP, udp(7778, 9, b"\0" * (length - 42)), MAC_A))
    frames.append(_v4(GATEWAY, HOST, PROTO_UDP, udp(7779, 10, b"\xff" * 1472)))
    frames.append(_v4(GATEWAY, HOST, PROTO_TCP, tcp(443, 51000, ACK, payload(1460, 28)), MAC_A))
    frames.append(_v6("2001:db8::1", "2001:db8::5", PROTO_UDP, udp(7780, 7780, b"\0" * 1452)))
    return frames


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[bytes, ...]:
    frames = (
        _ipv4_tcp_frames()
        + _ipv4_udp_frames()
        + _icmp_frames()
        + _ipv4_option_frames()
        + _fragment_frames()
        + _malformed_ipv4_frames()
        + _ipv6_frames()
        + _vlan_frames()
        + _tunnel_frames()
        + _mpls_frames()
        + _link_layer_frames()
        + _runt_frames()
        + _length_sweep_frames()
    )
    for i, frame in enumerate(frames):
        if not MIN_FRAME <= len(frame) <= MAX_FRAME:
            raise ValueError(f"corpus frame {i} is {len(frame)} bytes")
    return tuple(frames)


def corpus_frames() -> list[bytes]:
    """The fixed corpus: ~200 Ethernet frames, identical on every call."""
    return list(_corpus())


# --- mutations ------------------------------------------------------------------------------

INTERESTING_ETHERTYPES = (
    ETH_IP, ETH_IP6, ETH_ARP, ETH_RARP, ETH_8021Q, ETH_8021AD, ETH_QINQ_OLD, ETH_MPLS,
    ETH_PPPOED, ETH_PPPOES, 0x0000, 0x002E, 0x05DC, 0x05DD, 0x0600, 0xFFFF,
)  # fmt: skip
INTERESTING_PROTOCOLS = (0, 1, 2, 6, 17, 41, 43, 44, 47, 50, 51, 58, 59, 60, 132, 255)
INTERESTING_PORTS = (0, 1, 9, 10, 22, 53, 80, 100, 101, 443, 4789, 6081, 8080, 65535)


def _l3_offset(frame: bytearray) -> int:
    return 18 if frame[12:14] in (b"\x81\x00", b"\x88\xa8") else 14


def _flip_header_byte(rng: random.Random, frame: bytearray) -> None:
    i = rng.randrange(min(len(frame), 64))
    frame[i] ^= 1 << rng.randrange(8)


def _set_ethertype(rng: random.Random, frame: bytearray) -> None:
    frame[12:14] = struct.pack("!H", rng.choice(INTERESTING_ETHERTYPES))


def _set_ihl(rng: random.Random, frame: bytearray) -> None:
    at = _l3_offset(frame)
    if len(frame) > at:
        frame[at] = (frame[at] & 0xF0) | rng.randrange(16)


def _set_protocol(rng: random.Random, frame: bytearray) -> None:
    # Byte 9 of IPv4, byte 6 (next header) of IPv6: write whichever this frame has.
    at = _l3_offset(frame) + (6 if frame[12:14] == b"\x86\xdd" else 9)
    if len(frame) > at:
        frame[at] = rng.choice(INTERESTING_PROTOCOLS)


def _set_port(rng: random.Random, frame: bytearray) -> None:
    at = _l3_offset(frame)
    if len(frame) <= at:
        return
    header = 40 if frame[12:14] == b"\x86\xdd" else (frame[at] & 0x0F) * 4
    at += header + 2 * rng.randrange(2)
    if len(frame) >= at + 2:
        frame[at : at + 2] = struct.pack("!H", rng.choice(INTERESTING_PORTS))


def _set_fragment(rng: random.Random, frame: bytearray) -> None:
    at = _l3_offset(frame) + 6
    if len(frame) >= at + 2:
        frame[at : at + 2] = struct.pack("!H", rng.choice((0, 0x2000, 0x4000, 1, 0x2001, 0x1FFF)))


def _truncate(rng: random.Random, frame: bytearray) -> None:
    del frame[rng.randint(MIN_FRAME, len(frame)) :]


def _extend(rng: random.Random, frame: bytearray) -> None:
    room = MAX_FRAME - len(frame)
    if room > 0:
        frame += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, min(room, 300))))


MUTATIONS = (
    _flip_header_byte,
    _set_ethertype,
    _set_ihl,
    _set_protocol,
    _set_port,
    _set_fragment,
    _truncate,
    _extend,
)


def _random_frame(rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(MIN_FRAME, 200)))


def mutated_frames(seed: int, count: int) -> list[bytes]:
    """count frames derived from seed alone: mutated corpus frames and some random ones."""
    rng = random.Random(seed)
    corpus = _corpus()
    frames = []
    for _ in range(count):
        if rng.random() < 0.1:
            frames.append(_random_frame(rng))
            continue
        frame = bytearray(rng.choice(corpus))
        for mutate in rng.choices(MUTATIONS, k=rng.randint(1, 3)):
            mutate(rng, frame)
        frames.append(bytes(frame))
    return frames


# --- expressions ----------------------------------------------------------------------------

EXPRESSIONS: tuple[str, ...] = (
    # link layer
    "ether host 02:00:00:00:00:0a",
    "ether src 02:00:00:00:00:0c",
    "ether dst 02:00:00:00:00:0b and not ip",
    "ether broadcast",
    "ether multicast",
    "ether[0] & 1 = 0",
    "ether[12:2] = 0x88a8",
    "ether[12:2] <= 1500",
    "ether proto 0x8863",
    "arp",
    "rarp",
    "stp",
    "arp[6:2] = 2",
    # VLAN, MPLS, PPPoE
    "vlan",
    "vlan 100",
    "vlan 100 and tcp",
    "vlan 200 and ip6",
    "vlan and vlan",
    "vlan 100 or vlan 200",
    "vlan and vlan and ip",
    "mpls",
    "mpls and ip",
    "mpls 100 and mpls 200",
    "mpls and mpls and ip",
    "pppoed",
    "pppoes and ip",
    "pppoes 0x42 and tcp port 80",
    # IPv4 addresses, protocols, ports
    "ip",
    "ip and not tcp",
    "host 10.0.0.5",
    "src host 10.0.0.5",
    "dst host 10.0.0.5 and icmp",
    "net 10.0.0.0/24",
    "src net 172.16.0.0/12 or dst net 192.168.0.0/16",
    "tcp",
    "udp",
    "icmp",
    "tcp port 80",
    "tcp port 443 and host 10.0.0.5",
    "not port 22",
    "src port 53 or dst port 53",
    "udp port 53 and udp[10] & 0x80 != 0",
    "portrange 1-100",
    "tcp dst portrange 8000-8100",
    "port 9 or port 10",
    "ip proto 47",
    "ip multicast",
    "ip[8] = 1",
    "icmp[icmptype] = icmp-echo",
    "icmp[icmptype] = icmp-echoreply or icmp[icmptype] = icmp-unreach",
    # TCP flags and payload
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) = (tcp-syn|tcp-ack)",
    "tcp[tcpflags] & (tcp-fin|tcp-rst) != 0",
    "tcp[tcpflags] & tcp-push != 0",
    "tcp[13] & 2 != 0",
    "tcp[13] = 0",
    "tcp[4:4] = 1000",
    "tcp[((tcp[12] & 0xf0) >> 2):4] = 0x47455420",
    # IPv4 header fields, fragments, options
    "ip[6:2] & 0x1fff != 0",
    "ip[6] & 0x20 != 0",
    "ip[0] & 0xf > 5",
    "ip[0] & 0xf < 5",
    "ip[2:2] > 500",
    # arithmetic: every ALU op with a constant and with X
    "ip[2:2] - ((ip[0] & 0xf) << 2) > 40",
    "ip[2:2] / 4 > 10",
    "ip[2:2] % 3 = 1",
    "ip[2:2] * 2 > 2000",
    "(ip[8] * ip[9]) > 100",
    # A divisor read from the packet may be 0 at run time: cBPF then rejects the packet.
    # (libpcap refuses `/ (ip[0] & 0xf)` outright: it mistakes the load of index 0 for a
    # constant-zero divisor, so the header-length divisor is written as ether[14].)
    "ip[2:2] / (ether[14] & 0xf) > 10",
    "ip[2:2] / (ip[1] & 3) > 100",
    "ip[2:2] % (ip[1] & 3) = 0",
    "ip[2:2] - 20 > 1000",
    "ip[1] << 2 > 100",
    "ip[2] >> (ip[3] & 7) = 0",
    "ip[8] << (ip[9] & 3) > 200",
    "(-ip[8]) & 0xff > 200",
    "ip[8] ^ ip[9] = 70",
    "ip[8] ^ 0xff = 191",
    "ip[1] | 0x03 = 0x03",
    "ip[0] | ip[1] = 0x45",
    "ip[8] & ip[9] != 0",
    "tcp[0:2] + tcp[2:2] > 50000",
    "ip[8] + 200 > 255",
    "ip[8] - ip[9] < 50",
    # comparisons of two packet values jump on X
    "ip[2:2] > ip[8]",
    "ip[8] >= ip[9]",
    "ip[8] != ip[9] + 1",
    # lengths and far-away loads
    "len >= 1000",
    "len <= 60",
    "greater 100",
    "less 64",
    "len = 1514",
    "ether[1400] = 0",
    "ip[1000:2] = 0",
    # IPv6
    "ip6",
    "ip6 and tcp",
    "ip6 and udp",
    "icmp6",
    "ip6 multicast",
    "ip6 host 2001:db8::5",
    "ip6 net 2001:db8::/64 and not icmp6",
    "ip6 protochain 6",
    "ip6 protochain 17",
    "protochain 6",
    "ip6[6] = 0",
    # tunnels
    "udp port 4789",
    "udp port 4789 and udp[8] = 0x08",
    "geneve",
    "geneve and ip",
    "ip proto 47 and ip[22:2] = 0x0800",
)


# --- pcap files and the tcpdump oracle ------------------------------------------------------

PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D


def write_pcap(path: str | Path, frames: Iterable[bytes]) -> None:
    """Classic little-endian pcap; record i has ts_sec = TS_BASE + i, caplen = len."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        for i, frame in enumerate(frames):
            out.write(struct.pack("<IIII", TS_BASE + i, 0, len(frame), len(frame)))
            out.write(frame)


def read_pcap_timestamps(data: bytes) -> list[int]:
    """Timestamps (ns) of every record in a classic pcap of either byte order and precision."""
    for endian in "<>":
        (magic,) = struct.unpack(endian + "I", data[:4])
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            break
    else:
        raise ValueError(f"not a classic pcap (magic {data[:4].hex()})")
    unit = 1000 if magic == PCAP_MAGIC_US else 1
    stamps, at = [], 24
    while at < len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, at)
        stamps.append(sec * 1_000_000_000 + frac * unit)
        at += 16 + caplen
    return stamps


def _tcpdump() -> str:
    path = shutil.which("tcpdump")
    if path is None:
        raise RuntimeError("tcpdump is not installed (it is the oracle for filter tests)")
    return path


def _run_tcpdump(args: Sequence[str], expression: str) -> bytes:
    # "--" so that an expression starting with "-" is never taken for an option.
    cmd = [_tcpdump(), *args, "--", expression]
    result = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"tcpdump failed on {expression!r} (exit {result.returncode}): {stderr}")
    return result.stdout


def tcpdump_program(pcap_path: str | Path, expression: str) -> str:
    """The cBPF listing (`tcpdump -d`) libpcap compiles for expression on pcap_path's link."""
    return _run_tcpdump(["-d", "-r", str(pcap_path)], expression).decode()


def tcpdump_selects(pcap_path: str | Path, expression: str) -> list[int]:
    """Indexes (file order, from 0) of the records `tcpdump -r pcap_path EXPR` selects."""
    stamps = read_pcap_timestamps(Path(pcap_path).read_bytes())
    index_of = {ts: i for i, ts in enumerate(stamps)}
    if len(index_of) != len(stamps):
        raise ValueError(f"{pcap_path}: timestamps are not distinct, records cannot be matched")
    selected = _run_tcpdump(["-r", str(pcap_path), "-nn", "-w", "-"], expression)
    return [index_of[ts] for ts in read_pcap_timestamps(selected)]
