"""Everything the controller does on one host: prepare, run the agent, fetch.

One `RemoteHost` per inventory host. Its methods raise RemoteError with a one-line,
host-named reason; the run turns that into the host's result and carries on with the
others.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric import Connection
from paramiko import SFTPClient

from ..agent import validate
from ..agent.filter.spec import CompiledFilter
from ..agent.protocol import parse_event
from .agent_bundle import AgentBundle
from .channel import RemoteProcess
from .clock import ClockOffset, ClockProbe, measure_rounds
from .errors import RemoteError, UsageError
from .filters import without_connection
from .inventory import Host
from .ssh import SshSettings, quote_command, run, sudo_failure
from .ssh import connect as ssh_connect
from .standby import Standby
from .stream import LiveHost

CACHE_DIR = ".cache/xdpcap"  # relative to the SSH user's home
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]*$")
_SAFE_INTERPRETER = re.compile(r"^[A-Za-z0-9_./+-]+$")
TEST_SKEW_VAR = "xdpcap_test_clock_skew_ns"
TEST_RATE_VAR = "xdpcap_test_clock_rate_ppm"
# Where a test clock's drift starts from: one instant for every agent of this controller,
# so a host's capture and its clock probe present the same drifting clock.
TEST_EPOCH_NS = time.time_ns()
TEST_HOOKS_ENV = "XDPCAP_TEST_HOOKS"
CAPTURE_DIR_VAR = "xdpcap_capture_dir"
LAUNCH_WAIT_S = 60.0
# The run's one command per host: set up the folders, report facts, check the cached
# agent against its hash and exec it (through sudo when not root) — or ask for an
# upload. Values arrive as positional parameters, never spliced into the script:
# $1 cache folder, $2 run folder, $3 agent, $4 its sha256, $5 become user ("" = root),
# $6 "password" when a sudo password follows on stdin; then the agent's argv.
# Every process it starts delays the agent: the clock's sync state, needed only after
# the capture, is the agent's to ask for (its "sync" event), once its window is open.
_LAUNCH_SCRIPT = """set -e
umask 077
cache=$1 rundir=$2 agent=$3 sha=$4 become=$5 password=$6
shift 6
mkdir -p -m 700 "$cache" "$cache/runs" "$rundir"
chmod 700 "$cache" "$cache/runs"
uid=$(id -u)
echo "xdpcap-fact uid=$uid"
echo "xdpcap-fact home=$(pwd)"
sum=$(sha256sum "$agent" 2>/dev/null) || true
if [ "${sum%% *}" != "$sha" ]; then
    echo "xdpcap-launch need-upload"
    exit 0
fi
echo "xdpcap-launch ok"
if [ "$uid" = 0 ] && { [ -z "$become" ] || [ "$become" = root ]; }; then
    exec "$@"
fi
if [ "$password" = password ]; then
    exec sudo -S -p '' -u "${become:-root}" -- "$@"
