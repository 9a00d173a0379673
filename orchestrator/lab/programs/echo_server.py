"""Echo server run inside a host: TCP and UDP on one port, IPv4 and IPv6 on one dual-stack
socket each; prints the port, then serves until its own deadline (argv[1] seconds).

Run as `python3 -I -c TEXT SECONDS` (see traffic.py).
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import time


def sock(kind: int) -> socket.socket:
    """A dual-stack IPv6 socket of KIND: it serves IPv4 too, as ::ffff:a.b.c.d."""
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return s


def main() -> None:
    """Bind, print the port, echo until the deadline."""
    end = time.monotonic() + float(sys.argv[1])
    tcp = sock(socket.SOCK_STREAM)
    tcp.bind(("::", 0))
    tcp.listen(64)
    port = tcp.getsockname()[1]
    udp = sock(socket.SOCK_DGRAM)
    udp.bind(("::", port))
    print(port, flush=True)
    while time.monotonic() < end:
        ready, _, _ = select.select([tcp, udp], [], [], 0.2)
        if udp in ready:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data, peer)
        if tcp in ready:
            conn, _ = tcp.accept()
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    conn.sendall(conn.recv(2048))


if __name__ == "__main__":
    main()
