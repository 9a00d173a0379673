"""The few BPF syscalls the agent makes itself, through libbpf's thin wrappers (ctypes).

bcc compiles the sampler and loads it the first time; everything after that — maps
read and written, a cached program loaded again, the BPF link — goes through these, so
the one code path is exercised whether the program came from bcc or from the cache.
libbpf.so.1 is a dependency of bcc's own library on Debian and Ubuntu (python3-bpfcc),
so nothing new is needed there. Where it is missing, maps are read and written through
bcc's own exports, the cache is not used and the XDP attach falls back to netlink; the
egress hook (tcx or clsact) needs it, and preflight says so.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from functools import lru_cache

from .perf_ring import online_cpus

BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6
BPF_PROG_TYPE_CGROUP_SOCK = 9
BPF_PROG_TYPE_SOCK_OPS = 13
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_XDP_ATTACH_TYPE = 37  # enum bpf_attach_type BPF_XDP
BPF_TCX_INGRESS = 46  # kernel 6.6+
BPF_TCX_EGRESS = 47
BPF_F_BEFORE = 1 << 3  # tcx: with no relative program, first in the chain
BPF_F_XDP_HAS_FRAGS = 1 << 5  # prog_flags: the program handles multi-buffer frames
BPF_TC_INGRESS = 1 << 0  # enum bpf_tc_attach_point
BPF_TC_EGRESS = 1 << 1
BPF_OBJ_NAME_LEN = 16


class LibbpfError(OSError):
    """A BPF syscall failed; errno and strerror as the kernel said."""


class _MapInfo(ctypes.Structure):
    # The head of struct bpf_map_info (linux/bpf.h); the kernel fills what fits in the
    # size we pass, so the rest needs not be mirrored.
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    )


class _MapCreateOpts(ctypes.Structure):
    # struct bpf_map_create_opts up to map_flags; `sz` tells libbpf how much we pass.
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    )


class _ProgLoadOpts(ctypes.Structure):
    # The head of struct bpf_prog_load_opts, up to attach_btf_obj_fd; `sz` tells libbpf
    # how much we pass (the rest counts as zero).
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_ifindex", ctypes.c_uint32),
        ("kern_version", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
    )


class _LinkCreateOpts(ctypes.Structure):
    # The head of struct bpf_link_create_opts: sz and flags.
    _fields_ = (("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32))


class _TcHook(ctypes.Structure):
    # struct bpf_tc_hook: sz, ifindex, attach_point, parent.
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


class _TcOpts(ctypes.Structure):
    # struct bpf_tc_opts: sz, prog_fd, flags, prog_id, handle, priority.
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


class _ProgInfo(ctypes.Structure):
    # The head of struct bpf_prog_info, up to the name.
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    )


@dataclass(frozen=True)
class MapSpec:
    """What it takes to create a map like one that exists."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as exc:
        raise LibbpfError(errno.ENOSYS, f"libbpf.so.1 is not installed ({exc})") from exc
    for name in (
        "bpf_map_create",
        "bpf_prog_load",
        "bpf_link_create",
        "bpf_prog_get_fd_by_id",
        "bpf_map_get_fd_by_id",
        "bpf_obj_get",
        "bpf_map_delete_elem",
        "bpf_tc_hook_create",
        "bpf_tc_attach",
        "bpf_tc_query",
        "bpf_tc_detach",
    ):
        getattr(lib, name).restype = ctypes.c_int
    return lib


def available() -> bool:
    try:
        _lib()
    except LibbpfError:
        return False
    return True


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno() or -result
        raise LibbpfError(code, f"{what}: {os.strerror(code)}")
    return result


def _map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "map info")
    return info


def map_id(fd: int) -> int:
    """The kernel's id of the map behind `fd`."""
    return int(_map_info(fd).id)


def map_spec(fd: int) -> MapSpec:
    info = _map_info(fd)
    return MapSpec(
        name=info.name.decode(),
        type=info.type,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        flags=info.map_flags,
    )


def map_create(spec: MapSpec) -> int:
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=spec.flags)
    fd = _lib().bpf_map_create(
        spec.type,
        spec.name.encode(),
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        ctypes.byref(opts),
    )
    return _check(fd, f"creating map {spec.name}")


def prog_load(prog_type: int, name: str, license: str, insns: bytes) -> int:
    """Load bytecode; the kernel's verifier checks it like any other program."""
    buffer = ctypes.create_string_buffer(insns, len(insns))
    fd = _lib().bpf_prog_load(
        prog_type,
        name.encode(),
        license.encode(),
        buffer,
        ctypes.c_size_t(len(insns) // 8),
        None,
    )
    return _check(fd, f"loading program {name}")


def prog_load_xdp(
    name: str, license: str, insns: bytes, expected_attach_type: int, prog_flags: int
) -> int:
    """Load an XDP program with an expected attach type and flags (what a program tail-
    called from another must match); returns the fd or raises LibbpfError."""
    return prog_load_typed(
        BPF_PROG_TYPE_XDP, name, license, insns, expected_attach_type, prog_flags
    )


def prog_load_typed(
    prog_type: int,
    name: str,
    license: str,
    insns: bytes,
    expected_attach_type: int,
    prog_flags: int = 0,
) -> int:
    """Load a program with an expected attach type (cgroup socket hooks need theirs at
    load); returns the fd or raises LibbpfError."""
    buffer = ctypes.create_string_buffer(insns, len(insns))
    opts = _ProgLoadOpts(
        sz=ctypes.sizeof(_ProgLoadOpts),
        expected_attach_type=expected_attach_type,
        prog_flags=prog_flags,
    )
    fd = _lib().bpf_prog_load(
        prog_type,
        name.encode(),
        license.encode(),
        buffer,
        ctypes.c_size_t(len(insns) // 8),
        ctypes.byref(opts),
    )
    return _check(fd, f"loading program {name}")


def obj_get(path: str) -> int:
    """An fd for the object pinned at `path` (a map or a program)."""
    return _check(_lib().bpf_obj_get(path.encode()), f"opening pinned {path}")


def map_fd_by_id(map_id: int) -> int:
    return _check(_lib().bpf_map_get_fd_by_id(ctypes.c_uint32(map_id)), f"map id {map_id}")


def prog_fd_by_id(prog_id: int) -> int:
    return _check(_lib().bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id)), f"program id {prog_id}")


