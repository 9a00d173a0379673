"""`xdpcap run`: capture on every selected host at once, fetch, merge.

Phases, each bounded in time:
1. launch (at most --forks hosts at a time, fewer while launches slow down: launch_gate.py):
   connect, verify the host key, and with one remote command create the run folder,
   check the cached agent's hash (uploading it where missing) and start it; each agent
   compiles and attaches, then says ready, and the host's slot goes to the next;
   The connects go out first: the agent bundle is built, and the live table's code
   loaded, while they are under way;
2. when every host is ready (or failed, or the ready timeout passed), send "start T" to
   all, T a little ahead: every host's program opens and closes its window at the same
   instant, so every host captures the same stretch of time; show live progress;
   once a host's window is open, its SFTP session is opened in the background
   (standby.py), so that after the capture nobody waits for it;
3. fetch each capture (at most --forks at a time), verified against the sha256 the agent
   computed, while the host's clock offset is measured beside it by asking the waiting
   agent itself (the timed rounds run only now, with no compile or capture competing for
   CPU, a few hosts at a time, and stop once the minimum round trip has settled); the
   agent then deletes its copy;
4. merge what arrived into one pcapng, clock-corrected.
A failed host never hides the others: each ends with a result, reported at the end.

With a live stream (`-w -`), the agents also send their packets as they capture and
stream.py merges them online onto stdout, which ends with the capture window; the run
folder gets the same verified files and merged.pcapng. If the stream's reader goes away,
every agent is stopped as after Ctrl-C.
"""

from __future__ import annotations

import importlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...agent import __version__
from ...agent.filter.spec import CompiledFilter
from ..clock.probe import PROBES_AT_ONCE
from ..errors import MergeError, RemoteError, XdpcapError
from ..inventory.model import Host
from ..merge.live import BUFFER_BUDGET_BYTES, DEFAULT_IDLE_S, LiveMerge
from ..remote.bundle import build_agent_bundle
from ..remote.host import CaptureSettings, RemoteHost
from ..remote.hostvars import validate_iface_for
from ..remote.ssh import SshSettings
from ..remote.state import HostState, Phase
from .fanout import each_remote, fail_remote
from .launch_gate import LaunchGate
from .results import RunResult, merge_states, new_run_dir, write_run_json
from .tables import live_table

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live

    from ..clock.align import Alignment
    from ..merge.captures import MergeReport

# Loaded while the hosts connect (rich, for the live table) or capture (the merge), not
# in front of the first connect: together over a tenth of a second on a slow machine.
DRAWING_MODULES = ("rich.live", "rich.table")
MERGE_MODULE = "xdpcap.orchestrator.merge.captures"

READY_TIMEOUT_S = 20.0  # a stuck host holds the others' window at most this long
RECONNECT_POLL_S = 2.0  # how often a lost host is tried again for its finished capture
SLOT_READY_WAIT_S = 10.0  # how long a launch keeps its slot waiting for its agent's ready
BUNDLE_WAIT_S = 60.0
DONE_GRACE_S = 30.0
STOP_GRACE_S = 30.0
RECONNECT_WAIT_S = 30.0
# How far ahead the windows are scheduled (see _start_all): twice the measured delivery of
# one line to every ready agent and back (written one after another, agents' wake-up
# included: what "start T" will take), at least START_LEAD_MIN_S; where that could not be
# measured, START_LEAD_S plus time per host for the lines to go out one after another.
START_LEAD_S = 0.2
START_LEAD_MIN_S = 0.05
START_LEAD_PER_HOST_S = 0.003
BROADCAST_WAIT_S = 2.0  # for the measuring round's answers


@dataclass(frozen=True)
class RunOptions:
    iface: str | None
    capture: CaptureSettings
    forks: int = 50
    runs_dir: Path = Path("xdpcap-runs")
    inventory_path: str | None = None  # recorded in run.json for `xdpcap collect`
    reconnect_wait_s: float = RECONNECT_WAIT_S
    output: Path | None = None
    clock_correction: bool = True
    ready_timeout_s: float = READY_TIMEOUT_S
    direction: str | None = None  # -Q for every host without xdpcap_direction (None: inout)
    xdp_hook: str | None = None  # --xdp-hook for every host without xdpcap_xdp_hook
    # Process attribution and selection, for every host without its own xdpcap_process,
    # xdpcap_pid, xdpcap_comm, xdpcap_container.
    process: bool | None = None  # --process / --no-process (None: the agent's default)
    pid: int | None = None
    comm: str | None = None
    container: str | None = None
    # Host name → its compiled capture filter (absent or None: no filter).
    filters: Mapping[str, CompiledFilter | None] = field(default_factory=dict)
    stream_fd: int | None = None  # where the live stream goes (-w -: stdout); None: none
    stream_idle_s: float = DEFAULT_IDLE_S
    stream_budget: int = BUFFER_BUDGET_BYTES
    on_stream_closed: Callable[[], None] | None = None  # told once the stream has ended


