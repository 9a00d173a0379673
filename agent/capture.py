"""One capture on one interface: attach, sample, write time-ordered pcapng, account, detach.

Accounting is exact: seen = filtered out + written + lost + not sampled (+ sampled after
--count was reached, which like `tcpdump -c N` we do not write), where lost gathers
every way a sample can fail to reach the file (perf buffer full, malformed sample, disk
full) — in total and in each direction. The figures go to the summary line and to the
pcapng interface statistics block.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from . import __version__, clock, contract, netdev, perf_ring, program_cache
from .consumer import Backlog, SampleConsumer, TimeOrderer, cap_len_of, direction_of
from .errors import AgentError
from .filter import spec as filter_spec
from .filter.cbpf import Program
from .filter.to_c import MATCH_ALL
from .hooks.inbound import plan_inbound
from .lock import InterfaceLock
from .pcapng import IF_FILTER, PcapngWriter
from .protocol import ControllerCommands, EventSink
from .sampler import Counters, Sampler
from .stream import StreamSender
from .verdicts import VerdictTally
from .verdicts import describe as describe_verdicts

# -Q/--direction, as tcpdump: which ways the packets went that are captured.
DIRECTIONS = {
    "in": frozenset({contract.INBOUND}),
    "out": frozenset({contract.OUTBOUND}),
    "inout": frozenset({contract.INBOUND, contract.OUTBOUND}),
}
DIRECTION_NAMES = {contract.INBOUND: "in", contract.OUTBOUND: "out"}

POLL_MS = 100
# With a live stream the rings are looked at this often whatever the traffic: a quiet
# host's samples would otherwise wait for the poll's timeout (the rings wake us only
# every --wakeup-events samples), and the stream's reader with them.
STREAM_POLL_MS = 10
DRAIN_INTERVAL_NS = 5_000_000
# Between two drains of the rings, at most this long is spent turning the backlog into
# file blocks, so the rings are emptied every few milliseconds however far behind the
# formatting is (see Backlog).
FORMAT_SLICE_NS = 20_000_000
# Formatted in one go, at most (~2,000 small packets): a chunk that grew large while
# formatting was behind is cut, so a drain never waits on one whole chunk.
FORMAT_PIECE_BYTES = 256 << 10
# Drained records waiting to be formatted, at most: beyond it the rings are left to fill
# and the kernel counts what it cannot store (lost, and accounted).
BACKLOG_MAX_BYTES = 128 << 20
# Samples younger than this are held back one more round, waiting for older samples
# still in another CPU's buffer (see TimeOrderer).
ORDER_SLACK_NS = 20_000_000
PROGRESS_EVERY_NS = 500_000_000
# A scheduled start ("start T") further ahead than this by our clock means our clock and
# the controller's disagree: the window opens at once instead, as with a plain "start".
MAX_START_LEAD_NS = 2_000_000_000
DEFAULT_START_TIMEOUT_S = 120.0
START_AT_SLACK_NS = 1_000_000  # ready later than --start-at by more: reported as late
# --start-at: the agent wakes this much before the time; the program opens the window at
# the exact instant (see _window_start), well within MAX_START_LEAD_NS.
START_AT_LEAD_NS = 50_000_000
HAND_OVER_TIMEOUT_S = 600.0  # how long a finished agent waits for the controller's fetch


MAX_BUFFER_PAGES = 2048  # 8 MiB per CPU with 4 KiB pages: what a 2-core host gets
MIN_BUFFER_PAGES = 256  # 1 MiB: below this a burst of full-size frames overflows at once
BUFFER_BUDGET_PAGES = 16384  # 64 MiB over all CPUs


def buffer_pages_for(cpus: int) -> int:
    """Perf buffer pages per CPU: 8 MiB each on a small host, but about 64 MiB in all.

    The buffers are locked kernel memory, one per CPU: 8 MiB on each of a 128-CPU
    production host would be a gigabyte. Samples go to the CPU that received the
    packet, so with many CPUs each one carries a share of the traffic anyway.
    """
    pages = BUFFER_BUDGET_PAGES // max(1, cpus)
    pages = 1 << (pages.bit_length() - 1) if pages else 1  # a power of two, as perf needs
    return max(MIN_BUFFER_PAGES, min(MAX_BUFFER_PAGES, pages))


@dataclass(frozen=True)
class CaptureOptions:
    iface: str
    output: Path
    duration_s: float | None = None
    count: int | None = None
    snaplen: int = 262144
    sample_rate: int = 1
    xdp_mode: str = "auto"
    direction: str = "inout"  # a key of DIRECTIONS
    egress_attach: str = "auto"  # tcx where the kernel has it, else clsact; or forced
    buffer_pages: int | None = None  # per CPU; None: buffer_pages_for(online CPUs)
    wakeup_events: int = 32
    wait_start: bool = False
    start_at_ns: int | None = None  # --start-at: the window opens at this wall-clock time
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    controller: bool = False  # driven over SSH: SIGHUP does not stop us
    debug_print_source: bool = False
    bpf_cache: bool = True  # load the compiled sampler from the host's cache when there
    # The capture filter: the expression, and its checked programs by link type as the
    # controller sent them (none: compiled here with libpcap).
    filter_expression: str | None = None
    filter_programs: Mapping[str, Program] = field(default_factory=dict)
    stream: bool = False  # also send the written packets to the controller as they come
    # Inbound beside another XDP program (agent/hooks/inbound.py): how, and its hook map.
    rx_capture: str = "auto"
    xdp_hook: str | None = None


@dataclass
class DirectionSummary:
    """One direction's share of the accounting; the same sum closes in each."""

    seen: int = 0
    filtered_out: int = 0
    written: int = 0
    lost: int = 0
    not_sampled: int = 0
    past_count: int = 0


