"""Faults survived, on the namespace lab with real processes and real SSH (issue 6).

Each test prints what was kept (run with -s to see it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .agent_helpers import attach_foreign_program, capinfos, tshark_fields, xdp_program
from .lab_helpers import inventory_with, pings_between_all, private_lab, xdpcap
from .veth import in_ns, sh


@pytest.fixture
def lab(tmp_path: Path):
    with private_lab("flt", tmp_path) as lab:
        yield lab


def _start_run(inventory: Path, runs: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xdpcap.orchestrator",
            "run",
            "-i",
            str(inventory),
            "--runs-dir",
            str(runs),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_capturing(lab, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Every host has the sampler attached; then give the start a moment to arrive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progs = [xdp_program(h.namespace, "eth0") for h in lab.hosts]
        if all(p and p["name"] == "xdpcap_sampler" for p in progs):
            time.sleep(2)
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    _out, err = proc.communicate(timeout=30)
    raise AssertionError(f"the sampler was never attached on every host: {err}")


def _processes(namespace: str, needle: str) -> list[int]:
    found = []
    for pid in sh("ip", "netns", "pids", namespace, check=False).stdout.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(pid))
    return found


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    print(err)  # what was kept, per host
    return proc.returncode, out, err


def _run_json(out: str) -> dict:
    merged = Path(out.strip().splitlines()[-1])
    return json.loads((merged.parent / "run.json").read_text())


# Where the lab's agents write (the lab's hosts share this machine's home).
RUNS_ON_HOSTS = Path.home() / ".cache/xdpcap/runs"


def _run_folders() -> set[Path]:
    return set(RUNS_ON_HOSTS.glob("*")) if RUNS_ON_HOSTS.is_dir() else set()


def _remove_empty_run_folders(before: set[Path]) -> None:
    """The run folders a test's interrupted or refused run left, empty (the agents keep
    a folder others of the run may share): the test removes them."""
    for folder in _run_folders() - before:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _no_xdp_anywhere(lab) -> None:
    for host in lab.hosts:
        assert xdp_program(host.namespace, "eth0") is None, host.name


def test_connection_cut_mid_capture_is_refetched(lab, tmp_path: Path) -> None:
    cut = lab.hosts[1]
    with pings_between_all(lab, seconds=20):
        proc = _start_run(lab.inventory_path, tmp_path / "runs", "--duration", "8")
        _wait_capturing(lab, proc)
        sessions = _processes(cut.namespace, "@notty")  # per-connection sshd, not the listener
        assert sessions
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)
        code, out, err = _finish(proc)
    assert code == 0, err
    host = next(h for h in _run_json(out)["hosts"] if h["name"] == cut.name)
    assert host["state"] == "done"
    summary = host["summary"]
    assert summary["stopped_by"] == "duration"  # the agent kept going to its own deadline
    assert summary["written"] > 0 and summary["unaccounted"] == 0
    assert summary["window_end_ns"] - summary["window_start_ns"] >= 7.9e9
    _no_xdp_anywhere(lab)


def test_sshd_killed_then_collect(lab, tmp_path: Path) -> None:
    dead = lab.hosts[2]
    with pings_between_all(lab, seconds=20):
        proc = _start_run(
            lab.inventory_path, tmp_path / "runs", "--duration", "6", "--reconnect-wait", "3"
        )
        _wait_capturing(lab, proc)
        for pid in _processes(dead.namespace, "sshd"):
            os.kill(pid, signal.SIGKILL)
        code, out, err = _finish(proc)
    assert code == 3, err
    assert "xdpcap collect" in err
    run_dir = Path(out.strip().splitlines()[-1]).parent
    _no_xdp_anywhere(lab)  # the agent detached at its deadline, connection or not

    lab.start_sshd(dead.name)
    collected = xdpcap("collect", str(run_dir))
    print(collected.stderr)
    assert collected.returncode == 0, collected.stderr
    merged = Path(collected.stdout.strip().splitlines()[-1])
    names = {row[0] for row in tshark_fields(merged, "frame.interface_name")}
    assert f"{dead.name}:eth0" in names
    assert "Strict time order:   True" in capinfos(merged)
    host = next(
        h for h in json.loads((run_dir / "run.json").read_text())["hosts"] if h["name"] == dead.name
    )
    assert host["state"] == "done" and host["summary"]["unaccounted"] == 0


def test_agent_killed_leaves_no_program(lab, tmp_path: Path) -> None:
    victim = lab.hosts[0]
    proc = _start_run(lab.inventory_path, tmp_path / "runs", "--duration", "8")
    _wait_capturing(lab, proc)
    agents = _processes(victim.namespace, "xdpcap-agent")
    assert agents
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    assert xdp_program(victim.namespace, "eth0") is None  # the kernel dropped the BPF link
    code, out, err = _finish(proc)
    assert code == 3, err
    assert victim.name in err
    hosts = {h["name"]: h for h in _run_json(out)["hosts"]}
    assert hosts[victim.name]["state"] == "failed"
    _no_xdp_anywhere(lab)
    # What the killed agent had written stays on the host (for `xdpcap collect`); the
    # lab's hosts share this machine's home, so the test removes it.
    left = Path(hosts[victim.name]["remote_file"])
    assert left.exists()
    left.unlink()
    left.parent.rmdir()


def test_host_lost_during_the_launch_fails_at_once(lab, tmp_path: Path) -> None:
    """A host whose sshd and agent die before it is ready fails at once, honestly named;
    the others' window opens without waiting for it (not after --ready-timeout)."""
    victim = lab.hosts[1]
    # The victim's Python starts slowly: its launch is surely under way when it dies.
    slow = tmp_path / "slow-python3"
    slow.write_text('#!/bin/sh\nsleep 30\nexec python3 "$@"\n')
    slow.chmod(0o755)
    inventory = inventory_with(
        lab, tmp_path, {victim.name: {"ansible_python_interpreter": str(slow)}}
    )
    with pings_between_all(lab, seconds=20):
        started = time.monotonic()
        proc = _start_run(inventory, tmp_path / "runs", "--duration", "3", "--ready-timeout", "60")
        deadline = time.monotonic() + 60
        while not _processes(victim.namespace, "slow-python3") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes(victim.namespace, "slow-python3"), "the victim's launch never began"
        for needle in ("sshd", "slow-python3", "sleep 30"):
            for pid in _processes(victim.namespace, needle):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        code, out, err = _finish(proc)
        took = time.monotonic() - started
    assert code == 3, err
    run = _run_json(out)
    hosts = {h["name"]: h for h in run["hosts"]}
    assert hosts[victim.name]["state"] == "failed"
    assert "lost before its window opened; nothing captured" in hosts[victim.name]["reason"]
    assert "mid-capture" not in err
    for host in lab.hosts:
        if host.name != victim.name:
            assert hosts[host.name]["state"] == "done", hosts[host.name]
            assert hosts[host.name]["summary"]["written"] > 0
    assert run["start"]["held_by"] == []  # nobody waited for the lost host
    assert took < 60  # the run did not sit out the ready timeout for it
    _no_xdp_anywhere(lab)


