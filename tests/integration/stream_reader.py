"""A pcapng stream reader that notes when each block arrives: `python stream_reader.py
OUT.json [--stop-after N] [--save FILE] [--progress FILE] [--throttle BYTES_PER_S]`
reads stdin (slowly with --throttle: a busy Wireshark) to its end (or
closes it after N packets) and writes what it saw as JSON: per packet [arrival ns,
interface id, timestamp ns, captured length, a hash of its bytes]. --save keeps the raw
stream; --progress is rewritten after each read with the packets per interface so far.

Independent of xdpcap's own reader on purpose (its own little-endian block walk), so
the tests of the live stream do not check xdpcap with xdpcap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--save")
    parser.add_argument("--progress")
    parser.add_argument("--throttle", type=int, help="read at most this many bytes a second")
    args = parser.parse_args()
    stop_after = args.stop_after
    save = open(args.save, "wb") if args.save else None  # noqa: SIM115
    fd = sys.stdin.fileno()
    buffer = b""
    seen: dict = {"interfaces": [], "packets": [], "statistics": 0, "sections": 0}
    first_byte_ns = None
    counts: dict[int, int] = {}  # packets per interface id
    while True:
        if args.throttle:
            time.sleep(4096 / args.throttle)
        chunk = os.read(fd, 4096 if args.throttle else 1 << 16)
        now = time.time_ns()
        if not chunk:
            break
        if first_byte_ns is None:
            first_byte_ns = now
        if save is not None:
            save.write(chunk)
        buffer += chunk
        pos = 0
        while len(buffer) - pos >= 12:
            block_type, length = struct.unpack_from("<II", buffer, pos)
            if length < 12 or length % 4:
                raise SystemExit(f"bad block length {length}")
            if len(buffer) - pos < length:
                break
            if struct.unpack_from("<I", buffer, pos + length - 4)[0] != length:
                raise SystemExit("trailing block length differs")
            if block_type == 0x0A0D0D0A:
                seen["sections"] += 1
            elif block_type == 1:
                name = _if_name(buffer[pos + 16 : pos + length - 4])
                seen["interfaces"].append({"name": name, "at_packet": len(seen["packets"])})
            elif block_type == 6:
                if_id, high, low, cap_len = struct.unpack_from("<IIII", buffer, pos + 8)
                data = buffer[pos + 28 : pos + 28 + cap_len]
                digest = hashlib.blake2b(data, digest_size=8).hexdigest()
                seen["packets"].append([now, if_id, high << 32 | low, cap_len, digest])
                counts[if_id] = counts.get(if_id, 0) + 1
            elif block_type == 5:
                seen["statistics"] += 1
            pos += length
        buffer = buffer[pos:]
        if args.progress:
            _progress(args.progress, seen, counts)
        if stop_after is not None and len(seen["packets"]) >= stop_after:
            break  # the reader goes away: the writer gets EPIPE
    seen["first_byte_ns"] = first_byte_ns
    seen["trailing_bytes"] = len(buffer)
    seen["ended_ns"] = time.time_ns()
    if save is not None:
        save.close()
    with open(args.out, "w") as f:
        json.dump(seen, f)
    return 0


def _progress(path: str, seen: dict, counts: dict[int, int]) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump({"packets_per_interface": counts, "interfaces": len(seen["interfaces"])}, f)
    os.replace(path + ".tmp", path)


def _if_name(options: bytes) -> str | None:
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from("<HH", options, pos)
        if code == 0:
            break
        if code == 2:
            return options[pos + 4 : pos + 4 + length].decode()
        pos += 4 + length + (-length & 3)
    return None


if __name__ == "__main__":
    sys.exit(main())