def start_lead_s(delivery_s: float | None, hosts: int) -> float:
    """How far ahead to schedule the start: from the measured delivery of a line to all
    `hosts` (None: not measured, the fixed lead with time per host)."""
    if delivery_s is None:
        return START_LEAD_S + START_LEAD_PER_HOST_S * hosts
    return max(START_LEAD_MIN_S, 2 * delivery_s)


def broadcast_delivery_s(remotes: Sequence[RemoteHost]) -> float | None:
    """One "clock" line to every agent, written one after another as "start" will be,
    and the time until the last answer was read: the delivery "start T" must beat.
    None if some agent did not answer in time."""
    sent = time.time_ns()
    if not all(remote.send_clock() for remote in remotes):
        return None
    deadline = time.monotonic() + BROADCAST_WAIT_S
    latest = sent
    for remote in remotes:
        answer = remote.clock_answer(max(0.0, deadline - time.monotonic()))
        if answer is None:
            return None
        latest = max(latest, answer[1])
    return (latest - sent) / 1e9


class _ReaderGone(Exception):
    """The live stream's reader closed it: the run stops as after Ctrl-C."""


class Run:
    def __init__(
        self,
        hosts: Sequence[Host],
        options: RunOptions,
        ssh: SshSettings,
        console: Console | None = None,
    ) -> None:
        self.options = options
        self._console = console
        self.run_id = secrets.token_hex(8)  # unpredictable remote folder names
        self.run_dir = new_run_dir(options.runs_dir)
        self.started = time.monotonic()
        self.remotes = [self._remote_for(host, ssh) for host in hosts]
        self.interrupted = False
        self.held_by: list[str] = []  # hosts the others' window waited for in vain
        self._changed = threading.Event()  # any host's agent said something
        for remote in self.remotes:
            remote.changed = self._changed
        self._next_render = 0.0
        self.phases: dict[str, float] = {}  # seconds since the start, for run.json
        self.gate = LaunchGate(options.forks)
        self.start_report: dict | None = None  # "start T": when, how far ahead (run.json)
        self._alignment: Alignment | None = None  # the clocks as the traffic aligned them
        self._journeys: dict | None = None  # where the packets went (follow/journeys.py)
        self.live: LiveMerge | None = None
        self.stream_report: dict | None = None  # for run.json and the final report

    def _remote_for(self, host: Host, ssh: SshSettings) -> RemoteHost:
        capture_filter = self.options.filters.get(host.name)
        state = HostState(host.name, host.address, validate_iface_for(host, self.options.iface))
        state.filter = capture_filter.expression if capture_filter else None
        # The host's own (xdpcap_direction) wins, as its xdpcap_iface does.
        state.direction = host.direction or self.options.direction or "inout"
        state.xdp_hook = host.xdp_hook or self.options.xdp_hook
        options = self.options
        state.process = options.process if host.process is None else host.process
        state.pid = host.pid if host.pid is not None else options.pid
        state.comm = host.comm or options.comm
        state.container = host.container or options.container
        return RemoteHost(
            host, state, ssh, self.run_id, started=self.started, capture_filter=capture_filter
        )

    @property
    def console(self) -> Console:
        """The status console (stderr), made on first use: rich loads after the connects."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def _mark(self, phase: str) -> None:
        self.phases[phase] = round(time.monotonic() - self.started, 3)

    @property
    def states(self) -> list[HostState]:
        return [r.state for r in self.remotes]

    # -- the phases --------------------------------------------------------------------
    def execute(self) -> RunResult:
        try:
            self._open_stream()
            try:
                self._launch()
                self._mark("launched")
                active = [r for r in self.remotes if r.state.state != Phase.FAILED]
                self._capture(active)
                self._mark("captured")
            finally:
                self._close_stream()
            try:
                self._fetch(active)
            except KeyboardInterrupt:
                self._fetch_interrupted(active)
            self._mark("fetched")
        finally:
            for remote in self.remotes:
                remote.close()
        try:
            merged, report = self._merge()
        except MergeError as exc:
            # The per-host files are kept and run.json says what happened; then fail.
            self._write_run_json(None)
            raise MergeError(f"{exc}; the host captures are in {self.run_dir / 'hosts'}") from exc
        self._mark("merged")
        self._write_run_json(merged)
        self._write_page()
        return RunResult(self.run_dir, self.states, merged, report, self.stream_report)

    def _open_stream(self) -> None:
        """The live stream's section header goes out now: a reader waits for it."""
        if self.options.stream_fd is None:
            return
        self.live = LiveMerge(
            self.options.stream_fd,
            idle_s=self.options.stream_idle_s,
            budget=self.options.stream_budget,
            note=lambda text: self.console.print(f"live stream: {text}", soft_wrap=True),
            comment=f"Live stream by xdpcap from {len(self.remotes)} hosts (run {self.run_id})",
        )
        for remote in self.remotes:
            remote.live = self.live.add_host(remote.host.name, remote.host.address)

    def _close_stream(self) -> None:
        """End the stream with the capture: its reader sees the end before the fetch."""
        live = self.live
        if live is None:
            return
        for remote in self.remotes:
            if remote.live is not None and not remote.done_event.is_set():
                remote.live.done(None)  # failed or never started: nothing more comes
        if self.options.on_stream_closed is not None:
            # Before the reader sees the end: Wireshark stops its extcap (SIGTERM) as soon
            # as the stream ends, and from here on that must not cut the fetch short.
            self.options.on_stream_closed()
        live.finish()
        counts = live.counts()
        self.stream_report = {
            "packets": live.packets,
            "reader_gone": live.reader_gone.is_set(),
            "cut_off": live.cut_off,
            "hosts": counts,
        }

    def _launch(self) -> None:
        """Connect to every host (at most --forks at a time) and start its agent there.

        A connect mostly waits, on the network and on the host's sshd: meanwhile the
        agent bundle is built (a host waits for it only once connected) and this thread
        loads what the next phases draw with.
        """
        capture = self.options.capture
        with ThreadPoolExecutor(max_workers=1) as builder:
            bundle = builder.submit(build_agent_bundle)

            interrupted = threading.Event()  # Ctrl-C: launches under way stop waiting

            def launch(remote: RemoteHost) -> None:
                with self.gate.slot():
                    if interrupted.is_set():
                        raise RemoteError(f"{remote.host.name}: not started: interrupted")
                    remote.connect()
                    remote.launch(bundle.result(BUNDLE_WAIT_S), capture)
                    # Until ready (the agent's start is the launch's largest cost), but
                    # a slow compile or a stuck host gives its slot up after a while: the
                    # wait for every host's ready goes on after the launches.
                    wait = min(SLOT_READY_WAIT_S, self.options.ready_timeout_s)
                    remote.wait_ready(wait, interrupted)

            each_remote(
                self.remotes,
                launch,
                self.options.forks,
                meanwhile=self._while_connecting,
                abort=interrupted,
            )
        bundle.result()  # a bundle that could not be built is the run's error, not a host's

    def _while_connecting(self) -> None:
        self.console.print(f"xdpcap {__version__}: starting on {len(self.remotes)} host(s)")
        for name in DRAWING_MODULES:
            importlib.import_module(name)

    def _capture(self, active: list[RemoteHost]) -> None:
        from rich.live import Live

        active = [r for r in active if r.process is not None]
        # Written now as well: if the controller dies mid-run, `collect` still knows
        # where every host's capture is.
        self._write_run_json(None)
        with Live(
            live_table(self.states), console=self.console, refresh_per_second=4, transient=False
        ) as live:
            try:
                self._wait_ready(active, live)
                ready = [r for r in active if r.state.state == Phase.READY]
                self._mark("all ready")
                self._start_all(ready)
                importlib.import_module(MERGE_MODULE)  # while the hosts capture
                self._wait_done(ready, live)
            except (KeyboardInterrupt, _ReaderGone) as exc:
                # Stop every agent cleanly (each detaches), then fetch what they captured.
                self.interrupted = True
                why = "interrupted"
                if isinstance(exc, _ReaderGone):
                    why = "the live stream's reader went away"
                self.console.print(f"{why}: stopping every agent")
                for remote in active:
                    remote.send("stop")
                self._wait_all(active, STOP_GRACE_S, live, stopping=True)
            live.update(live_table(self.states))
        self.console.line()  # on a pipe, the last render does not end its line
        for remote in active:
            if remote.state.state in (Phase.READY, Phase.COMPILING):
                remote.send("stop")
                fail_remote(remote, "not started: other hosts were not ready in time")

    def _start_all(self, ready: list[RemoteHost]) -> None:
        """Open every window at the same instant: "start T", T a little ahead.

        Sent one host after another, and with a hundred agents waking on a busy host,
        immediate starts spread over a quarter of a second; each agent's program ignores
        packets before T instead (a host whose clock disagrees with ours by more than
        the agent accepts starts at once, as before; so does one whose line arrives
        after T: counted in run.json's start.late).
        """
        delivery_s = broadcast_delivery_s(ready)
        lead = start_lead_s(delivery_s, len(ready))
        start_at = time.time_ns() + int(lead * 1e9)
        for remote in ready:
            remote.start(start_at)
        self.start_report = {
            "at_ns": start_at,
            "lead_s": round(lead, 4),
            "delivery_ms": round(delivery_s * 1e3, 3) if delivery_s is not None else None,
        }

    def _wait_ready(self, active: list[RemoteHost], live: Live) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        while time.monotonic() < deadline:
            if self.live is not None and self.live.reader_gone.is_set():
                raise _ReaderGone
            self._note_dead_agents(active)
            if all(r.state.state in (Phase.READY, Phase.FAILED) for r in active):
                return
            self._pause(live)
        held_by = [r for r in active if r.state.state not in (Phase.READY, Phase.FAILED)]
        for remote in held_by:
            remote.send("stop")
            fail_remote(
                remote,
                f"not ready within {self.options.ready_timeout_s:.0f} s (compile and attach)",
            )
        self.held_by = [r.host.name for r in held_by]
        if held_by:
            self.console.print(
                f"the others waited {self.options.ready_timeout_s:g} s (--ready-timeout) "
                f"for {', '.join(self.held_by)}: started without",
                soft_wrap=True,
            )

    def _wait_done(self, ready: list[RemoteHost], live: Live) -> None:
        capture = self.options.capture
        self._wait_all(ready, capture.duration_s + capture.start_timeout_s + DONE_GRACE_S, live)

    def _wait_all(
        self, remotes: list[RemoteHost], timeout: float, live: Live, *, stopping: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not stopping and self.live is not None and self.live.reader_gone.is_set():
                raise _ReaderGone
            self._note_dead_agents(remotes)
            for remote in remotes:
                # Its window is open: what the fetch needs can open now, off the clock.
                # Not before: the start of the window must not wait for a login shell.
                if remote.state.state in (Phase.CAPTURING, Phase.CAPTURED):
                    remote.open_standby()
            if all(r.done_event.is_set() or r.state.state == Phase.FAILED for r in remotes):
                return
            self._pause(live)

    def _pause(self, live: Live) -> None:
        """Until an agent says something (at most 50 ms: dead connections are polled);
        the table is redrawn a few times a second, not on every event."""
        self._changed.wait(0.05)
        self._changed.clear()
        now = time.monotonic()
        if now >= self._next_render:
            self._next_render = now + 0.25
            live.update(live_table(self.states))

    def _note_dead_agents(self, remotes: list[RemoteHost]) -> None:
        """An agent that ended without its report: lost with its window open, it goes on
        by itself (fetched later); lost before, or ended with a status, it failed."""
        for remote in remotes:
            if remote.state.state != Phase.FAILED and remote.agent_finished_without_report():
                lost = remote.process is not None and remote.process.exit_status is None
                if lost and remote.start_sent_ns:
                    remote.state.move(Phase.DISCONNECTED, remote.failure_reason())
                    if remote.live is not None:
                        remote.live.done(None)  # its agent goes on, but not on this stream
                    remote.done_event.set()
                else:
                    fail_remote(remote, remote.failure_reason())

    def _fetch(self, active: list[RemoteHost]) -> None:
        hosts_dir = self.run_dir / "hosts"

        clock_slots = threading.BoundedSemaphore(PROBES_AT_ONCE)

        def fetch(remote: RemoteHost) -> None:
            if remote.state.state == Phase.DISCONNECTED:
                self._reconnect(remote)
            if remote.state.state != Phase.CAPTURED:
                return
            # The clock probe and the transfer use channels of their own: run them side
            # by side. Both were opened during the capture window where that worked;
            # else each opens now (each SSH command costs the host a login shell).
            remote.state.move(Phase.FETCHING)
            sftp = remote.take_standby()
            probe = threading.Thread(target=self._probe_clock, args=(remote, clock_slots))
            probe.start()
            try:
                # The agent answers the probe: it deletes its copy (and exits) only after.
                remote.fetch(hosts_dir, sftp, before_delete=lambda: probe.join(timeout=60))
            finally:
                probe.join(timeout=60)
            remote.state.move(Phase.DONE)

        each_remote(active, fetch, self.options.forks)

    def _fetch_interrupted(self, active: list[RemoteHost]) -> None:
        """Ctrl-C while fetching: the fetches under way were finished (their threads
        cannot be cut mid-transfer); the rest stay on their hosts for `collect`."""
        self.interrupted = True
        self.console.print(
            f"interrupted: merging what was fetched; `xdpcap collect {self.run_dir}` "
            "fetches the rest",
            soft_wrap=True,
        )
        for remote in active:
            if remote.state.state in (Phase.CAPTURED, Phase.FETCHING, Phase.DISCONNECTED):
                fail_remote(remote, f"fetch interrupted; run `xdpcap collect {self.run_dir}`")

    def _probe_clock(self, remote: RemoteHost, slots: threading.Semaphore) -> None:
        try:
            remote.probe_clock(slots)
        except XdpcapError as exc:  # the capture is still good; merged uncorrected
            self.console.print(f"{exc}; its clock offset is unknown", soft_wrap=True)

    def _reconnect(self, remote: RemoteHost) -> None:
        """The SSH connection died mid-capture: the agent went on. Come back for the file."""
        assert remote.state.remote_file
        end = (
            remote.state.window_start_ns or time.time_ns()
        ) / 1e9 + self.options.capture.duration_s
        time.sleep(max(0.0, min(end - time.time() + 1.0, self.options.capture.duration_s)))
        remote.close()
        remote.conn = None
        try:
            summary = remote.await_summary(self.options.reconnect_wait_s, RECONNECT_POLL_S)
        except RemoteError:
            summary = None
        if summary is not None:
            remote.state.move(Phase.CAPTURED, reason=None)
            return
        remote.state.reason = (
            f"connection lost and the capture was not ready within "
            f"{self.options.reconnect_wait_s:.0f} s; run `xdpcap collect {self.run_dir}`"
        )

    def _merge(self) -> tuple[Path | None, MergeReport | None]:
        out = self.options.output or self.run_dir / "merged.pcapng"
        report = merge_states(self.states, out, clock_correction=self.options.clock_correction)
        self._alignment = report.alignment if report is not None else None
        self._journeys = report.journeys if report is not None else None
        return (out, report) if report is not None else (None, None)

    def _start_report(self) -> dict | None:
        """The scheduled start, and the hosts whose window opened at once instead (their
        "start T" arrived after T, or their clock is too far from ours)."""
        if self.start_report is None:
            return None
        at = self.start_report["at_ns"]
        late = [
            s.name for s in self.states if s.window_start_ns is not None and s.window_start_ns != at
        ]
        return {**self.start_report, "late": late, "held_by": self.held_by}

    def _write_page(self) -> None:
        """report.html beside run.json (`xdpcap report` writes it again)."""
        from ..report.page import write_beside

        _, problem = write_beside(self.run_dir / "run.json")
        if problem:
            self.console.print(f"[yellow]warning:[/yellow] {problem}")

    def _write_run_json(self, merged: Path | None) -> None:
        data = {
            "xdpcap": __version__,
            "run_id": self.run_id,
            "inventory": self.options.inventory_path,
            "iface": self.options.iface,
            "interrupted": self.interrupted,
            "phases_s": self.phases,
            "launch": self.gate.report(),
            "start": self._start_report(),
            "capture": self.options.capture.__dict__,
            "merged": str(merged) if merged else None,
            "clock_correction": self.options.clock_correction,
            "clock_alignment": self._alignment.to_dict() if self._alignment else None,
            "journeys": self._journeys,
            "stream": self.stream_report,
            "hosts": [s.to_dict() for s in self.states],
        }
        write_run_json(self.run_dir, data)
