"""The XDP program on receive: inbound packets, before the stack sees them.

Attaching goes through a BPF link where the kernel has them (5.9+): the kernel refuses
it with EBUSY when another XDP program is attached, and drops it when our process dies,
even by kill -9. Older kernels fall back to a netlink attach with
XDP_FLAGS_UPDATE_IF_NOEXIST; a program of ours left behind by a killed agent is then
found by name and removed by the next run (under the interface lock, so never one a
live agent is using).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from .. import contract, libbpf, netdev
from ..errors import AgentError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
MODE_FLAGS = {"auto": 0, "native": XDP_FLAGS_DRV_MODE, "skb": XDP_FLAGS_SKB_MODE}


@dataclass(frozen=True)
class _ProgramRef:
    """What bcc's attach_xdp needs of a program: its fd."""

    fd: int


def refuse_foreign(iface: str, present: netdev.AttachedProgram | None) -> None:
    """xdpcap never replaces another XDP program: say so, naming it."""
    if present is not None and present.name != contract.PROGRAM_NAME:
        raise AgentError(
            f"{iface}: an XDP program is already attached ({present.describe()}); "
            "xdpcap never replaces it"
        )


class XdpHook:
    direction = contract.INBOUND
    program = contract.PROGRAM_NAME

    def __init__(self, iface: str, mode: str, bcc: Callable[[], ModuleType]) -> None:
        self.iface = iface
        self.mode_requested = mode
        self.mode: str | None = None  # as attached: native or skb
        self.method: str | None = None  # bpf_link or netlink
        self._bcc = bcc  # bcc, imported only for the netlink path
        self._link_fd: int | None = None
        self._netlink_flags: int | None = None

    def attach(self, prog_fd: int) -> None:
        """Attach without ever replacing a program that is already there."""
        present = netdev.attached_program(self.iface)
        if present is not None and not (
            present.name == contract.PROGRAM_NAME and self._remove_stale(present)
        ):
            raise AgentError(
                f"{self.iface}: an XDP program is already attached ({present.describe()}); "
                "xdpcap never replaces it"
            )
        ifindex = netdev.ifindex(self.iface)
        flags = MODE_FLAGS[self.mode_requested]
        fd = libbpf.link_create(prog_fd, ifindex, libbpf.BPF_XDP_ATTACH_TYPE, flags)
        if fd >= 0:
            self._link_fd = fd
            self.method = "bpf_link"
        elif -fd in (errno.EBUSY, errno.EEXIST):
            present = netdev.attached_program(self.iface)
            what = present.describe() if present else "another program"
            raise AgentError(
                f"{self.iface}: an XDP program is already attached ({what}); "
                "xdpcap never replaces it"
            )
        elif (
            -fd in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
            and self.mode_requested != "native"
        ):
            self._attach_netlink(prog_fd, flags)
        else:
            raise AgentError(
                f"{self.iface}: cannot attach XDP in {self.mode_requested} mode: {os.strerror(-fd)}"
            )
        attached = netdev.attached_program(self.iface)
        self.mode = attached.mode if attached else self.mode_requested

    def _attach_netlink(self, prog_fd: int, mode_flags: int) -> None:
        flags = mode_flags | XDP_FLAGS_UPDATE_IF_NOEXIST
        try:
            self._bcc().BPF.attach_xdp(self.iface.encode(), _ProgramRef(prog_fd), flags)
        except Exception as exc:  # bcc raises bare Exception
            raise AgentError(f"{self.iface}: cannot attach XDP: {exc}") from exc
        self._netlink_flags = flags
        self.method = "netlink"

    def _remove_stale(self, present: netdev.AttachedProgram) -> bool:
        """Remove our own program left by a killed agent (netlink attach only).

        Called with the interface lock held, so no live agent owns it. A program held by
        a BPF link cannot be removed this way (and the kernel drops those on exit).
        """
        flags = XDP_FLAGS_SKB_MODE if present.mode == "skb" else 0
        try:
            self._bcc().BPF.remove_xdp(self.iface.encode(), flags)
        except Exception:  # bcc raises bare Exception
            return False
        return netdev.attached_program(self.iface) is None

    def detach(self) -> None:
        """Detach; safe to call more than once and on a half-attached hook."""
        if self._link_fd is not None:
            os.close(self._link_fd)  # the last reference: the kernel detaches the program
            self._link_fd = None
        if self._netlink_flags is not None:
            try:
                self._bcc().BPF.remove_xdp(self.iface.encode(), self._netlink_flags & ~1)
            finally:
                self._netlink_flags = None

    def describe(self) -> str:
        return f"XDP ingress {self.mode or self.mode_requested} ({self.method})"
