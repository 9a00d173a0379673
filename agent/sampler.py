"""Load the XDP sampler (compiled by bcc, or from the host's cache), attach it safely,
read its counters, detach it.

Attaching goes through a BPF link where the kernel has them (5.9+): the kernel refuses
it with EBUSY when another XDP program is attached, and drops it when our process dies,
even by kill -9. Older kernels fall back to a netlink attach with
XDP_FLAGS_UPDATE_IF_NOEXIST; a program of ours left behind by a killed agent is then
found by name and removed by the next run (under the interface lock, so never one a
live agent is using).

Whichever way the program was loaded, its maps are used through their fds
(agent/libbpf.py): one path for the program from bcc and the one from the cache.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType

from . import contract, libbpf, netdev, perf_ring, program_cache
from .bcc_import import bcc_version, bcc_version_unloaded, import_bcc
from .errors import AgentError
from .filter import to_c
from .headers import KernelHeaders, apply_environment, find_kernel_headers, remove_farm

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
MODE_FLAGS = {"auto": 0, "native": XDP_FLAGS_DRV_MODE, "skb": XDP_FLAGS_SKB_MODE}
CFLAGS = ("-Wno-unused-value",)
MAP_NAMES = ("samples", "counters", "config")
_KEY0 = struct.pack("<I", 0)


@dataclass(frozen=True)
class Counters:
    seen: int
    sampled: int
    not_sampled: int
    output_failed: int
    filtered_out: int


@dataclass(frozen=True)
class _ProgramRef:
    """What bcc's attach_xdp needs of a program: its fd."""

    fd: int


def bpf_sources(filter_source: str = to_c.MATCH_ALL) -> dict[str, str]:
    """The C program, its header (read from the package, which may be a zipapp) and the
    generated filter header."""
    package = resources.files(__package__.rpartition(".")[0] + ".bpf")
    sources = {
        name: package.joinpath(name).read_text()
        for name in (contract.PROGRAM_FILE, contract.HEADER_FILE)
    }
    sources[contract.FILTER_FILE] = filter_source
    return sources


def read_bpf_sources(into: Path, filter_source: str = to_c.MATCH_ALL) -> Path:
    """Write the C program, its header and the filter into a folder for the compiler."""
    for name, text in bpf_sources(filter_source).items():
        (into / name).write_text(text)
    return into / contract.PROGRAM_FILE


def sampler_cache_key(headers: KernelHeaders, filter_source: str = to_c.MATCH_ALL) -> str:
    """Everything the sampler's bytecode depends on (see program_cache).

    bcc's version is read from its version.py where it can be: importing bcc to ask
    would load libbcc (LLVM inside), which a program from the cache does not need.
    """
    return program_cache.cache_key(
        *bpf_sources(filter_source).values(),
        " ".join(CFLAGS),
        headers.describe(),
        bcc_version_unloaded() or bcc_version() or "unknown",
        platform.release(),
        str(libbpf.possible_cpus()),
    )


def cached_sampler_present(headers: KernelHeaders) -> bool | None:
    """Whether a capture here would load the sampler from the cache (None: no cache)."""
    folder = program_cache.default_dir()
    if folder is None:
        return None
    return program_cache.load(folder, sampler_cache_key(headers)) is not None