def test_ctrl_c_during_the_launch_leaves_nothing(lab, tmp_path: Path) -> None:
    """Interrupted while the hosts are being prepared: the run ends at once (130), and no
    host keeps a program, an agent or a capture file."""
    folders_before = _run_folders()
    proc = _start_run(lab.inventory_path, tmp_path / "runs", "--duration", "30")
    assert proc.stderr is not None
    for line in proc.stderr:
        if "starting on" in line:
            break
    time.sleep(0.3)  # connects and launches under way
    proc.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    code, _out, err = _finish(proc, timeout=60)
    assert code == 130, err
    assert "interrupted" in err
    assert time.monotonic() - interrupted_at < 10  # not after the launches' timeouts
    deadline = time.monotonic() + 10  # the agents see their SSH channel close
    while time.monotonic() < deadline and any(
        _processes(h.namespace, "xdpcap-agent") for h in lab.hosts
    ):
        time.sleep(0.2)
    assert not any(_processes(h.namespace, "xdpcap-agent") for h in lab.hosts)
    _no_xdp_anywhere(lab)
    names = {f"{h.name}-eth0.pcapng" for h in lab.hosts}
    left = [p for p in RUNS_ON_HOSTS.rglob("*") if p.name in names]
    assert left == []
    _remove_empty_run_folders(folders_before)