@dataclass
class CaptureSummary:
    iface: str
    file: str
    mode: str = ""  # the XDP mode ("" without an XDP hook)
    direction: str = "inout"
    hooks: str = ""  # what captured: "XDP ingress native (bpf_link) + tcx egress"
    # How inbound was captured: "our XDP program", "through hook PIN", "inbound after XDP
    # program NAME (id N)" ("" without inbound).
    inbound: str = ""
    filter: str | None = None
    seen: int = 0
    filtered_out: int = 0  # the capture filter did not match
    written: int = 0
    lost: int = 0
    not_sampled: int = 0
    # Sampled after --count was reached: not written, as `tcpdump -c N` writes N.
    past_count: int = 0
    os_drops: int = 0
    bytes_written: int = 0
    window_start_ns: int = 0
    window_end_ns: int = 0
    lost_detail: dict[str, int] = field(default_factory=dict)
    partial_reason: str | None = None
    stopped_by: str = ""
    out_of_order: int = 0  # batches that began before the last one ended: should stay 0
    backlog_peak_bytes: int = 0  # how far formatting fell behind draining, at worst
    file_size: int = 0  # bytes in the file, and their sha256, for the controller's check
    file_sha256: str = ""
    # "in", "out": each captured direction's figures (they add up to the totals above).
    directions: dict[str, DirectionSummary] = field(default_factory=dict)
    # With --stream: written packets sent live, and those the stream had to skip (the
    # file has them all; these are not part of the accounting above).
    streamed: int = 0
    stream_skipped: int = 0
    # Through the owner's hook: each verdict's figures ("DROP": seen, written, ...), whose
    # sums close like the totals'.
    verdicts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def unaccounted(self) -> int:
        return (
            self.seen
            - self.filtered_out
            - self.written
            - self.lost
            - self.not_sampled
            - self.past_count
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "unaccounted": self.unaccounted}

    def line(self) -> str:
        seconds = (self.window_end_ns - self.window_start_ns) / 1e9
        text = (
            f"{self.iface}: {self.written} packets written to {self.file} in {seconds:.1f} s "
            f"({self.hooks}); seen {self.seen} = "
        )
        if self.filter is not None:
            text += f"filtered out {self.filtered_out} + "
        text += f"written {self.written} + lost {self.lost} + not sampled {self.not_sampled}"
        if self.past_count:
            text += f" + after --count {self.past_count}"
        if len(self.directions) > 1:
            text += (
                " ("
                + "; ".join(
                    f"{name}: seen {d.seen}, written {d.written}"
                    for name, d in self.directions.items()
                )
                + ")"
            )
        if self.verdicts:
            text += f"; verdicts: {describe_verdicts(self.verdicts)}"
        if self.filter is not None:
            text += f"; filter {self.filter!r}"
        if self.mode:
            text += f"; missed by the interface before XDP {self.os_drops}"
        if self.partial_reason:
            text += f"; PARTIAL: {self.partial_reason}"
        return text


