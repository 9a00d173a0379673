"""Load the sampler's programs (compiled by bcc, or from the host's cache), attach them
through their hooks (agent/hooks/), read their counters, detach them.

One compile makes every program — XDP on receive, tc on egress — sharing the maps, so
one perf array carries both directions in one clock. A capture loads and attaches only
the programs for the directions it was asked for.

Whichever way the programs were loaded, their maps are used through their fds
(agent/libbpf.py): one path for programs from bcc and from the cache.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import struct
import tempfile
import time
from dataclasses import astuple, dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType

from . import contract, libbpf, netdev, perf_ring, program_cache
from .bcc_import import bcc_version, bcc_version_unloaded, import_bcc
from .errors import AgentError
from .filter import to_c
from .grace_period import wait_for_running_programs
from .headers import KernelHeaders, apply_environment, find_kernel_headers, remove_farm
from .hooks import Hook
from .hooks.inbound import OWN_XDP, InboundPlan
from .hooks.tc import TcEgressHook, TcIngressHook
from .hooks.xdp import XdpHook
from .hooks.xdp_hook import XdpHookSlots

CFLAGS = ("-Wno-unused-value",)
MAP_NAMES = (
    "samples",
    "counters",
    "config",
    "procs",
    "execs",
    "select_cgroups",
    "owner_watch",
    "owner_events",
)
_KEY0 = struct.pack("<I", 0)
# Every program of the one compile and its BPF program type (as bcc and the kernel number
# them); a capture loads those its hooks attach.
PROGRAMS = {
    contract.PROGRAM_NAME: libbpf.BPF_PROG_TYPE_XDP,
    contract.EGRESS_PROGRAM_NAME: libbpf.BPF_PROG_TYPE_SCHED_CLS,
    contract.INGRESS_PROGRAM_NAME: libbpf.BPF_PROG_TYPE_SCHED_CLS,
    **{name: libbpf.BPF_PROG_TYPE_XDP for name in contract.SLOT_PROGRAM_NAMES},
    # Process attribution: loaded by agent/process/hooks.py, each with its attach type.
    contract.SOCK_CREATE_PROGRAM: libbpf.BPF_PROG_TYPE_CGROUP_SOCK,
    contract.SOCK_RELEASE_PROGRAM: libbpf.BPF_PROG_TYPE_CGROUP_SOCK,
    contract.SOCK_ADDR_PROGRAM: libbpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
    contract.SOCKOPS_PROGRAM: libbpf.BPF_PROG_TYPE_SOCK_OPS,
    contract.ACCEPT_PROGRAM: libbpf.BPF_PROG_TYPE_KPROBE,
    contract.EXEC_PROGRAM: libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT,
    # After another XDP program: loaded by agent/hooks/owner_events.py.
    **{name: libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT for name in contract.OWNER_EVENT_PROGRAMS},
}


@dataclass(frozen=True)
class Counters:
    seen: int = 0
    sampled: int = 0
    not_sampled: int = 0
    output_failed: int = 0
    filtered_out: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(astuple(self), astuple(other))))


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
    """The compiled sampler on one interface, for the directions asked. Use as a context
    manager: everything it attached is detached when it closes."""

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
        directions: frozenset[int] = frozenset({contract.INBOUND}),
        egress_attach: str = "auto",
        inbound: InboundPlan = OWN_XDP,
    ) -> None:
        self.iface = iface
        self.filter_source = filter_source  # the generated xdpcap_filter.h
        self.snaplen = snaplen
        self.sample_rate = sample_rate
        self.directions = directions
        self._realtime_offset_ns = 0  # set by enable(): see there
        self._window = (0, 0)  # the capture window (monotonic ns; 0: open), set by enable()
        # The config's process fields (flags, pid, cookie and filename offsets, comm):
        # off until agent/process sets them (see ProcessAttribution.configure).
        self.process_config: tuple[int, int, int, int, bytes] = (0, 0, 0, 0, b"")
        # Through a hook the owner may serve other interfaces too: only this one counts.
        self._ifindex = netdev.ifindex(iface) if inbound.kind == "hook" else 0
        self.headers: KernelHeaders | None = None
        self.hooks: list[Hook] = []
        self.xdp: XdpHook | None = None
        self.inbound = inbound
        if contract.INBOUND in directions:
            self.hooks.append(self._inbound_hook(iface, mode, egress_attach, inbound))
        if contract.OUTBOUND in directions:
            self.hooks.append(TcEgressHook(iface, egress_attach))
        self.loaded_from: str | None = None  # "bcc" or "cache"
        self.load_s: float | None = None  # compile (or cache load) time
        self.cache_note: str | None = None  # why the cache was not used or written
        self._cache_dir = cache_dir
        self._debug = debug_print_source
        self._bcc: ModuleType | None = None
        self._bpf = None
        self._cached: program_cache.LoadedProgram | None = None
        self._prog_fds: dict[str, int] = {}
        self._map_fds: dict[str, int] = {}
        self._attached: list[Hook] = []
        self._rings: perf_ring.PerfRings | _BccRings | None = None

    def _inbound_hook(self, iface: str, mode: str, tc_attach: str, plan: InboundPlan) -> Hook:
        if plan.kind == "hook":
            assert plan.hook_pin is not None and plan.owner is not None
            return XdpHookSlots(iface, plan.hook_pin, plan.owner)
        if plan.kind == "after-xdp":
            assert plan.owner is not None
            # The tc attach choice (--egress-attach) holds for both tc hooks.
            return TcIngressHook(iface, tc_attach, plan.owner)
        self.xdp = XdpHook(iface, mode, self._bcc_module)
        return self.xdp

    @property
    def verdicts(self) -> bool:
        """Whether inbound samples carry the owner's verdict (through its hook)."""
        return contract.INBOUND in self.directions and self.inbound.kind == "hook"

    @property
    def mode(self) -> str | None:
        """The XDP mode as attached (native or skb); None without an XDP hook."""
        return self.xdp.mode if self.xdp else None

    def describe_hooks(self) -> str:
        """ "XDP ingress native (bpf_link) + tcx egress": what captures, and how."""
        return " + ".join(hook.describe() for hook in self.hooks)

    def _program_names(self) -> list[str]:
        """The programs loaded as they are: the hook's slot programs load at attach."""
        return [hook.program for hook in self.hooks if hook.program]

    # -- compile -----------------------------------------------------------------------
    def compile(self) -> None:
        """Load the sampler: from the cache when it holds this exact build, else bcc."""
        started = time.monotonic()
        # Which headers is part of the cache key; the tree bcc compiles with (a symlink
        # farm joining Debian's split packages) and the sources are built only to compile.
        self.headers = find_kernel_headers(build_farm=False)
        key = sampler_cache_key(self.headers, self.filter_source)
        if not self._load_cached(key):
            workdir = Path(tempfile.mkdtemp(prefix="xdpcap-bpf-"))
            try:
                self.headers = find_kernel_headers(workdir)
                self._compile_with_bcc(workdir)
                self._store_cached(key)
            finally:
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
            self._cached = program_cache.instantiate(program, self._program_names())
        except (OSError, ValueError) as exc:  # a kernel that refuses it: compile instead
            self.cache_note = f"cached program not loaded ({exc}); compiled instead"
            return False
        self._prog_fds = dict(self._cached.prog_fds)
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
            for name in self._program_names():
                fn = self._bpf.load_func(name.encode(), PROGRAMS[name])
                self._prog_fds[name] = int(fn.fd)
        except Exception as exc:  # bcc raises bare Exception for compile/load failures
            raise AgentError(f"the sampler did not compile or load: {exc}") from exc
        self._map_fds = {name: int(self._bpf[name.encode()].map_fd) for name in MAP_NAMES}
        self.loaded_from = "bcc"

    def _store_cached(self, key: str) -> None:
        """Keep what bcc built for the next run; a failure costs only the next compile."""
        if not self._cache_usable() or self._debug:
            return
        assert self._cache_dir is not None and self._bpf is not None
        try:
            # Every program, not only this capture's: the next may want other directions.
            program = program_cache.CompiledProgram(
                license=self._bcc.libbcc.lib.bpf_module_license(self._bpf.module).decode(),
                functions=tuple(
                    program_cache.CachedFunction(
                        name, prog_type, bytes(self._bpf.dump_func(name.encode()))
                    )
                    for name, prog_type in PROGRAMS.items()
                ),
                maps=tuple(
                    program_cache.CachedMap(libbpf.map_spec(fd), fd)
                    for fd in self._map_fds.values()
                ),
            )
            program_cache.store(self._cache_dir, key, program)
        except (OSError, ValueError) as exc:
            self.cache_note = f"compiled program not cached: {exc}"

    def _write_config(self, *, enabled: bool) -> None:
        self._enabled = enabled
        value = contract.CONFIG.pack(
            int(enabled),
            self.snaplen,
            self.sample_rate,
            self._ifindex,
            self._realtime_offset_ns & 0xFFFFFFFFFFFFFFFF,  # two's complement if negative
            self._window[0],
            self._window[1],
            *self.process_config,
        )
        libbpf.map_update(self._map_fds["config"], _KEY0, value)

    def enable(
        self, realtime_offset_ns: int = 0, start_mono_ns: int = 0, end_mono_ns: int = 0
    ) -> None:
        """Open the capture window: packets are counted and sampled from `start_mono_ns`
        (CLOCK_MONOTONIC; 0: now) until `end_mono_ns` (0: until disable).

        The program stamps each EPB with its monotonic time plus `realtime_offset_ns`
        (CLOCK_REALTIME − CLOCK_MONOTONIC), the wall-clock time pcapng wants.
        """
        self._realtime_offset_ns = realtime_offset_ns
        self._window = (max(0, start_mono_ns), max(0, end_mono_ns))
        self._write_config(enabled=True)

    def disable(self) -> None:
        """Close the capture window; the program stays attached but does nothing."""
        if self._map_fds:
            self._write_config(enabled=False)

    def quiesce(self) -> None:
        """After disable(): wait until no program run that saw the window open is still
        under way, so the rings and counters hold all it did (grace_period.py). Where
        the kernel has no barrier for that, detach, which waits as well."""
        if not wait_for_running_programs():
            self.detach()

    # -- attach / detach ---------------------------------------------------------------
    def attach(self) -> None:
        """Attach every hook's program; if one fails, the ones attached go again."""
        assert self._map_fds, "compile() first"
        for hook in self.hooks:
            # Counted before it attaches: a hook that fails half-way (attached, then an
            # error reading the result back) is still detached.
            self._attached.append(hook)
            try:
                if isinstance(hook, XdpHookSlots):
                    hook.attach_slots(self._bytecode, self._license())
                else:
                    hook.attach(self._prog_fds[hook.program])
            except BaseException:
                self.detach()
                raise

    def bytecode(self, name: str) -> bytes:
        """A program's instructions, pointing at this sampler's maps (for the programs
        other modules load themselves: the hook slots, process attribution)."""
        return self._bytecode(name)

    def license(self) -> str:
        return self._license()

    def map_fd(self, name: str) -> int:
        """One of the sampler's maps (MAP_NAMES), by name."""
        return self._map_fds[name]

    def write_config(self) -> None:
        """Write the config again (after process_config changed), window state kept."""
        self._write_config(enabled=self._enabled)

    def _bytecode(self, name: str) -> bytes:
        """A program's instructions, pointing at this sampler's maps."""
        if self._cached is not None:
            return self._cached.insns[name]
        return bytes(self._bpf.dump_func(name.encode()))

    def _license(self) -> str:
        if self._cached is not None:
            return self._cached.license
        return self._bcc.libbcc.lib.bpf_module_license(self._bpf.module).decode()

    def detach(self) -> None:
        """Detach everything attached; safe to call more than once."""
        while self._attached:
            self._attached.pop().detach()

    def close(self) -> None:
        self.detach()
        if self._rings is not None:
            self._rings.close()
            self._rings = None
        self._map_fds = {}
        self._prog_fds = {}
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
        """The XDP program's fd (tests run it with BPF_PROG_TEST_RUN)."""
        return self.prog_fds[contract.PROGRAM_NAME]

    @property
    def prog_fds(self) -> dict[str, int]:
        assert self._prog_fds, "compile() first"
        return self._prog_fds

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

    def counters_by_direction(self) -> dict[int, Counters]:
        """Each captured direction's counters (contract.INBOUND, contract.OUTBOUND)."""
        by_direction = {
            direction: self._read_counters(direction) for direction in sorted(self.directions)
        }
        if self.verdicts:  # inbound through the hook is counted per verdict
            by_direction[contract.INBOUND] = sum(self.counters_by_verdict().values(), Counters())
        return by_direction

    def counters_by_verdict(self) -> dict[int, Counters]:
        """Through the owner's hook: each XDP action's counters (empty otherwise)."""
        if not self.verdicts:
            return {}
        return {
            action: self._read_counters(contract.SET_VERDICT + action)
            for action in range(len(contract.XDP_ACTIONS))
        }

    def counters(self) -> Counters:
        """Both directions together."""
        return sum(self.counters_by_direction().values(), Counters())

    def _read_counters(self, counter_set: int) -> Counters:
        """One counter set: a direction, or contract.SET_VERDICT + an action."""
        # A per-CPU array's value holds one u64 per possible CPU: sum them.
        fd, cpus = self._map_fds["counters"], libbpf.possible_cpus()
        values = []
        for index in range(contract.COUNTER_MAX):
            slot = counter_set * contract.COUNTER_MAX + index
            raw = libbpf.map_lookup(fd, struct.pack("<I", slot), 8 * cpus)
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
