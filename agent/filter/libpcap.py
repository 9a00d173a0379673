"""Compile a tcpdump expression into classic BPF with the system's libpcap (ctypes).

The compile uses a *dead* handle of the capture's link type, never a live one: on
Linux a live handle makes libpcap emit the kernel's ancillary loads (SKF_AD_*) for
VLAN tags, which a socket understands and XDP cannot run. A dead Ethernet handle gives
exactly the program `tcpdump -r file.pcap -d EXPR` prints.

libpcap is where tcpdump is (Debian's libpcap0.8): on the controller, or on a host for a
local `xdpcap capture`. Hosts driven by a controller receive the compiled program and
need no libpcap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from .cbpf import FilterError, Insn, Program

# Link types pcap_open_dead() takes (DLT_*), by the name the agent gives an interface.
DLT_EN10MB = 1
DLT_RAW = 12  # Linux's value; on disk this is LINKTYPE_RAW (101)
LINK_TYPES = {"ether": DLT_EN10MB, "raw": DLT_RAW}
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
COMPILE_SNAPLEN = 262144  # what the programs return for a match (tcpdump's default)
MAX_EXPRESSION = 8192


class _BpfInsn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    )


class _BpfProgram(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn)))


_LIBRARY_NAMES = ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")
_lock = threading.Lock()  # pcap_compile is not thread-safe before libpcap 1.8
_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    names = [n for n in (ctypes.util.find_library("pcap"),) if n] + list(_LIBRARY_NAMES)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise FilterError(
            "a capture filter needs libpcap to compile it (Debian: libpcap0.8, which tcpdump "
            "brings); none was found here"
        )
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    )
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
    lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
    lib.pcap_close.argtypes = (ctypes.c_void_p,)
    _lib = lib
    return lib


def available() -> bool:
    try:
        _library()
    except FilterError:
        return False
    return True


def compile_expression(expression: str, link: str = "ether") -> Program:
    """The optimised cBPF of `expression` for link type `link` ("ether" or "raw").

    Raises FilterError with libpcap's own message ("syntax error", "expression rejects
    all packets", ...).
    """
    lib = _library()
    raw = expression.encode()
    if len(raw) > MAX_EXPRESSION:
        raise FilterError(f"filter: longer than {MAX_EXPRESSION} bytes")
    with _lock:
        handle = lib.pcap_open_dead(LINK_TYPES[link], COMPILE_SNAPLEN)
        if not handle:
            raise FilterError("filter: libpcap could not open a compile handle")
        try:
            program = _BpfProgram()
            if lib.pcap_compile(handle, ctypes.byref(program), raw, 1, PCAP_NETMASK_UNKNOWN):
                message = (lib.pcap_geterr(handle) or b"cannot compile").decode(errors="replace")
                raise FilterError(f"filter {expression!r}: {message}")
            try:
                return tuple(
                    Insn(i.code, i.jt, i.jf, i.k) for i in program.bf_insns[: program.bf_len]
                )
            finally:
                lib.pcap_freecode(ctypes.byref(program))
        finally:
            lib.pcap_close(handle)