class _StopFlag:
    """Signal handlers only set this; the loop looks at it between polls."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


def _leave_nothing_unused(output: Path, window_opened: bool) -> None:
    """Under a controller, a capture that never opened its window (refused, no start,
    interrupted during the launch) leaves no file: it was created empty at the start, to
    fail early on a bad path. The run folder stays: other agents of the run may share it
    (one machine under two inventory names, or the namespace lab) and be about to write
    there; it goes with the last capture fetched from it (see _hand_over)."""
    with contextlib.suppress(OSError):
        if not window_opened and output.stat().st_size == 0:
            output.unlink()


def _install_signal_handlers(stop: _StopFlag, controller: bool) -> dict[int, object]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set(signal.Signals(signum).name)

    previous = {}
    wanted = [signal.SIGINT, signal.SIGTERM]
    if controller:
        # A cut SSH connection must not end the capture: the agent has its own deadline.
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    else:
        wanted.append(signal.SIGHUP)
    for signum in wanted:
        previous[signum] = signal.signal(signum, handler)
    return previous


def _interface_description(sampler: Sampler, options: CaptureOptions) -> str:
    rate = f"1-in-{options.sample_rate}" if options.sample_rate > 1 else "every packet"
    text = (
        f"{sampler.describe_hooks()} capture by xdpcap, sampling {rate}, snaplen {options.snaplen}"
    )
    if options.filter_expression:
        text += f", filter {options.filter_expression!r}"
    return text


def _give_to_sudo_user(fd: int) -> None:
    """Run through sudo, the file belongs to the SSH user, who fetches and deletes it."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() == 0 and uid and gid and uid.isdigit() and gid.isdigit():
        os.fchown(fd, int(uid), int(gid))


def write_summary_file(summary: CaptureSummary) -> None:
    """`<capture>.json` beside the capture: how `xdpcap collect` learns a capture finished."""
    path = Path(summary.file + ".json")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    _give_to_sudo_user(fd)
    with os.fdopen(fd, "w") as f:
        json.dump(summary.to_dict(), f)
    os.replace(tmp, path)