class Sampler:
    """One compiled sampler attached to one interface. Use as a context manager."""

    def __init__(
        self,
        iface: str,
        *,
        snaplen: int,
        sample_rate: int,
        mode: str = "auto",
        debug_print_source: bool = False,
        cache_dir: Path | None = None,
        filter_source: str = to_c.MATCH_ALL,
    ) -> None:
        self.iface = iface
        self.filter_source = filter_source  # the generated xdpcap_filter.h
        self.snaplen = snaplen
        self.sample_rate = sample_rate
        self._realtime_offset_ns = 0  # set by enable(): see there
        self.mode_requested = mode
        self.mode: str | None = None
        self.headers: KernelHeaders | None = None
        self.attach_method: str | None = None
        self.loaded_from: str | None = None  # "bcc" or "cache"
        self.load_s: float | None = None  # compile (or cache load) time
        self.cache_note: str | None = None  # why the cache was not used or written
        self._cache_dir = cache_dir
        self._debug = debug_print_source
        self._bcc: ModuleType | None = None
        self._bpf = None
        self._cached: program_cache.LoadedProgram | None = None
        self._prog_fd: int | None = None
        self._map_fds: dict[str, int] = {}
        self._link_fd: int | None = None
        self._netlink_flags: int | None = None
        self._rings: perf_ring.PerfRings | _BccRings | None = None

    # -- compile -----------------------------------------------------------------------
    def compile(self) -> None:
        """Load the sampler: from the cache when it holds this exact build, else bcc."""
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="xdpcap-bpf-"))
        try:
            self.headers = find_kernel_headers(workdir)
            key = sampler_cache_key(self.headers, self.filter_source)
            if not self._load_cached(key):
                self._compile_with_bcc(workdir)
                self._store_cached(key)
        finally:
            # The headers and sources are only needed by the compiler.
            shutil.rmtree(workdir, ignore_errors=True)
        self.load_s = time.monotonic() - started
        self._write_config(enabled=False)

    def _cache_usable(self) -> bool:
        # Our own perf-ring reader needs only the map's fd; bcc's reader (other
        # architectures) needs bcc's table objects, so there the cache is not used.
        return self._cache_dir is not None and perf_ring.supported() and libbpf.available()

    def _bcc_module(self) -> ModuleType:
        """bcc, imported only when needed: a program from the cache needs no compiler."""
        if self._bcc is None:
            self._bcc = import_bcc()
        return self._bcc

    def _load_cached(self, key: str) -> bool:
        if not self._cache_usable() or self._debug:
            return False
        assert self._cache_dir is not None
        program = program_cache.load(self._cache_dir, key)
        if program is None:
            return False
        try:
            self._cached = program_cache.instantiate(program)
        except (OSError, ValueError) as exc:  # a kernel that refuses it: compile instead
            self.cache_note = f"cached program not loaded ({exc}); compiled instead"
            return False
        self._prog_fd = self._cached.prog_fd
        self._map_fds = dict(self._cached.map_fds)
        self.loaded_from = "cache"
        return True

    def _compile_with_bcc(self, workdir: Path) -> None:
        assert self.headers is not None
        self._bcc_module()
        apply_environment(self.headers)
        source = read_bpf_sources(workdir, self.filter_source)
        if self._debug:
            print(self.filter_source)
            print(source.read_text())
        try:
            self._bpf = self._bcc.BPF(
                src_file=str(source).encode(), cflags=[f"-I{workdir}", *CFLAGS]
            )
            fn = self._bpf.load_func(contract.PROGRAM_NAME.encode(), self._bcc.BPF.XDP)
        except Exception as exc:  # bcc raises bare Exception for compile/load failures
            raise AgentError(f"the XDP sampler did not compile or load: {exc}") from exc
        self._prog_fd = int(fn.fd)
        self._map_fds = {name: int(self._bpf[name.encode()].map_fd) for name in MAP_NAMES}
        self.loaded_from = "bcc"

    def _store_cached(self, key: str) -> None:
        """Keep what bcc built for the next run; a failure costs only the next compile."""
        if not self._cache_usable() or self._debug:
            return
        assert self._cache_dir is not None and self._bpf is not None
        name = contract.PROGRAM_NAME.encode()
        try:
            program = program_cache.CompiledProgram(
                name=contract.PROGRAM_NAME,
                license=self._bcc.libbcc.lib.bpf_module_license(self._bpf.module).decode(),
                insns=bytes(self._bpf.dump_func(name)),
                maps=tuple(
                    program_cache.CachedMap(libbpf.map_spec(fd), fd)
                    for fd in self._map_fds.values()
                ),
            )
            program_cache.store(self._cache_dir, key, program)
        except (OSError, ValueError) as exc:
            self.cache_note = f"compiled program not cached: {exc}"

    def _write_config(self, *, enabled: bool) -> None:
        value = contract.CONFIG.pack(
            int(enabled),
            self.snaplen,
            self.sample_rate,
            0,
            self._realtime_offset_ns & 0xFFFFFFFFFFFFFFFF,  # two's complement if negative
        )
        libbpf.map_update(self._map_fds["config"], _KEY0, value)

    def enable(self, realtime_offset_ns: int = 0) -> None:
        """Open the capture window: from now on packets are counted and sampled.

        The program stamps each EPB with its monotonic time plus `realtime_offset_ns`
        (CLOCK_REALTIME − CLOCK_MONOTONIC), the wall-clock time pcapng wants.
        """
        self._realtime_offset_ns = realtime_offset_ns
        self._write_config(enabled=True)

    def disable(self) -> None:
        """Close the capture window; the program stays attached but does nothing."""
        if self._map_fds:
            self._write_config(enabled=False)

    # -- attach / detach ---------------------------------------------------------------
    def attach(self) -> None:
        """Attach without ever replacing a program that is already there."""
        assert self._prog_fd is not None, "compile() first"
        present = netdev.attached_program(self.iface)
        if present is not None:
            if present.name == contract.PROGRAM_NAME and self._remove_stale(present):
                pass
            else:
                raise AgentError(
                    f"{self.iface}: an XDP program is already attached ({present.describe()}); "
                    "xdpcap never replaces it"
                )
        ifindex = netdev.inspect_interface(self.iface).ifindex
        flags = MODE_FLAGS[self.mode_requested]
        fd = libbpf.xdp_link_create(self._prog_fd, ifindex, flags)
        if fd >= 0:
            self._link_fd = fd
            self.attach_method = "bpf_link"
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
            self._attach_netlink(flags)
        else:
            raise AgentError(
                f"{self.iface}: cannot attach XDP in {self.mode_requested} mode: {os.strerror(-fd)}"
            )
        attached = netdev.attached_program(self.iface)
        self.mode = attached.mode if attached else self.mode_requested

    def _attach_netlink(self, mode_flags: int) -> None:
        assert self._prog_fd is not None
        flags = mode_flags | XDP_FLAGS_UPDATE_IF_NOEXIST
        try:
            self._bcc_module().BPF.attach_xdp(
                self.iface.encode(), _ProgramRef(self._prog_fd), flags
            )
        except Exception as exc:  # bcc raises bare Exception
            raise AgentError(f"{self.iface}: cannot attach XDP: {exc}") from exc
        self._netlink_flags = flags
        self.attach_method = "netlink"

    def _remove_stale(self, present: netdev.AttachedProgram) -> bool:
        """Remove our own program left by a killed agent (netlink attach only).

        Called with the interface lock held, so no live agent owns it. A program held by
        a BPF link cannot be removed this way (and the kernel drops those on exit).
        """
        flags = XDP_FLAGS_SKB_MODE if present.mode == "skb" else 0
        try:
            self._bcc_module().BPF.remove_xdp(self.iface.encode(), flags)
        except Exception:  # bcc raises bare Exception
            return False
        return netdev.attached_program(self.iface) is None

    def detach(self) -> None:
        """Detach; safe to call more than once and on a half-attached sampler."""
        if self._link_fd is not None:
            os.close(self._link_fd)  # the last reference: the kernel detaches the program
            self._link_fd = None
        if self._netlink_flags is not None:
            try:
                self._bcc_module().BPF.remove_xdp(self.iface.encode(), self._netlink_flags & ~1)
            finally:
                self._netlink_flags = None

    def close(self) -> None:
        self.detach()
        if self._rings is not None:
            self._rings.close()
            self._rings = None
        self._map_fds = {}
        self._prog_fd = None
        if self._cached is not None:
            self._cached.close()
            self._cached = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        if self.headers is not None:
            remove_farm(self.headers)

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def prog_fd(self) -> int:
        assert self._prog_fd is not None, "compile() first"
        return self._prog_fd

    # -- data --------------------------------------------------------------------------
    def open_buffers(self, *, page_count: int, wakeup_events: int) -> None:
        """A perf ring per CPU, read in bulk by our own reader where it is safe (x86-64)."""
        try:
            if perf_ring.supported():
                self._rings = perf_ring.PerfRings(
                    self._map_fds["samples"], perf_ring.online_cpus(), page_count, wakeup_events
                )
            else:
                self._rings = _BccRings(self._bpf, self._bpf[b"samples"], page_count, wakeup_events)
        except OSError as exc:
            raise AgentError(f"cannot open the perf buffers: {exc}") from exc

    def poll(self, timeout_ms: int) -> None:
        """Waits for a ring's wake-up (every `wakeup_events` samples), at most timeout_ms."""
        self._rings.poll(timeout_ms)

    def read(self) -> list[bytes]:
        """Everything the rings hold now: per CPU, one chunk of perf records."""
        return self._rings.read()

    def counters(self) -> Counters:
        # A per-CPU array's value holds one u64 per possible CPU: sum them.
        fd, cpus = self._map_fds["counters"], libbpf.possible_cpus()
        values = []
        for index in range(contract.COUNTER_MAX):
            raw = libbpf.map_lookup(fd, struct.pack("<I", index), 8 * cpus)
            values.append(sum(struct.unpack(f"<{cpus}Q", raw)))
        return Counters(
            seen=values[contract.SEEN],
            sampled=values[contract.SAMPLED],
            not_sampled=values[contract.NOT_SAMPLED],
            output_failed=values[contract.OUTPUT_FAILED],
            filtered_out=values[contract.FILTERED_OUT],
        )


