"""BPF_PROG_TEST_RUN through libbpf: run a loaded XDP or tc program on one frame, no
interface."""

from __future__ import annotations

import ctypes
import functools

XDP_DROP = 1
XDP_PASS = 2
TC_ACT_OK = 0
TC_ACT_SHOT = 2


class _TestRunOpts(ctypes.Structure):
    # libbpf's struct bpf_test_run_opts; `sz` tells libbpf how much of it we pass.
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


@functools.cache
def _libbpf() -> ctypes.CDLL:
    return ctypes.CDLL("libbpf.so.1", use_errno=True)


def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> int:
    """The program's return value on `frame` (a copy: the program may not change ours)."""
    data = ctypes.create_string_buffer(frame, len(frame))
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.addressof(data),
        data_size_in=len(frame),
        repeat=repeat,
    )
    err = _libbpf().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    assert err == 0, f"BPF_PROG_TEST_RUN failed: {err}"
    return opts.retval
