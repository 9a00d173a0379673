"""After another XDP program: count what it aborted and redirected on our interface.

At tc ingress we see only what the owner passed to the stack. Its aborted packets
(xdp:xdp_exception) and redirected ones (xdp:xdp_redirect, xdp:xdp_redirect_err) are
counted by raw tracepoint programs of the sampler's compile, inside the capture window,
for this interface of this network namespace only (the tracepoints fire for every
device on the machine). Each attachment is a raw tracepoint link: it goes with our
process, kill -9 included. Where they do not load (no BTF to find the kernel's offsets,
a kernel that refuses raw tracepoints), the capture goes on without them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable

from .. import contract, libbpf
from ..process import btf

SO_NETNS_COOKIE = 71  # linux/socket.h (5.14+); Python's socket module lacks it
_KEY0 = struct.pack("<I", 0)


class OwnerEventsError(OSError):
    """The owner's tracepoints could not be watched; the message says why."""


def netns_cookie() -> int:
    """Our network namespace's cookie, as the kernel's struct net holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        except OSError as exc:
            raise OwnerEventsError(f"no SO_NETNS_COOKIE: {exc.strerror or exc}") from exc
    return struct.unpack("<Q", raw)[0]


class OwnerEvents:
    """The attached tracepoint programs; close() detaches them."""

    def __init__(self, ifindex: int) -> None:
        self.ifindex = ifindex
        self._fds: list[int] = []  # programs and links, closed in reverse order
        self._events_fd = -1

    def attach(
        self,
        bytecode: Callable[[str], bytes],
        license: str,
        map_fd: Callable[[str], int],
    ) -> None:
        """Arm the watch on our device, then load and attach; on failure nothing stays."""
        try:
            offsets = btf.members(
                [("net_device", "ifindex"), ("net_device", "nd_net"), ("net", "net_cookie")]
            )
            watch = contract.OWNER_WATCH.pack(
                self.ifindex,
                offsets[("net_device", "ifindex")],
                offsets[("net_device", "nd_net")],
                offsets[("net", "net_cookie")],
                netns_cookie(),
            )
            libbpf.map_update(map_fd("owner_watch"), _KEY0, watch)
            self._events_fd = map_fd("owner_events")
            for name, tracepoints in contract.OWNER_EVENT_PROGRAMS.items():
                self._attach_one(name, tracepoints, bytecode(name), license)
        except btf.BtfError as exc:
            self.close()
            raise OwnerEventsError(str(exc)) from exc
        except BaseException:
            self.close()
            raise

    def _attach_one(self, name: str, tracepoints: tuple[str, ...], insns: bytes, lic: str) -> None:
        try:
            prog_fd = libbpf.prog_load(libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT, name, lic, insns)
        except OSError as exc:
            raise OwnerEventsError(f"{name} not loaded: {exc.strerror or exc}") from exc
        self._fds.append(prog_fd)
        required, *older = tracepoints
        for tracepoint in (required, *older):
            link = libbpf.raw_tracepoint_open(tracepoint, prog_fd)
            if link >= 0:
                self._fds.append(link)
            elif tracepoint == required:
                raise OwnerEventsError(f"raw tracepoint xdp:{tracepoint}: {os.strerror(-link)}")
            # An older kernel's variant that this one does not have (or never fires).

    def counts(self) -> dict[str, int]:
        """Each event's count so far, by its summary name (contract.OWNER_EVENTS)."""
        cpus = libbpf.possible_cpus()
        counts = {}
        for index, name in enumerate(contract.OWNER_EVENTS):
            raw = libbpf.map_lookup(self._events_fd, struct.pack("<I", index), 8 * cpus)
            counts[name] = sum(struct.unpack(f"<{cpus}Q", raw))
        return counts

    def close(self) -> None:
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop())


def describe(counts: dict[str, int]) -> str:
    """ "aborted 5, redirected 5": for the summary line; the other two only when non-zero."""
    shown = ("aborted", "redirected")
    return ", ".join(
        f"{name.replace('_', ' ')} {n}" for name, n in counts.items() if name in shown or n
    )