class _BccRings:
    """bcc's per-sample callback reader, where ours cannot be used (see perf_ring.py).

    The callback rebuilds each sample's perf record, so both readers hand the capture
    the same chunks. It only copies and appends: an exception in a ctypes callback would
    be printed and forgotten, so it is kept and raised by read().
    """

    _SAMPLE_HEAD = struct.Struct("<IHHI")  # perf_event_header, raw size
    _LOST = struct.Struct("<IHHQQ")  # perf_event_header, id, lost

    def __init__(self, bpf, table, page_count: int, wakeup_events: int) -> None:
        self._bpf = bpf
        self._chunks: list[bytes] = []
        self._error: BaseException | None = None
        try:
            table.open_perf_buffer(
                self._on_sample,
                page_cnt=page_count,
                lost_cb=self._on_lost,
                wakeup_events=wakeup_events,
            )
        except Exception as exc:  # bcc raises bare Exception
            raise OSError(str(exc)) from exc

    def _on_sample(self, _cpu: int, data: int, size: int) -> None:
        try:
            head = self._SAMPLE_HEAD.pack(
                perf_ring.PERF_RECORD_SAMPLE, 0, perf_ring.SAMPLE_DATA_OFFSET + size, size
            )
            self._chunks.append(head + ctypes.string_at(data, size))
        except BaseException as exc:
            self._error = exc

    def _on_lost(self, lost: int) -> None:
        try:
            self._chunks.append(self._LOST.pack(perf_ring.PERF_RECORD_LOST, 0, 24, 0, lost))
        except BaseException as exc:
            self._error = exc

    def poll(self, timeout_ms: int) -> None:
        self._bpf.perf_buffer_poll(timeout_ms)

    def read(self) -> list[bytes]:
        self._bpf.perf_buffer_consume()
        if self._error is not None:
            raise AgentError(f"perf buffer callback failed: {self._error!r}")
        chunks, self._chunks = self._chunks, []
        return [b"".join(chunks)] if chunks else []

    def close(self) -> None:
        pass  # bcc frees its readers in BPF.cleanup()
