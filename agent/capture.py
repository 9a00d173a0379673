"""One capture on one interface: attach, sample, write time-ordered pcapng, account, detach.

Accounting is exact: seen = filtered out + written + lost + not sampled (+ sampled after
--count was reached, which like `tcpdump -c N` we do not write), where lost gathers
every way a sample can fail to reach the file (perf buffer full, malformed sample, disk
full) — in total and in each direction. The figures go to the summary line and to the
pcapng interface statistics block.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, clock, contract, netdev, perf_ring, program_cache
from .consumer import Backlog, SampleConsumer, TimeOrderer, cap_len_of, direction_of
from .errors import AgentError
from .filter import spec as filter_spec
from .filter.cbpf import Program
from .filter.to_c import MATCH_ALL
from .hooks.inbound import plan_inbound
from .hooks.owner_events import OwnerEvents, OwnerEventsError
from .lock import InterfaceLock
from .pcapng import IF_FILTER, PcapngWriter
from .perf_ring import buffer_pages_for
from .process.attribution import ProcessAttribution
from .process.selection import Selection
from .protocol import ControllerCommands, EventSink
from .sampler import Counters, Sampler
from .signals import StopFlag, install_signal_handlers
from .start import hand_over, wait_for_start, wait_until, window_start_mono
from .stream import StreamSender
from .summary import CaptureSummary, give_to_sudo_user, split_by_direction, write_summary_file
from .verdicts import VerdictTally

# -Q/--direction, as tcpdump: which ways the packets went that are captured.
DIRECTIONS = {
    "in": frozenset({contract.INBOUND}),
    "out": frozenset({contract.OUTBOUND}),
    "inout": frozenset({contract.INBOUND, contract.OUTBOUND}),
}

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
DEFAULT_START_TIMEOUT_S = 120.0


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
    # Process attribution (agent/process/): EPB comments naming each packet's process,
    # and the selection of packets by process (--pid, --comm, --container).
    process: bool = False
    selection: Selection = field(default_factory=Selection)


def _leave_nothing_unused(output: Path, window_opened: bool) -> None:
    """Under a controller, a capture that never opened its window (refused, no start,
    interrupted during the launch) leaves no file: it was created empty at the start, to
    fail early on a bad path. The run folder stays: other agents of the run may share it
    (one machine under two inventory names, or the namespace lab) and be about to write
    there; it goes with the last capture fetched from it (see _hand_over)."""
    with contextlib.suppress(OSError):
        if not window_opened and output.stat().st_size == 0:
            output.unlink()


def _interface_description(
    sampler: Sampler, options: CaptureOptions, attribution: ProcessAttribution
) -> str:
    rate = f"1-in-{options.sample_rate}" if options.sample_rate > 1 else "every packet"
    text = (
        f"{sampler.describe_hooks()} capture by xdpcap, sampling {rate}, snaplen {options.snaplen}"
    )
    if options.filter_expression:
        text += f", filter {options.filter_expression!r}"
    process = attribution.describe()
    if process:
        text += f", {process}"
    return text


class Capture:
    """Runs one capture; `run()` returns the summary and always leaves the host as it was."""

    def __init__(self, options: CaptureOptions, events: EventSink) -> None:
        self.options = options
        self.events = events
        self.stop = StopFlag()
        self.summary = CaptureSummary(iface=options.iface, file=str(options.output))
        self._disk_lost = 0
        self._late = 0
        # (offset, start) of a window the command reader opened as "start" came (_opener)
        self._opened: tuple[int, int] | None = None
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
        self._attribution = ProcessAttribution(options.selection)
        self._owner: OwnerEvents | None = None  # after another XDP program: its tracepoints

    def run(self) -> CaptureSummary:
        options = self.options
        commands = ControllerCommands(on_clock=self._answer_clock) if options.controller else None
        previous = install_signal_handlers(self.stop, options.controller)
        hand_over: threading.Thread | None = None
        try:
            with InterfaceLock(options.iface):
                iface = netdev.inspect_interface(options.iface)
                self.summary.addresses = netdev.addresses(options.iface)
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
        hand_over(self.summary.file, commands, self.events, self.stop)

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
        give_to_sudo_user(fd)
        with (
            os.fdopen(fd, "wb", buffering=0) as stream,
            self._attribution,
            contextlib.ExitStack() as owner_links,
        ):
            sampler.compile()
            if options.process:
                self._attribution.start(sampler)  # or says why not, and we go on
            attribution = self._attribution
            consumer = SampleConsumer(attribution.comments if attribution.active else None)
            sampler.open_buffers(page_count=self.buffer_pages, wakeup_events=options.wakeup_events)
            sampler.attach()
            if sampler.inbound.kind == "after-xdp" and contract.INBOUND in sampler.directions:
                self._watch_owner(sampler, owner_links)
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
                process=self._attribution.describe(),
            )
            if options.wait_start and commands is not None:
                commands.on_start = self._opener(sampler)
            if options.wait_start and commands is not None and not self._wait_for_start(commands):
                self.summary.stopped_by = self.stop.reason or "no start"
                return
            if options.start_at_ns is not None and not self._wait_until(options.start_at_ns):
                self.summary.stopped_by = self.stop.reason or "no start"
                return
            if self._opened is not None:  # by the command reader, as "start T" came
                self._offset, start_mono = self._opened
            else:
                self._offset = clock.realtime_minus_monotonic_ns()
                start_mono = self._window_start(commands)
            writer = self._open_writer(stream, sampler, iface)
            self._window(sampler, consumer, writer, commands, start_mono)
            self._finish(sampler, consumer, writer)

    def _watch_owner(self, sampler: Sampler, links: contextlib.ExitStack) -> None:
        """Count the owner's aborted and redirected packets, where its tracepoints load;
        where they do not, say so in one line and capture without them."""
        owner = OwnerEvents(netdev.ifindex(self.options.iface))
        try:
            owner.attach(sampler.bytecode, sampler.license(), sampler.map_fd)
        except OwnerEventsError as exc:
            self.summary.owner_events_note = (
                f"the owner's aborted and redirected packets are not counted: {exc}"
            )
            print(
                f"xdpcap: {self.options.iface}: {self.summary.owner_events_note}", file=sys.stderr
            )
            return
        links.callback(owner.close)
        self._owner = owner

    def _window_start(self, commands: ControllerCommands | None) -> int:
        start_at = commands.start_at_ns if commands is not None else None
        if start_at is None:
            start_at = self.options.start_at_ns  # --start-at (None: open now)
        return window_start_mono(start_at, self._offset, self._test_drift)

    def _opener(self, sampler: Sampler) -> Callable[[int | None], None]:
        """What opens the window on the command reader's thread as "start" arrives; the
        main thread then goes on with the same instant (_window enables it again, the
        same values). If it fails, the main thread opens it, and says why."""

        def open_window(start_at_ns: int | None) -> None:
            offset = clock.realtime_minus_monotonic_ns()
            start_mono = window_start_mono(start_at_ns, offset, self._test_drift)
            try:
                sampler.enable(offset, start_mono, self._window_end(start_mono))
            except Exception:  # the main thread tries again, and reports
                return
            self._opened = (offset, start_mono)

        return open_window

    def _window_end(self, start_mono: int) -> int:
        """When a window opened at `start_mono` closes (0: when stopped)."""
        duration = self.options.duration_s
        return start_mono + int(duration * 1e9) if duration else 0

    def _idle_until(self, start_mono: int) -> None:
        """Nothing to do before the window opens (the program ignores packets before it):
        leave the CPU to the hosts whose "start T" is still on its way (a lab's hundred
        agents share two cores; started ones working delayed the rest's by 0.2 s)."""
        while not self.stop.reason:
            remaining_ns = start_mono - clock.monotonic_ns()
            if remaining_ns <= 0:
                return
            time.sleep(min(remaining_ns, 100_000_000) / 1e9)

    def _answer_clock(self) -> None:
        """The controller's clock probe: our wall clock, read as its line arrived."""
        self.events.emit("clock", realtime_ns=clock.wall_clock_ns())

    def _report_sync(self) -> None:
        """The clock's sync state, for the controller's clock report (off the loop)."""
        self.events.emit("sync", state=clock.sync_state())

    def _wait_for_start(self, commands: ControllerCommands) -> bool:
        return wait_for_start(commands, self.options.start_timeout_s, self.stop)

    def _wait_until(self, start_at_ns: int) -> bool:
        return wait_until(start_at_ns, self.options.iface, self.events, self.stop)

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
            "description": _interface_description(sampler, self.options, self._attribution),
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
        end_mono = self._window_end(start_mono)
        sampler.enable(self._offset, start_mono, end_mono)
        self._idle_until(start_mono)
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
        summary.directions = split_by_direction(
            by_direction, summary, self._written_out, self._past_count_out
        )
        if self._tally is not None:
            summary.verdicts = self._tally.split(sampler.counters_by_verdict())
        if self._owner is not None:  # counted inside the window only (its program checks)
            summary.owner_events = self._owner.counts()
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
                comment=summary.statistics_comment(),
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
