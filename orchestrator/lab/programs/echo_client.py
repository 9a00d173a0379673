"""Echo client: one TCP connection and one UDP datagram to each "addr,port" per round, rounds
until argv[1] seconds have passed (at least one); prints {"tcp": {addr: n}, "udp": {...}}.

Run as `python3 -I -c TEXT SECONDS ADDR,PORT...` (see traffic.py).
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main() -> None:
    """Run the rounds, then print the counts of echoes received per address."""
    end = time.monotonic() + float(sys.argv[1])
    targets = [(a, int(p)) for a, p in (t.rsplit(",", 1) for t in sys.argv[2:])]
    counts = {"tcp": {a: 0 for a, _ in targets}, "udp": {a: 0 for a, _ in targets}}
    payload = b"xdpcap lab traffic"
    while True:
        for addr, port in targets:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            try:
                with socket.create_connection((addr, port), timeout=1) as s:
                    s.sendall(payload)
                    counts["tcp"][addr] += s.recv(2048) == payload
            except OSError:
                pass
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.settimeout(1)
                    s.sendto(payload, (addr, port))
                    counts["udp"][addr] += s.recv(2048) == payload
            except OSError:
                pass
        if time.monotonic() >= end:
            break
        time.sleep(0.2)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
