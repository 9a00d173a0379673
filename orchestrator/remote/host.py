"""Everything the controller does on one host: prepare, run the agent, fetch.

One `RemoteHost` per inventory host. Its methods raise RemoteError with a one-line,
host-named reason; the run turns that into the host's result and carries on with the
others.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric import Connection
from paramiko import SFTPClient

from ...agent.command_line import CaptureArgs, capture_argv
from ...agent.filter.spec import CompiledFilter
from ...agent.protocol import parse_event
from ..clock.probe import ClockOffset, ClockProbe, measure_rounds
from ..errors import RemoteError
from ..inventory.model import Host
from ..merge.live import LiveHost
from .bundle import AgentBundle
from .channel import RemoteProcess
from .events import on_event
from .filters import without_connection
from .host_files import CACHE_DIR, LAUNCH_SCRIPT, prune_old_agents, sha256_of
from .hostvars import SAFE_PATH, capture_dir_of, interpreter_of, test_clock_env
from .ssh import SshSettings, quote_command, run, sudo_failure
from .ssh import connect as ssh_connect
from .standby import Standby
from .state import HostState, Phase

LAUNCH_WAIT_S = 60.0
HAND_OVER_WAIT_S = 10.0
CLOCK_ROUND_TIMEOUT_S = 5.0
FETCH_STALL_S = 60.0
PREFLIGHT_WAIT_S = 120.0


@dataclass(frozen=True)
class CaptureSettings:
    duration_s: float
    count: int | None
    snaplen: int
    sample_rate: int
    xdp_mode: str
    start_timeout_s: float


@dataclass
class RemoteHost:
    host: Host
    state: HostState
    settings: SshSettings
    run_id: str
    started: float = field(default_factory=time.monotonic)
    conn: Connection | None = None
    home: str = ""
    needs_sudo: bool = False
    agent_path: str = ""
    process: RemoteProcess | None = None
    # What the launch script reported (uid, home, sync, launch), filled by the reader.
    facts: dict[str, str] = field(default_factory=dict)
    done_event: threading.Event = field(default_factory=threading.Event)
    # Set on every event from the agent, so the run reacts at once (shared by the run).
    changed: threading.Event = field(default_factory=threading.Event)
    deleted: threading.Event = field(default_factory=threading.Event)
    ready_event: threading.Event = field(default_factory=threading.Event)  # it said "ready"
    standby: Standby | None = None  # the fetch's SFTP session, opened during the window
    capture_filter: CompiledFilter | None = None  # compiled on the controller (filters.py)
    live: LiveHost | None = None  # this host's part of the live stream (-w -), if any
    # The capture agent's answers to "clock": (its wall clock, when we read it).
    clock_answers: queue.Queue = field(default_factory=queue.Queue)
    start_sent_ns: int = 0  # when "start" was sent (controller clock)

    # -- preparation -------------------------------------------------------------------
    def connect(self) -> None:
        """Open the verified SSH connection; nothing runs on the host yet."""
        self.state.move(Phase.CONNECTING)
        self.conn = ssh_connect(self.host, self.settings)

    def open(self) -> None:
        """Connect, and learn who we are and where home is (reconnect, collect)."""
        self.connect()
        status, out, err = run(self.conn, ["sh", "-c", "id -u && pwd"], host=self.host)
        lines = out.split()
        if status != 0 or len(lines) < 2 or not SAFE_PATH.match(lines[1]):
            raise RemoteError(f"{self.host.name}: cannot read user and home: {err.strip() or out}")
        self._learn_identity(lines[0], lines[1])

    @property
    def sync_state(self) -> str | None:
        """The host's clock sync (chrony or timedatectl), for the clock offset's report.

        The agent asks once its window is open and says so in a "sync" event, long before
        the capture ends (None if it never does).
        """
        return self.facts.get("sync") or None

    def _learn_identity(self, uid: str, home: str) -> None:
        self.home = home
        self.needs_sudo = uid != "0" or (
            self.host.become and (self.host.become_user or "root") != "root"
        )

    def probe_clock(self, slots: threading.Semaphore) -> None:
        """Measure the host clock's offset (after the capture: no compile competes for CPU).

        The capture agent, waiting for its file to be fetched, answers on its own channel:
        no session, login shell or Python start on the host. Without it (a reconnect,
        `xdpcap collect`) a probe of its own, started now and closed here.
        """
        assert self.conn is not None
        if self.process is not None and not self.process.finished.is_set():
            offset = measure_rounds(self._clock_round_trip, self.host.name, slots=slots)
        else:
            probe = ClockProbe(self.conn, self._clock_command(), name=self.host.name)
            try:
                probe.wait_up()
                offset = probe.measure(slots=slots)
            finally:
                probe.close()
        self.state.clock = ClockOffset(offset.offset_ns, offset.error_ns, self.sync_state)

    def send_clock(self) -> bool:
        """Ask the capture agent for its clock (False: its channel is closed). Answers to
        earlier rounds still queued are dropped: the next answer is this one's."""
        assert self.process is not None
        answers = self.clock_answers
        while not answers.empty():
            answers.get_nowait()
        return self.process.send_line("clock")

    def clock_answer(self, timeout_s: float) -> tuple[int, int] | None:
        """The agent's answer to send_clock: (its wall clock, when we read it), or None."""
        try:
            return self.clock_answers.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def _clock_round_trip(self) -> tuple[int, int, int]:
        """One "clock" line to the capture agent and its answer: (sent, remote, received)."""
        sent = time.time_ns()
        if not self.send_clock():
            raise RemoteError(f"{self.host.name}: the clock probe failed: the channel is closed")
        answer = self.clock_answer(CLOCK_ROUND_TIMEOUT_S)
        if answer is None:
            raise RemoteError(f"{self.host.name}: the clock probe got no answer")
        remote, received = answer
        return sent, remote, received

    def _clock_command(self) -> str:
        return quote_command(self._plain_agent_argv(self.agent_path, "clock", "--serve"))

    def open_standby(self) -> None:
        """Start opening the fetch's SFTP session (once the window is open).

        Once per connection: a reconnect closes the old standby and the fetch that follows
        at once opens its own.
        """
        if self.standby is None and self.conn is not None and self.conn.is_connected:
            self.standby = Standby(self.conn, name=self.host.name)

    def take_standby(self) -> SFTPClient | None:
        """The pre-opened SFTP client where ready, else None: the caller owns (and
        closes) what it gets."""
        return self.standby.take() if self.standby is not None else None

    @property
    def become_password(self) -> str | None:
        """-K wins over the inventory's ansible_become_password."""
        return self.settings.become_password or self.host.become_password

    @property
    def cache_dir(self) -> str:
        return f"{self.home}/{CACHE_DIR}"

    @property
    def capture_root(self) -> str:
        """Where this host's captures go (xdpcap_capture_dir, else the cache's runs/)."""
        return capture_dir_of(self.host) or f"{self.home}/{CACHE_DIR}/runs"

    @property
    def run_dir(self) -> str:
        return f"{self.capture_root}/{self.run_id}"

    def _install_agent(self, bundle: AgentBundle, present_sha256: str | None) -> None:
        """Upload the agent only where that exact content is missing; verify before use."""
        assert self.conn is not None
        self.agent_path = f"{self.cache_dir}/{bundle.filename}"
        if present_sha256 == bundle.sha256:
            return
        tmp = f"{self.agent_path}.{secrets.token_hex(6)}.tmp"
        sftp = self.conn.sftp()
        with sftp.open(tmp, "wb") as remote:
            remote.chmod(0o600)
            remote.write(bundle.data)
        sftp.posix_rename(tmp, self.agent_path)  # atomic, replaces a damaged copy
        actual = self._remote_sha256(self.agent_path)
        if actual != bundle.sha256:
            raise RemoteError(
                f"{self.host.name}: the uploaded agent does not match its hash "
                f"({actual} != {bundle.sha256}): refusing to run it"
            )
        prune_old_agents(sftp, self.cache_dir, keep=bundle.filename)

    def _remote_sha256(self, path: str) -> str | None:
        assert self.conn is not None
        status, out, _ = run(self.conn, ["sha256sum", path], host=self.host)
        return out.split()[0] if status == 0 and out else None

    # -- preflight ---------------------------------------------------------------------
    def preflight(self, bundle: AgentBundle) -> dict[str, Any]:
        """`xdpcap check`: the agent's preflight report, started like a capture."""
        root_rel = capture_dir_of(self.host) or f"{CACHE_DIR}/runs"
        # The captures' root, not a run folder: a check leaves nothing behind.
        self.launch_agent(
            bundle, root_rel, ["preflight", "-i", self.state.iface, "--output-dir", root_rel]
        )
        assert self.process is not None
        if not self.process.wait(PREFLIGHT_WAIT_S):
            raise RemoteError(
                f"{self.host.name}: preflight gave no answer in {PREFLIGHT_WAIT_S:.0f} s"
            )
        reason = sudo_failure(self.process.stderr)
        if reason:
            raise RemoteError(f"{self.host.name}: {reason}")
        try:
            return json.loads("\n".join(self._output))
        except ValueError:
            raise RemoteError(
                f"{self.host.name}: preflight failed: {self.failure_reason()}"
            ) from None

    # -- capture -----------------------------------------------------------------------
    def launch(self, bundle: AgentBundle, capture: CaptureSettings) -> None:
        """Start the capture agent (connecting first if not yet connected); it waits for
        the controller's "start"."""
        run_rel = f"{capture_dir_of(self.host) or CACHE_DIR + '/runs'}/{self.run_id}"
        # Host name in the file name too: the namespace lab's hosts share one filesystem.
        out_rel = f"{run_rel}/{self.host.name}-{self.state.iface}.pcapng"
        if self.live is not None:
            if self.conn is None:
                self.connect()
            assert self.conn is not None
            transport = self.conn.client.get_transport()
            self.capture_filter = without_connection(self.capture_filter, transport.sock)
            self.state.filter = self.capture_filter.expression if self.capture_filter else None
        args = CaptureArgs(
            iface=self.state.iface,
            output=out_rel,
            duration_s=capture.duration_s,
            count=capture.count,
            snaplen=capture.snaplen,
            sample_rate=capture.sample_rate,
            xdp_mode=capture.xdp_mode,
            direction=self.state.direction,
            wait_start=True,
            start_timeout_s=capture.start_timeout_s,
            stream=self.live is not None,
            xdp_hook=self.state.xdp_hook,
            process=self.state.process,
            pid=self.state.pid,
            comm=self.state.comm,
            container=self.state.container,
            filter_args=tuple(self.capture_filter.agent_args()) if self.capture_filter else (),
        )
        self.launch_agent(bundle, run_rel, capture_argv(args))
        self.state.remote_file = out_rel if out_rel.startswith("/") else f"{self.home}/{out_rel}"

    def wait_ready(self, timeout_s: float, interrupted: threading.Event) -> None:
        """Until the agent says "ready", ends, timeout_s pass or the run is interrupted
        (whichever comes first: the run's own wait for ready judges what it was)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready_event.wait(0.05):
            if self.process is None or self.process.finished.is_set():
                return
            if interrupted.is_set() or time.monotonic() > deadline:
                return

    def launch_agent(self, bundle: AgentBundle, folder_rel: str, args: list[str]) -> None:
        """Run the agent with one remote command (two if it must be uploaded), connecting
        first if not yet connected.

        Every SSH command costs a login shell on the host; before the capture window,
        where every host waits for the slowest, they add up.
        """
        if self.conn is None:
            self.connect()
        if not self._launch_once(bundle, folder_rel, args):
            self.state.move(Phase.UPLOADING)
            self._install_agent(bundle, None)
            if not self._launch_once(bundle, folder_rel, args):
                raise RemoteError(f"{self.host.name}: the agent is still missing after upload")

    def _launch_once(self, bundle: AgentBundle, folder_rel: str, args: list[str]) -> bool:
        assert self.conn is not None
        agent_rel = f"{CACHE_DIR}/{bundle.filename}"
        password = self.become_password
        command = [
            "sh",
            "-c",
            LAUNCH_SCRIPT,
            "xdpcap-launch",
            CACHE_DIR,
            folder_rel,
            agent_rel,
            bundle.sha256,
            self.host.become_user or "",
            "password" if password else "",
            *self._plain_agent_argv(agent_rel, *args),
        ]
        self.state.move(Phase.COMPILING)
        self.facts = {}
        self._output: list[str] = []
        self._launched = threading.Event()
        self.process = RemoteProcess(
            self.conn,
            quote_command(command),
            self._on_line,
            name=self.host.name,
            on_frame=self.live.frame if self.live is not None else None,
        )
        if not self._wait_launched(LAUNCH_WAIT_S):
            raise RemoteError(
                f"{self.host.name}: no answer from the host within {LAUNCH_WAIT_S:.0f} s"
            )
        home = self.facts.get("home", "")
        if self.facts.get("launch") not in ("ok", "need-upload") or not SAFE_PATH.match(home):
            self.process.wait(10)
            raise RemoteError(f"{self.host.name}: {self.failure_reason()}")
        self._learn_identity(self.facts.get("uid", ""), home)
        if self.facts["launch"] == "need-upload":
            self.process.wait(10)
            return False
        self.agent_path = f"{home}/{agent_rel}"
        if password is not None and self.needs_sudo:
            self.process.send_line(password)  # on stdin: never in a process list
        return True

    def _wait_launched(self, timeout_s: float) -> bool:
        """Until the launch script says how it went, or the command ended without saying
        (a connection or sshd lost mid-launch fails the host now, not after timeout_s)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while not self._launched.wait(0.05):
            if self.process.finished.is_set() or time.monotonic() > deadline:
                return self._launched.is_set() or self.process.finished.wait(1)
        return True

    def _plain_agent_argv(self, agent: str, *args: str) -> list[str]:
        """The agent's argv without sudo (the launch script adds it where needed)."""
        test_env = test_clock_env(self.host)
        argv = ["env", *test_env] if test_env else []
        return [*argv, interpreter_of(self.host), agent, *args]

    def _on_line(self, line: str) -> None:
        """One line from the host: the launch script's facts, else an agent event."""
        received_ns = time.time_ns()  # for a clock answer: as early as it can be read
        if line.startswith("xdpcap-fact "):
            key, _, value = line[len("xdpcap-fact ") :].partition("=")
            self.facts[key] = value
        elif line.startswith("xdpcap-launch "):
            self.facts["launch"] = line[len("xdpcap-launch ") :].strip()
            self._launched.set()
        else:
            event = parse_event(line)
            if event is None:
                self._output.append(line)  # the preflight's JSON report, line by line
            elif on_event(self, event, received_ns):
                self.changed.set()

    def send(self, word: str) -> None:
        if self.process is not None:
            self.process.send_line(word)

    def start(self, at_ns: int | None = None) -> None:
        """Open the agent's window (at `at_ns`, our wall clock, if given); the live
        stream waits for this host from now on."""
        if self.live is not None:
            self.live.started()
        self.start_sent_ns = time.time_ns()
        self.send("start" if at_ns is None else f"start {int(at_ns)}")

    def agent_finished_without_report(self) -> bool:
        return (
            self.process is not None
            and self.process.finished.is_set()
            and not self.done_event.is_set()
        )

    def failure_reason(self) -> str:
        process = self.process
        stderr = process.stderr.strip() if process else ""
        reason = sudo_failure(stderr)
        if reason:
            return reason
        if process is not None and process.exit_status is None and not self.start_sent_ns:
            # Before "start" the agent has nothing to keep: without its controller it
            # detaches and removes its empty file.
            return "the SSH connection was lost before its window opened; nothing captured"
        if process is not None and process.exit_status is None:
            return (
                "the SSH connection was lost mid-capture; the agent goes on to its "
                "deadline and keeps the file for `xdpcap collect`"
            )
        last = (
            stderr.splitlines()[-1]
            if stderr
            else f"agent exited with {process and process.exit_status}"
        )
        return last.removeprefix("xdpcap: ")

    # -- fetch -------------------------------------------------------------------------
    def fetch(
        self,
        into: Path,
        sftp: SFTPClient | None = None,
        before_delete: Callable[[], None] | None = None,
    ) -> Path:
        """Copy the capture home, check size and sha256, then delete the remote copy
        (after `before_delete`, if given, returns).

        `sftp` is a client opened during the capture window (take_standby), closed here;
        without one, the connection's own is opened now.
        """
        assert self.conn is not None and self.state.remote_file
        remote = self.state.remote_file
        local = into / f"{self.host.name}.pcapng"
        tmp = local.with_suffix(".pcapng.part")
        client = sftp if sftp is not None else self.conn.sftp()
        # A host that stops answering mid-transfer must not hang the run: no reply for
        # this long fails the fetch (socket.timeout is an OSError); the file stays there.
        client.get_channel().settimeout(FETCH_STALL_S)
        try:
            size = client.stat(remote).st_size
            client.get(remote, str(tmp))
        except OSError as exc:
            raise RemoteError(f"{self.host.name}: fetching {remote} failed: {exc}") from exc
        finally:
            if sftp is not None:
                sftp.close()
        local_sha = sha256_of(tmp)
        summary = self.state.summary or {}
        if summary.get("file_sha256"):
            # The agent hashed every byte it wrote: no second command on the host.
            expected_size, expected_sha = summary.get("file_size"), summary["file_sha256"]
        else:
            expected_size, expected_sha = size, self._remote_sha256(remote)
        if tmp.stat().st_size != expected_size or local_sha != expected_sha:
            raise RemoteError(
                f"{self.host.name}: {remote} changed or was damaged in transfer "
                "(size or sha256 differ); the remote copy is kept"
            )
        tmp.replace(local)
        self.state.sha256 = local_sha
        self.state.local_file = str(local)
        if before_delete is not None:
            before_delete()
        self._delete_remote(remote)
        return local

    def _delete_remote(self, remote: str) -> None:
        """Ask the waiting agent to delete its file; else one command does it."""
        process = self.process
        alive = process is not None and not process.finished.is_set()
        if alive and process.send_line("delete") and self.deleted.wait(HAND_OVER_WAIT_S):
            return
        # One command: the file, its summary, and the run folder once it is empty.
        run(
            self.conn,
            [
                "sh",
                "-c",
                'rm -f -- "$1" "$1.json"; rmdir -- "$2" 2>/dev/null; true',
                "xdpcap-cleanup",
                remote,
                self.run_dir,
            ],
            host=self.host,
        )

    def await_summary(self, wait_s: float, poll_s: float) -> dict[str, Any] | None:
        """Come back for a capture the agent finishes by itself (a lost connection, `xdpcap
        collect`): connect again as needed and wait, at most `wait_s`, for its summary.

        None if it never came; the last connection error if the host never answered.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if self.conn is None:
                    self.open()
                summary = self.read_remote_summary()
                error = None
            except RemoteError as exc:
                self.close()
                self.conn = None
                summary, error = None, exc
            if summary is not None:
                self.state.summary = summary
                return summary
            if time.monotonic() >= deadline:
                if error is not None:
                    raise error
                return None
            time.sleep(poll_s)

    def read_remote_summary(self) -> dict[str, Any] | None:
        assert self.conn is not None and self.state.remote_file
        status, out, _ = run(self.conn, ["cat", self.state.remote_file + ".json"], host=self.host)
        if status != 0:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return None

    def close(self) -> None:
        standby, self.standby = self.standby, None
        if standby is not None:
            standby.close()
        if self.process is not None:
            self.process.close()
        if self.conn is not None:
            self.conn.close()
        if standby is not None:
            standby.join()  # with the connection closed, a pending open fails at once
