"""Capture files for the clock alignment's tests: hosts pinging each other with known
clocks (shared by test_clocksync.py's inputs and test_join.py)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

from xdpcap.agent.pcapng import PcapngWriter

US = 1_000
T0 = 1_700_000_000 * 10**9
IN, OUT = 1, 2


def address(host: int) -> bytes:
    return bytes([10, 0, 0, host + 1])


A, B = b"\x0a\0\0\x01", b"\x0a\0\0\x02"  # two hosts' addresses, unless told otherwise


def ipv4(proto: int, body: bytes, ttl: int = 64, ident: int = 7, src=A, dst=B) -> bytes:
    length = 20 + len(body)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, ident, 0, ttl, proto, 0, src, dst) + body


def eth(ip: bytes, vlan: bool = False) -> bytes:
    tag = b"\x81\x00\x00\x05" if vlan else b""
    return b"\x02" * 6 + b"\x04" * 6 + tag + b"\x08\x00" + ip


def echo(kind: int, echo_id: int, seq: int, **kw) -> bytes:
    """An ICMP echo; keywords go to the IPv4 header (ttl, ident, src, dst)."""
    return ipv4(1, struct.pack("!BBHHH", kind, 0, 0xBEEF, echo_id, seq) + b"payload", **kw)


def capture(path: Path, packets: list[tuple[int, bytes, int]]) -> Path:
    """A pcapng of (time ns, frame, epb_flags direction) packets, sorted by time."""
    with path.open("wb") as f:
        writer = PcapngWriter(f)
        writer.add_interface("eth0", snaplen=65535)
        for ts, frame, direction in sorted(packets, key=lambda p: p[0]):
            writer.write_packet(0, ts, frame, len(frame), flags=direction)
        writer.flush()
    return path


def skewed_pair(folder: Path) -> list[Path]:
    """a pings b, b's clock 250 ms ahead, 40 µs each way (test_clocksync's first pass)."""
    a, b = address(0), address(1)
    skew_b, delay = 250_000 * US, 40 * US
    on_a, on_b = [], []
    for seq in range(20):
        t = T0 + seq * 100_000 * US
        request = eth(echo(8, 1, seq, ident=seq, src=a, dst=b))
        reply = eth(echo(0, 1, seq, ident=1000 + seq, src=b, dst=a))
        on_a.append((t, request, OUT))
        on_b.append((t + delay + skew_b, request, IN))
        on_b.append((t + delay + 30 * US + skew_b, reply, OUT))
        on_a.append((t + 2 * delay + 30 * US, reply, IN))
    return [capture(folder / "a.pcapng", on_a), capture(folder / "b.pcapng", on_b)]


def ingress_only(folder: Path) -> list[Path]:
    """-Q in: each host saw only what arrived; b's clock 80 ms behind."""
    a, b = address(0), address(1)
    skew_b = -80_000 * US
    on_a, on_b = [], []
    for seq in range(10):
        t = T0 + seq * 100_000 * US
        on_b.append((t + 50 * US + skew_b, eth(echo(8, 1, seq, src=a, dst=b)), IN))
        on_a.append((t + 110 * US, eth(echo(0, 1, seq, src=b, dst=a)), IN))
        on_a.append((t + 500 * US, eth(echo(8, 2, seq, src=b, dst=a)), IN))
        on_b.append((t + 560 * US + skew_b, eth(echo(0, 2, seq, src=a, dst=b)), IN))
    return [capture(folder / "a.pcapng", on_a), capture(folder / "b.pcapng", on_b)]


