"""The tc programs: outbound packets at egress, as the stack hands them to the device;
inbound packets at ingress where another XDP program owns the interface (what it passed
to the stack).

Where the kernel has tcx (6.6+) the program goes in through a tcx link, first in the
chain (it sees what the stack sent before another program changes or drops it); the
kernel removes the link when our process dies, kill -9 included, and the chain's other
programs never notice.

Older kernels (Debian 12 runs 6.1) get a direct-action cls_bpf filter on the clsact
qdisc, with our own handle and priority. Nothing else there is ever touched: the qdisc
is created if missing (and left, empty and inert, when we go: another tool may have
added a filter to it meanwhile), and only the filter with our handle, priority and
program name is ever removed — ours at the end, or one a killed run left behind, found
at the next start under the interface lock, so never one a live agent is using.

Both return "next"/"unspecified": every other tc program still runs, and the packet
goes on as if we were not there.
"""

from __future__ import annotations

import contextlib
import errno
import os

from .. import contract, libbpf, netdev
from ..errors import AgentError
from ..netdev import inspect_interface

# Our legacy filter's identity on either tc hook: the handle spells "xdpc"; priority 1
# runs first, as the tcx link does.
TC_HANDLE = 0x78647063
TC_PRIORITY = 1
ATTACH_CHOICES = ("auto", "tcx", "clsact")


class TcEgressHook:
    direction = contract.OUTBOUND
    program = contract.EGRESS_PROGRAM_NAME
    where = "egress"
    tc_point = libbpf.BPF_TC_EGRESS
    tcx_type = libbpf.BPF_TCX_EGRESS

    def __init__(self, iface: str, how: str = "auto") -> None:
        if how not in ATTACH_CHOICES:
            raise AgentError(
                f"{self.where} attach {how!r}: expected one of {', '.join(ATTACH_CHOICES)}"
            )
        self.iface = iface
        self.how = how
        self.method: str | None = None  # tcx or clsact
        self._ifindex: int | None = None
        self._link_fd: int | None = None
        self._filter_prog_id: int | None = None  # the program our clsact filter runs

    def attach(self, prog_fd: int) -> None:
        self._ifindex = inspect_interface(self.iface).ifindex
        # A filter of ours a killed run left goes whichever way we attach now: it would
        # go on running on every packet.
        with contextlib.suppress(OSError):  # no clsact qdisc: nothing of ours there
            self._remove_stale(refuse_foreign=False)
        if self.how != "clsact":
            fd = libbpf.link_create(prog_fd, self._ifindex, self.tcx_type, libbpf.BPF_F_BEFORE)
            if fd >= 0:
                self._link_fd, self.method = fd, "tcx"
                return
            # A kernel without tcx does not know the attach type: EINVAL.
            if self.how == "tcx" or -fd not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise AgentError(
                    f"{self.iface}: cannot attach the {self.where} program with tcx: "
                    f"{os.strerror(-fd)}"
                )
        self._attach_clsact(prog_fd)

    def _attach_clsact(self, prog_fd: int) -> None:
        assert self._ifindex is not None
        try:
            libbpf.tc_egress_hook_create(self._ifindex, self.tc_point)
            self._remove_stale(refuse_foreign=True)
            prog_id = libbpf.tc_egress_attach(
                self._ifindex, prog_fd, TC_HANDLE, TC_PRIORITY, self.tc_point
            )
        except OSError as exc:
            raise AgentError(
                f"{self.iface}: cannot attach the {self.where} filter to clsact: "
                f"{exc.strerror or exc}"
            ) from exc
        self._filter_prog_id = prog_id
        self.method = "clsact"

    def _remove_stale(self, *, refuse_foreign: bool) -> None:
        """A filter in our place is ours from a killed run (removed), or not: refused
        when we need the place, else left alone."""
        assert self._ifindex is not None
        prog_id = libbpf.tc_egress_query(self._ifindex, TC_HANDLE, TC_PRIORITY, self.tc_point)
        if prog_id is None:
            return
        name = libbpf.prog_name(prog_id)
        if name != self.program:
            if not refuse_foreign:
                return
            raise AgentError(
                f"{self.iface}: the {self.where} filter handle {TC_HANDLE:#x} priority "
                f"{TC_PRIORITY} holds program {prog_id} {name!r}; xdpcap never replaces it"
            )
        libbpf.tc_egress_detach(self._ifindex, TC_HANDLE, TC_PRIORITY, self.tc_point)

    def detach(self) -> None:
        """Detach; safe to call more than once and on a half-attached hook."""
        if self._link_fd is not None:
            os.close(self._link_fd)  # the last reference: the kernel unlinks the program
            self._link_fd = None
        if self._filter_prog_id is not None:
            ours, self._filter_prog_id = self._filter_prog_id, None
            assert self._ifindex is not None
            try:
                # Someone may have replaced the filter in our place meanwhile (`tc filter
                # replace`): then it is theirs now, and stays.
                point = self.tc_point
                if libbpf.tc_egress_query(self._ifindex, TC_HANDLE, TC_PRIORITY, point) != ours:
                    return
                libbpf.tc_egress_detach(self._ifindex, TC_HANDLE, TC_PRIORITY, point)
            except OSError as exc:
                # Gone with the interface (ENODEV) or with its qdisc (EINVAL, ENOENT):
                # nothing of ours is left to remove.
                if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise

    def describe(self) -> str:
        return f"{self.method or self.how} egress"


class TcIngressHook(TcEgressHook):
    """Inbound behind another XDP program: at tc ingress, what that program passed to
    the stack. Its drops, redirects and XDP_TX never get here, and the description says
    so. First in the tc chain (tcx BPF_F_BEFORE, or clsact priority 1), like egress."""

    direction = contract.INBOUND
    program = contract.INGRESS_PROGRAM_NAME
    where = "ingress"
    tc_point = libbpf.BPF_TC_INGRESS
    tcx_type = libbpf.BPF_TCX_INGRESS

    def __init__(self, iface: str, how: str, behind: netdev.AttachedProgram) -> None:
        super().__init__(iface, how)
        self.behind = behind

    def describe(self) -> str:
        owner = f"XDP program {self.behind.name} (id {self.behind.prog_id})"
        return (
            f"inbound after {owner} at {self.method or self.how} ingress: "
            "its drops, redirects and XDP_TX are not seen"
        )


def tcx_expected(release: str) -> bool:
    """Whether this kernel release should have tcx (6.6+): for preflight's report; the
    attach itself tries tcx and falls back on what the kernel answers."""
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 6)