def test_ctrl_c_stops_every_agent_and_merges(lab, tmp_path: Path) -> None:
    with pings_between_all(lab, seconds=30):
        proc = _start_run(lab.inventory_path, tmp_path / "runs", "--duration", "60")
        _wait_capturing(lab, proc)
        proc.send_signal(signal.SIGINT)
        code, out, err = _finish(proc)
    assert code == 0, err
    run = _run_json(out)
    assert run["interrupted"] is True
    for host in run["hosts"]:
        assert host["state"] == "done"
        assert host["summary"]["stopped_by"] == "controller"
        assert host["summary"]["written"] > 0
    _no_xdp_anywhere(lab)


def test_disk_full_keeps_a_valid_partial_file(lab, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    full = lab.hosts[0]
    # `ip netns exec` gave the host's sshd a mount namespace of its own: mount in there.
    in_sshd = ("nsenter", "-t", str(lab.sshd_pid(full.name)), "-m")
    sh(*in_sshd, "mount", "-t", "tmpfs", "-o", "size=3m,mode=0777", "tmpfs", str(small))
    try:
        inventory = inventory_with(lab, tmp_path, {full.name: {"xdpcap_capture_dir": str(small)}})
        proc = _start_run(inventory, tmp_path / "runs", "--duration", "6")
        _wait_capturing(lab, proc)
        in_ns(
            lab.hosts[1].namespace, "ping", "-f", "-c", "5000", "-s", "1400", full.ipv4, check=False
        )
        code, out, err = _finish(proc)
    finally:
        sh(*in_sshd, "umount", str(small), check=False)
    assert code == 3, err
    host = next(h for h in _run_json(out)["hosts"] if h["name"] == full.name)
    assert "No space left" in host["summary"]["partial_reason"]
    assert host["summary"]["written"] > 0
    assert host["summary"]["unaccounted"] == 0  # what did not fit is counted as lost
    assert host["summary"]["lost"] > 0
    local = Path(host["local_file"])
    assert (
        int(capinfos(local).split("Number of packets:")[1].split()[0]) == host["summary"]["written"]
    )
    assert "partial" in err
    _no_xdp_anywhere(lab)


def test_a_host_with_a_foreign_program_is_captured_after_it(lab, tmp_path: Path) -> None:
    """A host whose interface runs another XDP program (with no xdpcap hook) is no
    longer refused: inbound goes to tc ingress after it, and its IDB says so."""
    busy = lab.hosts[1]
    foreign = attach_foreign_program(busy.namespace, "eth0")
    try:
        code, out, err = _finish(
            _start_run(lab.inventory_path, tmp_path / "runs", "--duration", "2")
        )
        assert code == 0, err
        merged = Path(out.strip().splitlines()[-1])
        descriptions = dict(
            tshark_fields(merged, "frame.interface_name", "frame.interface_description")
        )
        after = f"after XDP program foreign_pass (id {foreign['id']}) at"
        for host in lab.hosts:
            (description,) = [d for n, d in descriptions.items() if n.startswith(f"{host.name}:")]
            assert (after in description) == (host.name == busy.name), description
        hosts = {h["name"]: h for h in _run_json(out)["hosts"]}
        assert hosts[busy.name]["summary"]["inbound"].startswith("inbound after XDP program")
        still = xdp_program(busy.namespace, "eth0")
        assert still is not None and still["id"] == foreign["id"]
    finally:
        in_ns(busy.namespace, "ip", "link", "set", "dev", "eth0", "xdp", "off")


def test_second_run_on_same_hosts_is_refused(lab, tmp_path: Path) -> None:
    folders_before = _run_folders()
    first = _start_run(lab.inventory_path, tmp_path / "runs1", "--duration", "12")
    _wait_capturing(lab, first)
    second = xdpcap(
        "run",
        "-i",
        str(lab.inventory_path),
        "--duration",
        "2",
        "--runs-dir",
        str(tmp_path / "runs2"),
    )
    print(second.stderr)
    assert second.returncode == 1, second.stderr
    assert second.stderr.count("already running") >= len(lab.hosts)
    # Refused before writing: the refused agents left no file in the run folder the
    # launch had made.
    (refused,) = (tmp_path / "runs2").glob("*/run.json")
    run_id = json.loads(refused.read_text())["run_id"]
    assert list((RUNS_ON_HOSTS / run_id).glob("*")) == []
    _remove_empty_run_folders(folders_before)
    code, out, err = _finish(first)
    assert code == 0, err  # the first run is not mixed up with the second
    assert all(h["state"] == "done" for h in _run_json(out)["hosts"])
