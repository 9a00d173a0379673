"""The kernel's own classic BPF, reached through a socket filter (SO_ATTACH_FILTER).

Attaching runs Linux's checker (bpf_check_classic); a datagram the filter rejects is
dropped silently, so a non-blocking receive after each send tells the verdict.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from xdpcap.agent.filter import cbpf

SO_ATTACH_FILTER = 26


class KernelSocketFilter:
    """An AF_UNIX datagram pair whose receiving end runs `program`."""

    def __init__(self, program: cbpf.Program) -> None:
        self.sender, self.receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            insns = b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in program)
            self._insns = ctypes.create_string_buffer(insns, max(len(insns), 1))
            fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(self._insns))
            self.receiver.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError:
            self.close()
            raise
        self.receiver.setblocking(False)

    def accepts(self, frame: bytes) -> bool:
        self.sender.send(frame)
        try:
            self.receiver.recv(65536)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


def kernel_accepts(program: cbpf.Program) -> bool:
    """Whether Linux's classic-BPF checker takes the program as a socket filter."""
    try:
        KernelSocketFilter(program).close()
    except OSError:
        return False
    return True
