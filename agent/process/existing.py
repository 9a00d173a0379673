"""Sockets that exist before the capture starts, attributed from /proc.

sock_diag lists this network namespace's TCP and UDP sockets with their cookies (asking
for a cookie makes the kernel assign one) and inode numbers; /proc/<pid>/fd/* links name
the socket inodes each process holds. Together: cookie -> pid, for the `procs` table,
so a connection opened long before the capture is attributed like a new one.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NLMSG_ERROR = 2
_NLMSG = struct.Struct("<IHHII")  # len, type, flags, seq, pid
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (48).
_REQUEST = struct.Struct("<BBBxI48x")
# struct inet_diag_msg: family, state, timer, retrans, sockid (sport, dport, src, dst, if,
# cookie as two u32: low first), expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("<BBBB HH 16s16s I Q IIIII")
_ALL_STATES = 0xFFFFFFFF
_TIMEOUT_S = 5.0


def socket_cookies() -> dict[int, int]:
    """{inode: cookie} of every TCP and UDP socket (IPv4 and IPv6) of this namespace."""
    found: dict[int, int] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for protocol in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            for inode, cookie in _dump(family, protocol):
                if inode:  # 0: TIME_WAIT and request sockets, owned by no process
                    found[inode] = cookie
    return found


def _dump(family: int, protocol: int) -> Iterator[tuple[int, int]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(_TIMEOUT_S)
        body = _REQUEST.pack(family, protocol, 0, _ALL_STATES)
        flags = NLM_F_REQUEST | NLM_F_DUMP
        nl.send(_NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + body)
        while True:
            data = nl.recv(1 << 16)
            pos = 0
            while pos + _NLMSG.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, pos)
                if kind == NLMSG_DONE or length < _NLMSG.size:
                    return
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("<i", data, pos + _NLMSG.size)
                    raise OSError(-err, f"sock_diag: {os.strerror(-err)}")
                if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSG.size + _MSG.size:
                    fields = _MSG.unpack_from(data, pos + _NLMSG.size)
                    yield fields[-1], fields[9]  # inode, cookie
                pos += (length + 3) & ~3


def socket_owners(proc: str = "/proc") -> Iterator[tuple[int, int]]:
    """(socket inode, pid) for every socket fd of every process we can see."""
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        fd_dir = f"{proc}/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                yield int(target[8:-1]), int(entry.name)