class Capture:
    """Runs one capture; `run()` returns the summary and always leaves the host as it was."""

    def __init__(self, options: CaptureOptions, events: EventSink) -> None:
        self.options = options
        self.events = events
        self.stop = _StopFlag()
        self.summary = CaptureSummary(iface=options.iface, file=str(options.output))
        self._disk_lost = 0
        self._late = 0
        self._last_ts = 0
        self._bytes = 0
        self._released = 0  # packets handed to the writer (for --count)
        self._test_drift = clock.test_rate_ppb() != 0  # the test-only drifting clock
        # Outbound packets written and past --count; inbound ones are the rest.
        self._written_out = 0
        self._past_count_out = 0
        self.buffer_pages = options.buffer_pages or buffer_pages_for(len(perf_ring.online_cpus()))
        self._stream: StreamSender | None = None
        self._tally: VerdictTally | None = None  # through a hook: per-verdict shares

    def run(self) -> CaptureSummary:
        options = self.options
        commands = ControllerCommands(on_clock=self._answer_clock) if options.controller else None
        previous = _install_signal_handlers(self.stop, options.controller)
        hand_over: threading.Thread | None = None
        try:
            with InterfaceLock(options.iface):
                iface = netdev.inspect_interface(options.iface)
                directions = DIRECTIONS[options.direction]
                inbound = None
                if contract.INBOUND in directions:
                    inbound = plan_inbound(
                        options.iface, iface.attached, options.rx_capture, options.xdp_hook
                    )
                    self.summary.inbound = inbound.describe()
                    if inbound.discovered:
                        print(
                            f"xdpcap: {options.iface}: capturing inbound through the xdpcap "
                            f"hook {inbound.hook_pin} of XDP program {inbound.owner.prog_id} "
                            f"{inbound.owner.name!r} (found pinned)",
                            file=sys.stderr,
                        )
                # Checked (or compiled) before anything is loaded or attached.
                active = filter_spec.active_filter(
                    options.filter_expression,
                    options.filter_programs,
                    filter_spec.LINK_OF_IP_LINK_TYPE.get(iface.link_type),
                    options.iface,
                )
                self.summary.filter = active.expression if active else None
                self.summary.direction = options.direction
                with Sampler(
                    options.iface,
                    snaplen=options.snaplen,
                    sample_rate=options.sample_rate,
                    mode=options.xdp_mode,
                    debug_print_source=options.debug_print_source,
                    cache_dir=program_cache.default_dir() if options.bpf_cache else None,
                    filter_source=active.c_source if active else MATCH_ALL,
                    directions=directions,
                    egress_attach=options.egress_attach,
                    **({"inbound": inbound} if inbound else {}),
                ) as sampler:
                    self._tally = VerdictTally() if sampler.verdicts else None
                    self._capture(sampler, iface, commands)
                    if commands is not None and self.summary.window_end_ns:
                        # From "done" on, the controller fetches: its "delete" is
                        # answered while the hooks detach (each detach waits for the
                        # kernel's rtnl lock: long on a host with many at once).
                        hand_over = threading.Thread(
                            target=self._hand_over, args=(commands,), name="hand-over", daemon=True
                        )
                        hand_over.start()
            if hand_over is not None:
                hand_over.join()  # detached and unlocked: waits only for the controller
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if options.controller:
                _leave_nothing_unused(options.output, bool(self.summary.window_start_ns))
        return self.summary

    def _hand_over(self, commands: ControllerCommands) -> None:
        """Wait (bounded) for the controller to fetch the file (in a thread of its own:
        the main thread detaches and unlocks meanwhile, then waits for this one).

        It answers "delete" once its copy matches size and sha256, which saves a remote
        command per host; without an answer the file stays for `xdpcap collect`.
        """
        if self.events.controller_gone:
            return
        deadline = clock.monotonic_ns() + int(HAND_OVER_TIMEOUT_S * 1e9)
        while not commands.delete.is_set():
            if commands.eof.is_set() or self.stop.reason == "SIGTERM":
                return
            if clock.monotonic_ns() > deadline:
                return
            # Woken at once by "delete", "keep" or EOF; the timeout is for signals.
            commands.changed.wait(0.2)
            commands.changed.clear()
        output = Path(self.summary.file)
        for path in (output, Path(self.summary.file + ".json")):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            output.parent.rmdir()  # the run's folder, once every capture in it is fetched
        self.events.emit("deleted")

    # -- phases ------------------------------------------------------------------------
    def _capture(
        self, sampler: Sampler, iface: netdev.Interface, commands: ControllerCommands | None
    ) -> None:
        options = self.options
        # Output opened before anything is attached: a bad path fails with nothing changed.
        try:
            fd = os.open(options.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise AgentError(f"cannot write {options.output}: {exc.strerror or exc}") from exc
        _give_to_sudo_user(fd)
        with os.fdopen(fd, "wb", buffering=0) as stream:
            sampler.compile()
            consumer = SampleConsumer()
            sampler.open_buffers(page_count=self.buffer_pages, wakeup_events=options.wakeup_events)
            sampler.attach()
            self.summary.mode = sampler.mode or ""
            self.summary.hooks = sampler.describe_hooks()
            assert sampler.headers is not None
            self.events.emit(
                "ready",
                iface=options.iface,
                mode=sampler.mode,
                hooks=sampler.describe_hooks(),
                headers=sampler.headers.describe(),
                program=sampler.loaded_from,
                load_s=round(sampler.load_s or 0.0, 3),
                cache_note=sampler.cache_note,
                buffer_pages_per_cpu=self.buffer_pages,
                pid=os.getpid(),
            )
            if options.wait_start and commands is not None and not self._wait_for_start(commands):
                self.summary.stopped_by = self.stop.reason or "no start"
                return
            if options.start_at_ns is not None and not self._wait_until(options.start_at_ns):
                self.summary.stopped_by = self.stop.reason or "no start"
                return
            self._offset = clock.realtime_minus_monotonic_ns()
            start_mono = self._window_start(commands)
            writer = self._open_writer(stream, sampler, iface)
            self._window(sampler, consumer, writer, commands, start_mono)
            self._finish(sampler, consumer, writer)

    def _window_start(self, commands: ControllerCommands | None) -> int:
        """When the window opens (monotonic ns): at the controller's "start T" if our
        clock puts T in the next MAX_START_LEAD_NS, else now.

        The program ignores packets before it, so the window opens at that instant
        however late this process is scheduled (a hundred agents waking on one CPU).
        """
        now = clock.monotonic_ns()
        start_at = commands.start_at_ns if commands is not None else None
        if start_at is None:
            start_at = self.options.start_at_ns  # --start-at (None: open now)
        if start_at is None:
            return now
        start = start_at - self._offset
        if self._test_drift:  # the test clock's drift, taken back out
            start -= clock.test_drift_ns(start_at)
        return start if 0 <= start - now <= MAX_START_LEAD_NS else now

    def _answer_clock(self) -> None:
        """The controller's clock probe: our wall clock, read as its line arrived."""
        self.events.emit("clock", realtime_ns=clock.wall_clock_ns())

    def _report_sync(self) -> None:
        """The clock's sync state, for the controller's clock report (off the loop)."""
        self.events.emit("sync", state=clock.sync_state())

    def _wait_for_start(self, commands: ControllerCommands) -> bool:
        deadline = clock.monotonic_ns() + int(self.options.start_timeout_s * 1e9)
        while not commands.start.wait(0.1):
            if self.stop.reason or commands.stop.is_set() or commands.eof.is_set():
                return False
            if clock.monotonic_ns() > deadline:
                self.stop.set("start timeout")
                return False
        return True

    def _wait_until(self, start_at_ns: int) -> bool:
        """--start-at: every host of a fleet opens its window at the same wall-clock time,
        however the hosts were started (Ansible's forks and batches start them apart).

        Sleeps until just before it; _window_start then has the program open the window
        at the instant itself."""
        late_ns = clock.wall_clock_ns() - start_at_ns
        if late_ns > START_AT_SLACK_NS:
            # Compile and attach took longer than the play allowed: capture anyway, and say
            # so (the window starts late on this host only).
            self.events.emit("late", start_at_ns=start_at_ns, late_ns=late_ns)
            print(
                f"xdpcap: {self.options.iface}: ready {late_ns / 1e6:.1f} ms after --start-at; "
                "the window opens now",
                file=sys.stderr,
            )
            return True
        while not self.stop.reason:
            remaining_ns = start_at_ns - START_AT_LEAD_NS - clock.wall_clock_ns()
            if remaining_ns <= 0:
                return True
            time.sleep(min(remaining_ns, 100_000_000) / 1e9)  # signals are seen within 0.1 s
        return False

    def _open_writer(self, stream, sampler: Sampler, iface: netdev.Interface) -> PcapngWriter:
        uname = platform.uname()
        writer = PcapngWriter(
            stream,
            userappl=f"xdpcap {__version__}",
            os_name=f"{uname.system} {uname.release}",
            hardware=uname.machine,
            comment=f"host {socket.gethostname()}",
        )
        expression = self.options.filter_expression
        interface = {
            "name": self.options.iface,
            # Frames of an L3 device (tun, wireguard) start with their IP header.
            "linktype": filter_spec.PCAPNG_LINKTYPE[
                filter_spec.LINK_OF_IP_LINK_TYPE.get(iface.link_type, "ether")
            ],
            "snaplen": self.options.snaplen,
            "description": _interface_description(sampler, self.options),
            "hardware": iface.driver,
            "os_name": f"{uname.system} {uname.release}",
        }
        writer.add_interface(
            **interface,
            # if_filter: a first byte 0 says the filter is given as libpcap text.
            extra_options=[(IF_FILTER, b"\x00" + expression.encode())] if expression else (),
        )
        if self.options.stream and self.events.outbox is not None:
            # The live stream's interface block says what the file's says.
            self.events.emit("interface", **interface, filter=expression)
            self._stream = StreamSender(self.events.outbox, self._stream_wall_ns)
        return writer

    def _stream_wall_ns(self, mono_ns: int) -> int:
        """A monotonic instant as the file's timestamps give it (the host's wall clock)."""
        wall = mono_ns + self._offset
        return wall + clock.test_drift_ns(wall) if self._test_drift else wall

    def _window(
        self,
        sampler: Sampler,
        consumer: SampleConsumer,
        writer: PcapngWriter,
        commands: ControllerCommands | None,
        start_mono: int,
    ) -> None:
        options = self.options
        self._orderer = TimeOrderer()
        backlog = self._backlog = Backlog()
        drops_before = netdev.read_os_drops(options.iface) if sampler.xdp else 0
        end_mono = start_mono + int(options.duration_s * 1e9) if options.duration_s else 0
        sampler.enable(self._offset, start_mono, end_mono)
        self.summary.window_start_ns = start_mono + self._offset
        self.events.emit(
            "capturing",
            window_start_ns=self.summary.window_start_ns,
            # Our clock as the window was set: the controller brackets it between its
            # "start" and this event (a clock estimate for the live stream).
            armed_ns=clock.wall_clock_ns(),
        )
        if self.events.outbox is not None:
            threading.Thread(target=self._report_sync, name="sync", daemon=True).start()
        deadline = end_mono or None
        next_progress = start_mono + PROGRESS_EVERY_NS
        last_drain = 0
        while True:
            now = clock.monotonic_ns()
            if deadline is not None and now >= deadline:
                self.stop.set("duration")
            if options.count is not None and writer.packets_written >= options.count:
                self.stop.set("count")
            if commands is not None and commands.stop.is_set():
                self.stop.set("controller")
            if self.stop.reason:
                break
            if not backlog:  # nothing left to format: wait for the rings
                poll_ms = STREAM_POLL_MS if self._stream is not None else POLL_MS
                timeout = (
                    poll_ms if deadline is None else max(0, min(poll_ms, (deadline - now) // 10**6))
                )
                # At most one drain per DRAIN_INTERVAL_NS: each costs a fixed overhead,
                # and the rings hold far more than arrives in that time.
                pause = last_drain + DRAIN_INTERVAL_NS - now
                if pause > 0:
                    time.sleep(pause / 1e9)
                sampler.poll(timeout)
            last_drain = now = clock.monotonic_ns()
            if backlog.size < BACKLOG_MAX_BYTES:
                backlog.add(now, sampler.read())
            self._format(consumer, writer, now + FORMAT_SLICE_NS)
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_NS
                self._progress(sampler, writer)
        sampler.disable()
        # The program closed the window at end_mono already, unless it stopped sooner.
        stopped = clock.monotonic_ns()
        self.summary.window_end_ns = (
            min(stopped, end_mono) if end_mono else stopped
        ) + self._offset
        self.summary.stopped_by = self.stop.reason or ""
        if sampler.xdp:  # frames missed before XDP: meaningless for egress alone
            self.summary.os_drops = max(0, netdev.read_os_drops(options.iface) - drops_before)

    def _format(self, consumer: SampleConsumer, writer: PcapngWriter, until_ns: int | None) -> None:
        """Turns drained records into file blocks, oldest drain first, until `until_ns`.

        Each drain's records are released up to that drain's horizon: a drain empties
        every CPU's ring, so nothing stamped well before it can still be elsewhere.
        """
        backlog, orderer = self._backlog, self._orderer
        while backlog:
            drained_at = backlog.format_piece(consumer, FORMAT_PIECE_BYTES)
            orderer.add(consumer.take())
            if drained_at is not None:
                horizon = drained_at - ORDER_SLACK_NS
                written = self._write(writer, self._within_count(orderer.release(horizon)))
                if self._stream is not None:
                    self._stream.add(written, horizon, clock.monotonic_ns())
            if until_ns is not None and clock.monotonic_ns() >= until_ns:
                break

    def _finish(self, sampler: Sampler, consumer: SampleConsumer, writer: PcapngWriter) -> None:
        # The window is closed (disable()): once no program run that saw it open is still
        # under way, drain every buffer to the end. The hooks are detached after "done"
        # (Sampler.close), while the controller fetches.
        sampler.quiesce()
        backlog = self._backlog
        idle_rounds = 0
        while idle_rounds < 2:
            chunks = sampler.read()
            backlog.add(clock.monotonic_ns(), chunks)
            idle_rounds = 0 if chunks else idle_rounds + 1
        self._format(consumer, writer, None)
        written = self._write(writer, self._within_count(self._orderer.release(None)))
        if self._stream is not None:
            self._stream.finish(written, self.summary.window_end_ns)
            self.summary.streamed = self._stream.streamed
            self.summary.stream_skipped = self._stream.skipped
        by_direction = sampler.counters_by_direction()
        counters = sum(by_direction.values(), Counters())
        summary = self.summary
        summary.backlog_peak_bytes = backlog.peak
        summary.seen = counters.seen
        summary.filtered_out = counters.filtered_out
        summary.not_sampled = counters.not_sampled
        self._flush(writer)
        summary.written = writer.packets_committed
        # Every sampled packet that is not in the file is lost, and we say why.
        in_transit = counters.sampled - consumer.received
        summary.lost_detail = {
            "perf_buffer_full": counters.output_failed,
            "malformed": consumer.malformed,
            "disk": consumer.received - consumer.malformed - summary.past_count - summary.written,
            "in_transit": max(0, in_transit),
        }
        summary.lost = sum(summary.lost_detail.values())
        summary.directions = self._split(by_direction)
        if self._tally is not None:
            summary.verdicts = self._tally.split(sampler.counters_by_verdict())
        summary.bytes_written = self._bytes
        try:
            writer.write_statistics(
                0,
                summary.window_end_ns,
                starttime=summary.window_start_ns,
                endtime=summary.window_end_ns,
                ifrecv=summary.seen,
                ifdrop=summary.lost,
                filteraccept=summary.seen - summary.filtered_out,
                osdrop=summary.os_drops,
                usrdeliv=summary.written,
                comment=f"seen = filtered out ({summary.filtered_out}) + written + lost "
                f"+ not sampled ({summary.not_sampled}) + after --count ({summary.past_count}); "
                f"lost: {summary.lost_detail}; osdrop: missed by the interface before XDP"
                + "".join(f"; {name}: {asdict(d)}" for name, d in summary.directions.items())
                + "".join(f"; verdict {name}: {v}" for name, v in summary.verdicts.items()),
            )
            writer.flush()
        except OSError as exc:
            summary.partial_reason = summary.partial_reason or f"statistics not written: {exc}"
        summary.out_of_order = self._late
        summary.file_size = writer.bytes_committed
        summary.file_sha256 = writer.sha256.hexdigest()
        try:
            write_summary_file(summary)
        except OSError as exc:  # a full disk: the capture itself is still valid
            summary.partial_reason = summary.partial_reason or f"summary not written: {exc}"
        self.events.emit("done", **summary.to_dict())

    def _split(self, by_direction: dict[int, Counters]) -> dict[str, DirectionSummary]:
        """Each direction's share. The kernel counts seen, filtered, not sampled and
        sampled per direction; the file's share is counted as packets are released;
        lost is what was sampled and neither written nor past --count — so the sum
        closes in each direction as it does in total."""
        summary = self.summary
        out_written = min(self._written_out, summary.written)  # a cut file may hold fewer
        written = {contract.OUTBOUND: out_written, contract.INBOUND: summary.written - out_written}
        past = {
            contract.OUTBOUND: self._past_count_out,
            contract.INBOUND: summary.past_count - self._past_count_out,
        }
        split = {}
        for direction, c in by_direction.items():
            sampled = c.sampled + c.output_failed
            split[DIRECTION_NAMES[direction]] = DirectionSummary(
                seen=c.seen,
                filtered_out=c.filtered_out,
                written=written[direction],
                lost=sampled - written[direction] - past[direction],
                not_sampled=c.not_sampled,
                past_count=past[direction],
            )
        return split

    # -- helpers -----------------------------------------------------------------------
    def _within_count(self, ready: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes, int]]:
        """The first --count packets in time order; the rest are counted, not written."""
        count = self.options.count
        if count is None:
            return ready
        room = max(0, count - self._released)
        kept = ready[:room]
        self._released += len(kept)
        self.summary.past_count += len(ready) - len(kept)
        self._past_count_out += sum(direction_of(item[2]) for item in ready[room:])
        if self._tally is not None:
            self._tally.add_past_count(item[2] for item in ready[room:])
        return kept

    def _write(self, writer: PcapngWriter, ready: list[tuple[int, bytes, int]]) -> list[bytes]:
        """Appends released (ts, block, key) items: the blocks are already framed.
        Returns the blocks handed to the writer (for the live stream)."""
        if not ready or self.summary.partial_reason:
            return []
        keys = [item[2] for item in ready]
        blocks = [item[1] for item in ready]
        if self._test_drift:
            blocks = [_drifted_block(block) for block in blocks]
        try:
            writer.write_blocks(blocks, len(ready))
        except OSError as exc:
            self._disk_full(exc)
            blocks = []
        else:
            self._written_out += sum(map(direction_of, keys))  # 1 for each outbound packet
            if self._tally is not None:
                self._tally.add_written(keys)
        self._bytes += sum(map(cap_len_of, keys))
        if ready[0][0] < self._last_ts:
            self._late += 1
        self._last_ts = ready[-1][0]
        return blocks

    def _flush(self, writer: PcapngWriter) -> None:
        if self.summary.partial_reason:
            return
        try:
            writer.flush()
        except OSError as exc:
            self._disk_full(exc)

    def _disk_full(self, exc: OSError) -> None:
        # The writer has cut the file back to its last whole block; stop capturing and
        # count what did not reach the file as lost.
        self.summary.partial_reason = f"writing {self.options.output} failed: {exc.strerror or exc}"
        self.stop.set("write error")

    def _progress(self, sampler: Sampler, writer: PcapngWriter) -> None:
        counters = sampler.counters()
        self.events.emit(
            "progress",
            packets=writer.packets_written,
            bytes=self._bytes,
            seen=counters.seen,
            lost=counters.output_failed,
        )


def _drifted_block(block: bytes) -> bytes:
    """An EPB with the test clock's drift added to its timestamp (tests only)."""
    high, low = struct.unpack_from("<II", block, 12)
    wall = high << 32 | low
    wall += clock.test_drift_ns(wall)
    return block[:12] + struct.pack("<II", wall >> 32, wall & 0xFFFFFFFF) + block[20:]


def run_capture(options: CaptureOptions, events: EventSink) -> CaptureSummary:
    return Capture(options, events).run()