def map_delete(fd: int, key: bytes) -> None:
    _check(_lib().bpf_map_delete_elem(fd, key), "map delete")


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    map_ids: tuple[int, ...]


def prog_info(fd: int) -> ProgInfo:
    """A loaded program's id, type, name and the ids of the maps it uses."""
    lib = _lib()
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "prog info")
    count = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(1, count))()
    if count:
        # Asked again with room for the map ids: the kernel fills only what we ask for.
        info = _ProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "prog info")
        count = min(count, info.nr_map_ids)
    return ProgInfo(
        int(info.id), int(info.type), info.name.decode(errors="replace"), tuple(ids[:count])
    )


@lru_cache(maxsize=1)
def _map_calls() -> tuple[object, object]:
    """(update, lookup): libbpf's, or bcc's own wrappers of the same syscalls where a
    distribution links libbpf into libbcc instead of shipping libbpf.so.1."""
    try:
        lib = _lib()
        return lib.bpf_map_update_elem, lib.bpf_map_lookup_elem
    except LibbpfError:
        bcc = ctypes.CDLL("libbcc.so.0", use_errno=True)
        return bcc.bpf_update_elem, bcc.bpf_lookup_elem


def map_update(fd: int, key: bytes, value: bytes) -> None:
    update, _ = _map_calls()
    _check(update(fd, key, value, ctypes.c_uint64(0)), "map update")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes:
    _, lookup = _map_calls()
    value = ctypes.create_string_buffer(value_size)
    _check(lookup(fd, key, value), "map lookup")
    return value.raw


def link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int) -> int:
    """Attach through a BPF link; returns the link fd, or -errno (never raises).

    For tcx (kernel 6.6+): libbpf 1.1 predates it, but passes an attach type it does not
    know through to the kernel with only `flags` set, which is all a first-in-chain
    attach needs.
    """
    try:
        lib = _lib()
    except LibbpfError:
        return -errno.ENOSYS
    opts = _LinkCreateOpts(ctypes.sizeof(_LinkCreateOpts), flags, 0)
    fd = lib.bpf_link_create(prog_fd, ifindex, attach_type, ctypes.byref(opts))
    if fd < 0:
        return -(ctypes.get_errno() or -fd)
    return fd


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    """Attach a raw tracepoint program; returns the fd that holds it, or -errno."""
    try:
        lib = _lib()
    except LibbpfError:
        return -errno.ENOSYS
    fd = lib.bpf_raw_tracepoint_open(name.encode(), prog_fd)
    if fd < 0:
        return -(ctypes.get_errno() or -fd)
    return fd


def _tc_hook(ifindex: int, point: int) -> _TcHook:
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=point)


def _tc_opts(handle: int, priority: int, prog_fd: int = 0) -> _TcOpts:
    return _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, handle=handle, priority=priority)


def tc_egress_hook_create(ifindex: int, point: int = BPF_TC_EGRESS) -> bool:
    """Make sure the interface has a clsact qdisc; True if we created it."""
    result = _lib().bpf_tc_hook_create(ctypes.byref(_tc_hook(ifindex, point)))
    if result == -errno.EEXIST:
        return False
    _check(result, "creating the clsact qdisc")
    return True


def tc_egress_attach(
    ifindex: int, prog_fd: int, handle: int, priority: int, point: int = BPF_TC_EGRESS
) -> int:
    """A direct-action cls_bpf filter with our handle and priority, never a replacement
    (EEXIST if that handle and priority are taken); returns the attached program's id.
    (`point`: BPF_TC_EGRESS, or BPF_TC_INGRESS; likewise below.)"""
    opts = _tc_opts(handle, priority, prog_fd)
    hook = _tc_hook(ifindex, point)
    _check(_lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)), "tc attach")
    return opts.prog_id


def tc_egress_query(
    ifindex: int, handle: int, priority: int, point: int = BPF_TC_EGRESS
) -> int | None:
    """The id of the program in the filter with this handle and priority, or None."""
    opts = _tc_opts(handle, priority)
    result = _lib().bpf_tc_query(ctypes.byref(_tc_hook(ifindex, point)), ctypes.byref(opts))
    if result in (-errno.ENOENT, -errno.EINVAL):  # no such filter, or no clsact at all
        return None
    _check(result, "tc query")
    return opts.prog_id


def tc_egress_detach(ifindex: int, handle: int, priority: int, point: int = BPF_TC_EGRESS) -> None:
    """Remove exactly the filter with this handle and priority: nothing else."""
    opts = _tc_opts(handle, priority)
    hook = _tc_hook(ifindex, point)
    _check(_lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts)), "tc detach")


def prog_name(prog_id: int) -> str | None:
    """The name of the loaded program with this id (None if it is gone)."""
    lib = _lib()
    fd = lib.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id))
    if fd < 0:
        return None
    try:
        info = _ProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "prog info")
        return info.name.decode(errors="replace")
    finally:
        os.close(fd)


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """How many slots a per-CPU map's value has (the kernel sizes it by possible CPUs)."""
    return len(online_cpus("/sys/devices/system/cpu/possible"))  # the same list format