fi
exec sudo -n -u "${become:-root}" -- "$@"
"""
_AGENT_FILE = re.compile(r"^xdpcap-agent-[0-9a-f]{16}\.pyz$")
HAND_OVER_WAIT_S = 10.0
CLOCK_ROUND_TIMEOUT_S = 5.0
FETCH_STALL_S = 60.0
PREFLIGHT_WAIT_S = 120.0


KEEP_AGENTS = 4  # agent versions kept on a host (another version may still be running)


def _prune_old_agents(sftp: SFTPClient, cache_dir: str, keep: str) -> None:
    """After an upload: remove all but the newest KEEP_AGENTS bundles from the host's
    cache, so that upgrades do not pile up there. An agent imports from its bundle while
    it runs, so the newest few stay for runs of other versions still under way.
    Best effort: the cache stays as it was on any error."""
    try:
        entries = [e for e in sftp.listdir_attr(cache_dir) if _AGENT_FILE.match(e.filename)]
        entries.sort(key=lambda e: e.st_mtime or 0, reverse=True)
        for entry in entries[KEEP_AGENTS:]:
            if entry.filename != keep:
                sftp.remove(f"{cache_dir}/{entry.filename}")
    except OSError:
        pass


@dataclass(frozen=True)
class CaptureSettings:
    duration_s: float
    count: int | None
    snaplen: int
    sample_rate: int
    xdp_mode: str
    start_timeout_s: float


@dataclass
class HostState:
    """What the live table and the final report show for one host."""

    name: str
    address: str
    iface: str
    state: str = "pending"
    reason: str | None = None
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    seen: int = 0
    t_ready_s: float | None = None
    t_capturing_s: float | None = None
    window_start_ns: int | None = None
    summary: dict[str, Any] | None = None
    clock: ClockOffset | None = None  # as measured: host clock − controller clock
    clock_shift_ns: int | None = None  # what the merge subtracted (see clock.corrections)
    local_file: str | None = None
    remote_file: str | None = None
    sha256: str | None = None
    filter: str | None = None  # the capture filter expression this host ran
    direction: str = "inout"  # -Q: in, out or inout
    xdp_hook: str | None = None  # --xdp-hook: the pinned hook map of the host's XDP program

    @property
    def ok(self) -> bool:
        return self.state == "done" and self.local_file is not None and not self.partial

    @property
    def partial(self) -> str | None:
        return (self.summary or {}).get("partial_reason")

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "clock"}
        if self.clock:
            data["clock"] = {
                "offset_ns": self.clock.offset_ns,
                "error_ns": self.clock.error_ns,
                "sync_state": self.clock.sync_state,
            }
        return data


def interpreter_of(host: Host) -> str:
    python = host.python_interpreter or "python3"
    if not _SAFE_INTERPRETER.match(python):
        raise UsageError(f"{host.name}: ansible_python_interpreter {python!r} is not a plain path")
    return python


def capture_dir_of(host: Host) -> str | None:
    """Host var xdpcap_capture_dir: where captures are written on the host (a big disk)."""
    value = host.vars.get(CAPTURE_DIR_VAR)
    if value is None:
        return None
    path = str(value).rstrip("/")
    if not _SAFE_PATH.match(path) or "/../" in path + "/":
        raise UsageError(f"{host.name}: {CAPTURE_DIR_VAR} {value!r} must be a plain absolute path")
    return path


def test_skew_of(host: Host, var: str = TEST_SKEW_VAR) -> int | None:
    """A test-only clock hook (skew in ns, or rate in ppm): it falsifies a host's
    timestamps, so a stray variable in a production inventory must not do that
    silently — only with XDPCAP_TEST_HOOKS=1."""
    value = host.vars.get(var)
    if value is None:
        return None
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        raise UsageError(
            f"{host.name}: {var} shifts the host's timestamps and is for xdpcap's "
            f"own tests only (set {TEST_HOOKS_ENV}=1 to allow it)"
        )
    try:
        return int(str(value))
    except ValueError:
        raise UsageError(f"{host.name}: {var} must be an integer") from None


def test_clock_env(host: Host) -> list[str]:
    """The agent's environment for the test-only clock hooks the host asks for (checked
    by test_skew_of): a skew, and a drift from one epoch shared by capture and probe."""
    env: list[str] = []
    skew = test_skew_of(host)
    if skew is not None:
        env.append(f"XDPCAP_TEST_CLOCK_SKEW_NS={skew}")
    rate = test_skew_of(host, TEST_RATE_VAR)
    if rate is not None:
        env.append(f"XDPCAP_TEST_CLOCK_RATE_PPB={rate * 1000}")
        env.append(f"XDPCAP_TEST_CLOCK_EPOCH_NS={TEST_EPOCH_NS}")
    return env


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
    _clock_answers: queue.Queue = field(default_factory=queue.Queue)
    start_sent_ns: int = 0  # when "start" was sent (controller clock)
    round_trip_ns: int | None = None  # a line to the ready agent and its answer

    # -- preparation -------------------------------------------------------------------
    def connect(self) -> None:
        """Open the verified SSH connection; nothing runs on the host yet."""
        self.state.state = "connecting"
        self.conn = ssh_connect(self.host, self.settings)

    def open(self) -> None:
        """Connect, and learn who we are and where home is (reconnect, collect)."""
        self.connect()
        status, out, err = run(self.conn, ["sh", "-c", "id -u && pwd"], host=self.host)
        lines = out.split()
        if status != 0 or len(lines) < 2 or not _SAFE_PATH.match(lines[1]):
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

    def measure_round_trip(self) -> None:
        """Time one "clock" exchange with the ready agent: how long a line takes to reach
        it and come back, agent's wake-up included (the start's lead follows the slowest
        host's). Nothing on failure: the run's fixed lead is used instead."""
        try:
            sent, _remote, received = self._clock_round_trip()
        except RemoteError:
            return
        self.round_trip_ns = received - sent

    def _clock_round_trip(self) -> tuple[int, int, int]:
        """One "clock" line to the capture agent and its answer: (sent, remote, received)."""
        assert self.process is not None
        answers = self._clock_answers
        while not answers.empty():  # a late answer to an earlier round
            answers.get_nowait()
        sent = time.time_ns()
        if not self.process.send_line("clock"):
            raise RemoteError(f"{self.host.name}: the clock probe failed: the channel is closed")
        try:
            remote, received = answers.get(timeout=CLOCK_ROUND_TIMEOUT_S)
        except queue.Empty:
            raise RemoteError(f"{self.host.name}: the clock probe got no answer") from None
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
        capture_dir = capture_dir_of(self.host) or f"{self.home}/{CACHE_DIR}/runs"
        return f"{capture_dir}/{self.run_id}"

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
        _prune_old_agents(sftp, self.cache_dir, keep=bundle.filename)

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
        args = _capture_args(
            capture,
            self.state.iface,
            out_rel,
            self.state.direction,
            self.capture_filter,
            self.state.xdp_hook,
        )
        if self.live is not None:
            args.append("--stream")
        self.launch_agent(bundle, run_rel, args)
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
            self.state.state = "uploading"
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
            _LAUNCH_SCRIPT,
            "xdpcap-launch",
            CACHE_DIR,
            folder_rel,
            agent_rel,
            bundle.sha256,
            self.host.become_user or "",
            "password" if password else "",
            *self._plain_agent_argv(agent_rel, *args),
        ]
        self.state.state = "compiling"
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
        if not self._launched.wait(LAUNCH_WAIT_S) and not self.process.finished.wait(1):
            raise RemoteError(
                f"{self.host.name}: no answer from the host within {LAUNCH_WAIT_S:.0f} s"
            )
        home = self.facts.get("home", "")
        if self.facts.get("launch") not in ("ok", "need-upload") or not _SAFE_PATH.match(home):
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

    def _plain_agent_argv(self, agent: str, *args: str) -> list[str]:
        """The agent's argv without sudo (the launch script adds it where needed)."""
        test_env = test_clock_env(self.host)
        argv = ["env", *test_env] if test_env else []
        return [*argv, interpreter_of(self.host), agent, *args]

    def _on_line(self, line: str) -> None:
        received_ns = time.time_ns()  # for a clock answer: as early as it can be read
        if line.startswith("xdpcap-fact "):
            key, _, value = line[len("xdpcap-fact ") :].partition("=")
            self.facts[key] = value
            return
        if line.startswith("xdpcap-launch "):
            self.facts["launch"] = line[len("xdpcap-launch ") :].strip()
            self._launched.set()
            return
        event = parse_event(line)
        if event is None:
            self._output.append(line)  # the preflight's JSON report, line by line
            return
        kind = event["event"]
        state = self.state
        now = time.monotonic() - self.started
        if kind == "ready":
            state.state = "ready"
            state.t_ready_s = now
            self.ready_event.set()
        elif kind == "capturing":
            state.state = "capturing"
            state.t_capturing_s = now
            state.window_start_ns = int(event["window_start_ns"])
            if self.live is not None:
                armed = int(event.get("armed_ns", state.window_start_ns))
                self.live.capturing(armed, self.start_sent_ns, time.time_ns())
        elif kind == "interface":
            if self.live is not None:
                self.live.describe(event)
        elif kind == "progress":
            state.packets = int(event.get("packets", 0))
            state.bytes = int(event.get("bytes", 0))
            state.lost = int(event.get("lost", 0))
            state.seen = int(event.get("seen", 0))
        elif kind == "done":
            state.summary = event
            state.packets = int(event.get("written", 0))
            state.bytes = int(event.get("bytes_written", 0))
            state.lost = int(event.get("lost", 0))
            state.seen = int(event.get("seen", 0))
            state.state = "captured"
            if self.live is not None:
                self.live.done(event)
            self.done_event.set()
        elif kind == "deleted":
            self.deleted.set()
        elif kind == "sync":
            self.facts["sync"] = str(event.get("state", ""))
        elif kind == "clock":
            self._clock_answers.put((int(event["realtime_ns"]), received_ns))
            return  # nothing for the live table
        elif kind == "error":
            state.state = "failed"
            state.reason = str(event.get("message"))
            if self.live is not None:
                self.live.done(None)
            self.done_event.set()
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


