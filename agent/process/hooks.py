"""Attach the process attribution programs, each as something that dies with the agent.

cgroup socket hooks and sock_ops on the root cgroup v2 go through BPF links (a link fd,
not a classic cgroup attachment, so nothing stays attached after kill -9); the accept
kretprobe is a perf event of the kprobe PMU with the program set on it; the exec
tracepoint is a raw tracepoint fd. Closing the fds detaches everything.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import struct
from collections.abc import Callable
from pathlib import Path

from .. import contract, libbpf
from ..perf_ring import PERF_ATTR_SIZE, PERF_FLAG_FD_CLOEXEC
from .procinfo import cgroup2_mount

# enum bpf_attach_type (linux/bpf.h)
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_SOCK_OPS = 3
BPF_CGROUP_INET4_BIND = 8
BPF_CGROUP_INET6_BIND = 9
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_UDP6_RECVMSG = 20
BPF_CGROUP_INET_SOCK_RELEASE = 34

# (program, its type, the cgroup attach type): one load per attach type.
CGROUP_HOOKS = (
    (contract.SOCK_CREATE_PROGRAM, libbpf.BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE),
    (contract.SOCK_RELEASE_PROGRAM, libbpf.BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_RELEASE),
    *(
        (contract.SOCK_ADDR_PROGRAM, libbpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach)
        for attach in (
            BPF_CGROUP_INET4_BIND,
            BPF_CGROUP_INET6_BIND,
            BPF_CGROUP_INET4_CONNECT,
            BPF_CGROUP_INET6_CONNECT,
            BPF_CGROUP_UDP4_SENDMSG,
            BPF_CGROUP_UDP6_SENDMSG,
            BPF_CGROUP_UDP4_RECVMSG,
            BPF_CGROUP_UDP6_RECVMSG,
        )
    ),
    (contract.SOCKOPS_PROGRAM, libbpf.BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS),
)
ACCEPT_FUNCTION = "inet_csk_accept"
EXEC_TRACEPOINT = "sched_process_exec"

_KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
# perf_event_attr: type, size, config, sample_period, sample_type, read_format, flags,
# wakeup_events, bp_type, config1 (kprobe_func), config2 (probe_offset).
_KPROBE_ATTR = struct.Struct("<IIQQQQQIIQQ")
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_SYSCALL_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "i686": 336, "i386": 336}


class AttachError(OSError):
    """One of the attribution hooks could not be loaded or attached."""


def cgroup2_root() -> Path:
    """The root of the unified cgroup hierarchy; AttachError where there is none."""
    root = cgroup2_mount()
    if root is None:
        raise AttachError("no cgroup v2 hierarchy mounted (see /proc/self/mounts)")
    return root


class ProcessHooks:
    """The loaded and attached attribution programs; close() detaches them all."""

    def __init__(self) -> None:
        self._fds: list[int] = []  # programs, links, perf events: all closed at the end
        self.described: list[str] = []
        self.missing: list[str] = []  # optional hooks that did not attach, and why

    def attach(self, bytecode: Callable[[str], bytes], license: str) -> None:
        """Load every program from the sampler's compile and attach it; on any failure,
        what was attached goes again and AttachError says which hook failed."""
        try:
            self._attach_cgroup(bytecode, license)
            self._attach_exec(bytecode(contract.EXEC_PROGRAM), license)
        except BaseException:
            self.close()
            raise
        # Optional: without it (no kprobe PMU), a connection accepted during the capture
        # is attributed by the agent from /proc when its first packet is written.
        try:
            self._attach_accept(bytecode(contract.ACCEPT_PROGRAM), license)
        except AttachError as exc:
            self.missing.append(str(exc))

    def _load(self, prog_type: int, name: str, license: str, insns: bytes, attach: int) -> int:
        try:
            fd = libbpf.prog_load_typed(prog_type, name, license, insns, attach)
        except OSError as exc:
            raise AttachError(f"{name} not loaded: {exc.strerror or exc}") from exc
        self._fds.append(fd)
        return fd

    def _attach_cgroup(self, bytecode: Callable[[str], bytes], license: str) -> None:
        root = cgroup2_root()
        cgroup_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, prog_type, attach in CGROUP_HOOKS:
                prog_fd = self._load(prog_type, name, license, bytecode(name), attach)
                link = libbpf.link_create(prog_fd, cgroup_fd, attach, 0)
                if link < 0:
                    raise AttachError(
                        f"{name} not attached to {root} (attach type {attach}): "
                        f"{os.strerror(-link)}"
                    )
                self._fds.append(link)
        finally:
            os.close(cgroup_fd)
        self.described.append(f"cgroup socket hooks on {root}")

    def _attach_accept(self, insns: bytes, license: str) -> None:
        prog_fd = self._load(
            libbpf.BPF_PROG_TYPE_KPROBE, contract.ACCEPT_PROGRAM, license, insns, 0
        )
        perf_fd = _kretprobe_open(ACCEPT_FUNCTION)
        self._fds.append(perf_fd)
        libc = ctypes.CDLL(None, use_errno=True)
        for request, arg in ((_PERF_EVENT_IOC_SET_BPF, prog_fd), (_PERF_EVENT_IOC_ENABLE, 0)):
            if libc.ioctl(perf_fd, ctypes.c_ulong(request), ctypes.c_int(arg)) < 0:
                err = ctypes.get_errno()
                raise AttachError(f"kretprobe {ACCEPT_FUNCTION}: {os.strerror(err)}")
        self.described.append(f"kretprobe {ACCEPT_FUNCTION}")

    def _attach_exec(self, insns: bytes, license: str) -> None:
        prog_fd = self._load(
            libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT, contract.EXEC_PROGRAM, license, insns, 0
        )
        fd = libbpf.raw_tracepoint_open(EXEC_TRACEPOINT, prog_fd)
        if fd < 0:
            raise AttachError(f"raw tracepoint {EXEC_TRACEPOINT}: {os.strerror(-fd)}")
        self._fds.append(fd)
        self.described.append(f"raw tracepoint {EXEC_TRACEPOINT}")

    def close(self) -> None:
        """Detach and unload everything (links and perf events first: reverse order)."""
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop())


def _kretprobe_open(function: str) -> int:
    """A perf event of the kprobe PMU firing when `function` returns (no tracefs entry
    is created: it goes with its fd)."""
    try:
        pmu_type = int((_KPROBE_PMU / "type").read_text())
        # "config:0": the bit of config that makes it a return probe.
        retprobe_bit = int((_KPROBE_PMU / "format/retprobe").read_text().split(":")[1])
    except (OSError, ValueError, IndexError) as exc:
        raise AttachError(f"no kprobe PMU in {_KPROBE_PMU}: {exc}") from exc
    syscall = _SYSCALL_PERF_EVENT_OPEN.get(platform.machine())
    if syscall is None:
        raise AttachError(f"perf_event_open: unknown syscall on {platform.machine()}")
    name = ctypes.create_string_buffer(function.encode())
    attr = ctypes.create_string_buffer(PERF_ATTR_SIZE)
    _KPROBE_ATTR.pack_into(
        attr, 0, pmu_type, PERF_ATTR_SIZE, 1 << retprobe_bit, 0, 0, 0, 0, 0, 0,
        ctypes.addressof(name), 0,
    )  # fmt: skip
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(
        syscall, attr, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1),
        ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
    )  # fmt: skip
    if fd < 0:
        err = ctypes.get_errno()
        raise AttachError(f"kretprobe {function}: {os.strerror(err)}")
    return fd