def drifting_mesh(
    folder: Path,
    hosts: int = 3,
    seconds: int = 30,
    per_second: int = 20,
    seed: int = 5,
    before: int = 0,
) -> tuple[list[Path], list[int], list[int]]:
    """Every host pings every other for `seconds`, with offsets up to ±50 ms and drifts up
    to ±50 ppm; delays 20-300 µs. `before` non-IP frames per host come first (a capture
    longer than what is shared). Returns the paths, the offsets and the drifts (ppb)."""
    rng = random.Random(seed)
    offsets = [0] + [rng.randint(-50_000, 50_000) * US for _ in range(hosts - 1)]
    drifts = [0] + [rng.randint(-50_000, 50_000) for _ in range(hosts - 1)]

    def read(host: int, t: int) -> int:
        return t + offsets[host] + (t - T0) * drifts[host] // 1_000_000_000

    seen: list[list[tuple[int, bytes, int]]] = [[] for _ in range(hosts)]
    arp = b"\xff" * 12 + b"\x08\x06" + bytes(28)
    for host in range(hosts):
        seen[host] += [(read(host, T0 - 10**9 + i * 1_000), arp, IN) for i in range(before)]
    seq = 0
    for step in range(seconds * per_second):
        t0 = T0 + step * (10**9 // per_second)
        for a in range(hosts):
            for b in range(hosts):
                if a == b:
                    continue
                seq += 1
                t = t0 + rng.randrange(10**9 // per_second // 2)
                there = t + rng.randint(20, 300) * US
                back = there + 15 * US
                home = back + rng.randint(20, 300) * US
                request = eth(echo(8, a, seq & 0xFFFF, ident=seq, src=address(a), dst=address(b)))
                reply = eth(echo(0, a, seq & 0xFFFF, ident=seq, src=address(b), dst=address(a)))
                seen[a] += [(read(a, t), request, OUT), (read(a, home), reply, IN)]
                seen[b] += [(read(b, there), request, IN), (read(b, back), reply, OUT)]
    paths = [capture(folder / f"h{h}.pcapng", seen[h]) for h in range(hosts)]
    return paths, offsets, drifts


# -- journeys: known losses, duplicates, reordering and delays --------------------------
def udp(sport: int, dport: int, ident: int, src: bytes, dst: bytes, payload: bytes = b"") -> bytes:
    body = payload or struct.pack("!I", ident) * 4
    return eth(
        ipv4(
            17,
            struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body,
            ident=ident,
            src=src,
            dst=dst,
        )
    )


JOURNEY_SKEW = [0, 250_000 * US, -80_000 * US]  # a, b, c: each clock minus a's
JOURNEY_C_WINDOW = (T0 - 80_000 * US, T0 + 200_000 * US - 80_000 * US)  # on c's clock


def journeys_mesh(folder: Path) -> list[Path]:
    """Three hosts, b 250 ms ahead of a and c 80 ms behind, with known journeys:

    - a → b: 10 UDP packets 10 ms apart, delays 100 + 10·i µs; #3 and #7 lost; #5
      arrives twice (1 µs apart); #8 takes 15 ms and arrives after #9 (reordered).
    - b → a: 10 UDP packets, 50 µs each, none lost.
    - a → c: 5 to port 9999 (#1 and #4 lost, delays 200 µs), 3 to port 7777 never
      arriving (c's filter is "udp port 9999": not lost), and 2 to port 9999 after c's
      window closed (not lost either).
    Every packet is seen leaving its sender; c captures inbound only.
    """
    a, b, c = address(0), address(1), address(2)
    on = [[], [], []]

    def send(sender: int, receiver: int, frame: bytes, t: int, delays: list[int]) -> None:
        on[sender].append((t + JOURNEY_SKEW[sender], frame, OUT))
        for delay in delays:
            on[receiver].append((t + delay + JOURNEY_SKEW[receiver], frame, IN))

    for i in range(10):
        t = T0 + i * 10_000 * US
        frame = udp(4000, 5000, 100 + i, a, b)
        delay = 15_000 * US if i == 8 else (100 + 10 * i) * US
        send(0, 1, frame, t, [] if i in (3, 7) else [delay, delay + US] if i == 5 else [delay])
        send(1, 0, udp(5000, 4000, 200 + i, b, a), t + 3_000 * US, [50 * US])
    for i in range(5):
        t = T0 + i * 10_000 * US + 1_000 * US
        send(0, 2, udp(4001, 9999, 300 + i, a, c), t, [] if i in (1, 4) else [200 * US])
    for i in range(3):
        send(0, 2, udp(4001, 7777, 400 + i, a, c), T0 + i * 10_000 * US + 2_000 * US, [])
    for i in range(2):
        send(0, 2, udp(4001, 9999, 500 + i, a, c), T0 + 300_000 * US + i * US, [])
    names = ["a", "b", "c"]
    return [capture(folder / f"{names[h]}.pcapng", on[h]) for h in range(3)]