def _capture_args(
    capture: CaptureSettings,
    iface: str,
    output: str,
    direction: str,
    capture_filter: CompiledFilter | None,
    xdp_hook: str | None = None,
) -> list[str]:
    args = [
        "capture",
        "--json-events",
        "--wait-start",
        "-i",
        iface,
        "-w",
        output,
        "--duration",
        repr(capture.duration_s),
        "--snaplen",
        str(capture.snaplen),
        "--sample-rate",
        str(capture.sample_rate),
        "--xdp-mode",
        capture.xdp_mode,
        "--direction",
        validate.direction(direction),
        "--start-timeout",
        repr(capture.start_timeout_s),
    ]
    if capture.count is not None:
        args += ["--count", str(capture.count)]
    if xdp_hook:
        args += ["--xdp-hook", xdp_hook]
    if capture_filter is not None:
        # The checked programs, then the expression as the trailing words (the agent
        # checks the programs again: it trusts nothing that arrives over the wire).
        args += capture_filter.agent_args()
    return args


def sha256_of(path: Path) -> str:
    """A file's sha256, read a MiB at a time (the fetch's check, and the collection's)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):  # flat memory for any size
            digest.update(chunk)
    return digest.hexdigest()


def validate_iface_for(host: Host, default_iface: str | None) -> str:
    iface = host.iface or default_iface
    if not iface:
        raise UsageError(f"{host.name}: no interface: pass --iface or set xdpcap_iface")
    return validate.interface_name(iface)
