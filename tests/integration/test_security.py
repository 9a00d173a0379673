"""Security of `xdpcap run` on the namespace lab: host keys, the remote work folder, secrets.

The lab hosts share this machine's filesystem, so the remote work folder of every host is
this machine's /root/.cache/xdpcap, shared with every other lab: the checks look only at
what belongs to their own run (its run id) or hold for every file there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from xdpcap.orchestrator.inventory.load import load_inventory
from xdpcap.orchestrator.remote.bundle import build_agent_bundle

from .lab_helpers import inventory_with, private_lab, xdpcap

REMOTE_CACHE = Path("/root/.cache/xdpcap")  # the lab hosts' ~/.cache/xdpcap (root's home)
REMOTE_RUNS = REMOTE_CACHE / "runs"
CANARY = "S3cr3t-Canary-123"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with private_lab("sec", tmp_path_factory.mktemp("seclab"), hosts=2) as lab:
        yield lab


def _run(inventory: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return xdpcap(
        "run",
        "-i",
        str(inventory),
        "--duration",
        "2",
        "--runs-dir",
        str(tmp_path / "runs"),
        *extra,
    )


def _run_json(result: subprocess.CompletedProcess, tmp_path: Path) -> dict:
    """run.json of the one run made under tmp_path/runs (written even when nothing merged)."""
    (path,) = (tmp_path / "runs").glob("*/run.json")
    return json.loads(path.read_text())


def _states(run: dict) -> dict[str, str]:
    return {h["name"]: h["state"] for h in run["hosts"]}


def _host_line(result: subprocess.CompletedProcess, name: str) -> str:
    """The final report's line for one host (`name: state: reason; ...`); the first one
    may be glued to the end of the live table (see test_report_lines_start_a_line)."""
    lines = [
        line[line.index(f"{name}: ") :]
        for line in result.stderr.splitlines()
        if f"{name}: " in line
    ]
    assert lines, result.stderr
    return lines[-1]


def _change_host_key(lab, name: str) -> None:
    """Give host NAME a new host key: stop its sshd, make a new key, start sshd with the
    command line `lab up` uses, and wait for its banner."""
    host = lab.host(name)
    hdir = lab.host_dir(host)
    key = hdir / "ssh_host_ed25519_key"
    old_key = key.with_suffix(".pub").read_text()
    pid = lab.sshd_pid(name)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while lab.sshd_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.sshd_pid(name) is None
    for path in (key, key.with_suffix(".pub")):
        path.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"new {name}", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    subprocess.run(
        [
            *("ip", "netns", "exec", host.namespace, "/usr/sbin/sshd"),
            *("-f", str(hdir / "sshd_config"), "-E", str(hdir / "sshd.log")),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    deadline = time.monotonic() + 15
    while not _answers_ssh(host.ipv4):
        assert time.monotonic() < deadline, f"sshd of {name} did not come back"
        time.sleep(0.05)
    assert key.with_suffix(".pub").read_text() != old_key


def _answers_ssh(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _public_key(lab, name: str) -> str:
    """'ssh-ed25519 AAAA...' of the host's current key."""
    words = (lab.host_dir(lab.host(name)) / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{words[0]} {words[1]}"


# --------------------------------------------------------------------------- host keys


def test_changed_host_key_refuses_that_host(tmp_path: Path) -> None:
    with private_lab("key", tmp_path, hosts=3) as lab:
        changed = lab.hosts[2].name
        _change_host_key(lab, changed)
        result = _run(lab.inventory_path, tmp_path)
        assert result.returncode == 3, result.stderr
        assert "Traceback" not in result.stderr
        line = _host_line(result, changed)
        assert "failed" in line and "host key CHANGED" in line, line
        states = _states(_run_json(result, tmp_path))
        assert states[changed] == "failed"
        assert [s for n, s in states.items() if n != changed] == ["done", "done"]


def test_unknown_host_key_needs_accept_new_and_changed_stays_refused(tmp_path: Path) -> None:
    with private_lab("new", tmp_path, hosts=2) as lab:
        known_hosts = tmp_path / "empty_known_hosts"
        known_hosts.write_text("")
        common_args = shlex.join(
            ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        )
        inventory = inventory_with(
            lab, tmp_path, {h.name: {"ansible_ssh_common_args": common_args} for h in lab.hosts}
        )
        first, second = (h.name for h in lab.hosts)

        refused = _run(inventory, tmp_path / "1")
        assert refused.returncode == 1, refused.stderr
        for name in (first, second):
            line = _host_line(refused, name)
            assert "known_hosts" in line and "--accept-new-host-keys" in line, line
        assert known_hosts.read_text() == ""

        learned = _run(inventory, tmp_path / "2", "--accept-new-host-keys")
        assert learned.returncode == 0, learned.stderr
        entries = known_hosts.read_text().splitlines()
        for host in lab.hosts:
            assert f"{host.ipv4} {_public_key(lab, host.name)}" in entries, entries

        before = known_hosts.read_text()
        _change_host_key(lab, second)
        changed = _run(inventory, tmp_path / "3", "--accept-new-host-keys")
        assert changed.returncode == 3, changed.stderr
        assert "host key CHANGED" in _host_line(changed, second)
        assert _states(_run_json(changed, tmp_path / "3")) == {first: "done", second: "failed"}
        assert known_hosts.read_text() == before  # the new key was not learned


def test_inventory_cannot_turn_host_key_checking_off(lab, tmp_path: Path) -> None:
    """`StrictHostKeyChecking=no` in ansible_ssh_common_args is not obeyed: only
    --accept-new-host-keys learns keys, and never changed ones."""
    known_hosts = tmp_path / "empty_known_hosts"
    known_hosts.write_text("")
    common_args = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=no"
    inventory = inventory_with(
        lab, tmp_path, {h.name: {"ansible_ssh_common_args": common_args} for h in lab.hosts}
    )
    result = _run(inventory, tmp_path)
    assert result.returncode == 1, result.stderr
    for host in lab.hosts:
        assert "--accept-new-host-keys" in _host_line(result, host.name)
    assert known_hosts.read_text() == ""


def test_report_lines_start_a_line(tmp_path: Path) -> None:
    with private_lab("line", tmp_path, hosts=1) as lab:
        host = lab.hosts[0].name
        known_hosts = tmp_path / "empty_known_hosts"
        known_hosts.write_text("")
        common_args = f"-o UserKnownHostsFile={known_hosts}"
        inventory = inventory_with(lab, tmp_path, {host: {"ansible_ssh_common_args": common_args}})
        result = _run(inventory, tmp_path)
        assert result.returncode == 1
        assert any(line.startswith(f"{host}: failed: ") for line in result.stderr.splitlines())


# --------------------------------------------------------------------------- work folder


class _RemoteWatcher:
    """Records, while a run goes on, the mode and owner of every run folder and file that
    appears under the remote runs folder (shared by all labs: filtered by run id later)."""

    def __init__(self) -> None:
        self.seen: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _RemoteWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                for path in [*REMOTE_RUNS.glob("*"), *REMOTE_RUNS.glob("*/*")]:
                    with contextlib.suppress(OSError):
                        st = path.lstat()
                        self.seen[path] = (stat.S_IMODE(st.st_mode), st.st_uid)
            time.sleep(0.02)

    def of_run(self, run_id: str) -> dict[Path, tuple[int, int]]:
        folder = REMOTE_RUNS / run_id
        return {p: v for p, v in self.seen.items() if p == folder or p.parent == folder}


def test_remote_work_folder_is_private_and_cleaned(lab, tmp_path: Path) -> None:
    with _RemoteWatcher() as watcher:
        result = _run(lab.inventory_path, tmp_path)
    assert result.returncode == 0, result.stderr
    run = _run_json(result, tmp_path)
    run_id = run["run_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", run_id), run_id

    assert stat.S_IMODE(REMOTE_CACHE.stat().st_mode) == 0o700
    agents = list(REMOTE_CACHE.glob("xdpcap-agent-*.pyz"))
    assert agents
    for agent in agents:
        assert stat.S_IMODE(agent.stat().st_mode) == 0o600, agent

    seen = watcher.of_run(run_id)
    folder = REMOTE_RUNS / run_id
    assert folder in seen, sorted(watcher.seen)  # the watcher did see the run
    captures = [p for p in seen if p.suffix == ".pcapng"]
    assert len(captures) == len(lab.hosts), seen
    for path, (mode, uid) in seen.items():
        assert uid == 0, path  # the SSH user (root here)
        assert mode == (0o700 if path == folder else 0o600), (path, oct(mode))

    # Fetched, verified, and the remote copies deleted: nothing of this run is left.
    assert not folder.exists(), list(folder.iterdir())
    for host in run["hosts"]:
        assert host["state"] == "done"
        assert not Path(host["remote_file"]).exists()
        assert hashlib.sha256(Path(host["local_file"]).read_bytes()).hexdigest() == host["sha256"]


def test_remote_run_ids_differ_between_runs(lab, tmp_path: Path) -> None:
    ids = set()
    for n in range(2):
        result = _run(lab.inventory_path, tmp_path / str(n))
        assert result.returncode == 0, result.stderr
        ids.add(_run_json(result, tmp_path / str(n))["run_id"])
    assert len(ids) == 2


def test_remote_runs_folder_is_private(lab, tmp_path: Path) -> None:
    result = _run(lab.inventory_path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(REMOTE_RUNS.stat().st_mode) == 0o700


def test_check_leaves_no_fixed_remote_folder(lab) -> None:
    fixed = REMOTE_RUNS / "check"
    with contextlib.suppress(OSError):
        fixed.rmdir()  # an empty leftover of an earlier check; never anything else
    with _RemoteWatcher() as watcher:
        result = xdpcap("check", "-i", str(lab.inventory_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert fixed not in watcher.seen and not fixed.exists()


def test_a_damaged_agent_is_replaced_before_it_runs(lab, tmp_path: Path) -> None:
    bundle = build_agent_bundle()
    agent = REMOTE_CACHE / bundle.filename
    # Same name, wrong content: as if the upload had been cut short or tampered with.
    # Replaced atomically so a concurrent run elsewhere never reads half a file.
    tmp = agent.with_name(agent.name + ".damaged.tmp")
    tmp.write_bytes(b"#!/usr/bin/env python3\nraise SystemExit('tampered')\n")
    tmp.chmod(0o600)
    tmp.replace(agent)
    result = _run(lab.inventory_path, tmp_path)
    if build_agent_bundle().sha256 != bundle.sha256:
        pytest.skip("the agent's code changed while the test ran (shared working tree)")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(agent.read_bytes()).hexdigest() == bundle.sha256
    assert stat.S_IMODE(agent.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- secrets


class _ProcessWatcher:
    """Every argv on this machine (the lab hosts' processes included: namespaces share the
    pid namespace), polled while a command runs; keeps those that contain the canary."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _ProcessWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        # What `ps -eo args` shows, read from /proc directly: a poll takes milliseconds
        # instead of a fork and exec, so short-lived ssh, sudo and agent processes are seen.
        canary = CANARY.encode()
        while not self._stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):
                    args = cmdline.read_bytes()
                    if canary in args:
                        self.hits.append(args.replace(b"\0", b" ").decode(errors="replace"))
            self.polls += 1
            time.sleep(0.01)


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _assert_no_canary(result: subprocess.CompletedProcess) -> None:
    assert CANARY not in result.stdout, result.stdout
    assert CANARY not in result.stderr, result.stderr


def test_become_password_never_shown(tmp_path: Path) -> None:
    with private_lab("pw", tmp_path, hosts=3) as lab:
        good, bad_iface, unreachable = (h.name for h in lab.hosts)
        secret_vars = {"ansible_become": True, "ansible_become_password": CANARY}
        inventory = inventory_with(
            lab,
            tmp_path,
            {
                good: secret_vars,
                bad_iface: {**secret_vars, "xdpcap_iface": "nosuch0"},
                unreachable: {"ansible_become": True, "ansible_become_pass": CANARY},
            },
        )
        os.kill(lab.sshd_pid(unreachable), signal.SIGTERM)

        with _ProcessWatcher() as processes:
            result = _run(inventory, tmp_path)
            listed = xdpcap("run", "-i", str(inventory), "--list-hosts")
            checked = xdpcap("check", "-i", str(inventory))
        assert processes.polls > 10
        assert processes.hits == []

        assert result.returncode == 3, result.stderr
        assert "nosuch0" in _host_line(result, bad_iface)
        assert "cannot connect" in _host_line(result, unreachable)
        for output in (result, listed, checked):
            _assert_no_canary(output)
        assert checked.returncode != 0
        files = _files_under(tmp_path / "runs")
        assert any(p.name == "run.json" for p in files)
        for path in files:
            assert CANARY.encode() not in path.read_bytes(), path
        for host in lab.hosts:
            assert CANARY not in (lab.host_dir(host) / "sshd.log").read_text()

        loaded = load_inventory(inventory)
        assert loaded.hosts[good].become_password == CANARY  # read, and kept out of sight:
        assert CANARY not in repr(loaded)
        for host in loaded.hosts.values():
            assert CANARY not in repr(host) and CANARY not in str(host)
            assert CANARY not in repr(host.vars)


def test_key_passphrase_never_shown(lab, tmp_path: Path) -> None:
    """A passphrase-protected key (xdpcap has no way to ask for it): the host fails with
    the reason, nothing hangs, and the passphrase shows nowhere."""
    key = tmp_path / "encrypted_key"
    key.write_bytes(lab.key_path.read_bytes())
    key.chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", "", "-N", CANARY, "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    first = lab.hosts[0].name
    inventory = inventory_with(lab, tmp_path, {first: {"ansible_ssh_private_key_file": str(key)}})
    with _ProcessWatcher() as processes:
        result = _run(inventory, tmp_path)
    assert processes.hits == []
    assert result.returncode == 3, result.stderr
    assert "encrypted" in _host_line(result, first)
    _assert_no_canary(result)
    for path in _files_under(tmp_path / "runs"):
        assert CANARY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "extra",
    [
        {"ansible_port": 0},
        {"ansible_become": "maybe"},
        {"xdpcap_iface": "eth0;id"},
        {"ansible_host": "-oProxyCommand=id"},
    ],
    ids=["port", "become", "iface", "address"],
)
def test_inventory_errors_never_show_the_password(lab, tmp_path: Path, extra: dict) -> None:
    first = lab.hosts[0].name
    secret = {"ansible_become_password": CANARY, **extra}
    data = yaml.safe_load(lab.inventory_path.read_text())
    data["lab"]["hosts"][first].update(secret)
    data["lab"]["vars"] = {"ansible_become_password": CANARY}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(data))
    result = _run(inventory, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    _assert_no_canary(result)
