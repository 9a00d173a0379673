"""The namespace lab for real: namespaces, bridge, veths, sshd, SSH with strict host keys.

Every lab here has a random name and a temporary state dir, so a user's own lab (default
name "lab") is never touched; every lab is downed in a finalizer even when a test fails,
and the finalizer checks that nothing of it is left in the kernel or on disk.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import re
import signal
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import fabric
import paramiko
import pytest
import yaml
from xdpcap.orchestrator.cli import lab as lab_cli
from xdpcap.orchestrator.lab.namespaces import FAIL_AFTER_ENV, Lab
from xdpcap.orchestrator.lab.system import LabError

HOSTS = 3


def _unique_name() -> str:
    # Lowercase letters only, so it is a valid lab name and far below the 15-byte interface
    # limit (xc<name>-br); "t" marks it as a test lab in `ip netns list`.
    return "t" + "".join(random.choices(string.ascii_lowercase, k=5))


def _leftovers(name: str, state_dir: Path) -> list[str]:
    """Everything of lab NAME still on this machine: namespaces, links, sshd processes, files."""
    found = []
    netns = subprocess.run(
        ["ip", "-j", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found += [
        n["name"]
        for n in json.loads(netns or "[]")
        if re.fullmatch(rf"xdpcap-{name}\d+", n["name"])
    ]
    links = subprocess.run(
        ["ip", "-j", "link", "show"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found += [ln["ifname"] for ln in json.loads(links) if ln["ifname"].startswith(f"xc{name}-")]
    found += [f"process {pid}" for pid in _processes_mentioning(str(state_dir))]
    if state_dir.exists():
        found += [str(p) for p in state_dir.rglob("*")] or [str(state_dir)]
    return found


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line names TEXT (zombies have an empty one: they hold nothing)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Lab factory: unique names, temp state dirs; downs each one and checks it left nothing."""
    labs: list[Lab] = []

    def make(hosts: int = HOSTS) -> Lab:
        name = _unique_name()
        lab = Lab(name=name, hosts=hosts, state_dir=tmp_path / name)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.down()
        assert _leftovers(lab.name, lab.state_dir) == []


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab shared by the read-only tests (building one takes well under a second)."""
    name = _unique_name()
    lab = Lab(name=name, hosts=HOSTS, state_dir=tmp_path_factory.mktemp("lab") / name)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    assert _leftovers(lab.name, lab.state_dir) == []


# ---- a lab that is up


def test_up_builds_three_hosts(lab: Lab) -> None:
    status = lab.status()
    assert status["up"], status["problems"]
    assert [h["name"] for h in status["hosts"]] == [f"{lab.name}{i}" for i in (1, 2, 3)]
    assert all(h["exists"] and h["sshd_alive"] for h in status["hosts"])
    v4 = ipaddress.ip_network("198.18.0.0/15")
    for host in lab.hosts:
        assert host.namespace == f"xdpcap-{host.name}"
        assert ipaddress.ip_address(host.ipv4) in v4
        assert host.ipv6.startswith("fc00:dead:cafe:")
        addrs = json.loads(lab.run_in(host, ["ip", "-j", "addr", "show", "eth0"]).stdout)
        local = {a["local"] for a in addrs[0]["addr_info"]}
        assert {host.ipv4, host.ipv6} <= local
        lo = json.loads(lab.run_in(host, ["ip", "-j", "link", "show", "lo"]).stdout)
        assert "UP" in lo[0]["flags"]


def test_sshd_listens_only_on_the_host_addresses(lab: Lab) -> None:
    for host in lab.hosts:
        out = lab.run_in(host, ["ss", "-Htln"]).stdout
        listening = {line.split()[3] for line in out.splitlines()}
        assert listening == {f"{host.ipv4}:22", f"[{host.ipv6}]:22"}


def test_inventory_file(lab: Lab) -> None:
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    hosts = inventory["lab"]["hosts"]
    assert list(hosts) == [h.name for h in lab.hosts]
    for host in lab.hosts:
        assert hosts[host.name] == {
            "ansible_host": host.ipv4,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(lab.key_path),
            "ansible_ssh_common_args": (
                f"-o UserKnownHostsFile={lab.known_hosts_path} -o StrictHostKeyChecking=yes"
            ),
            "ansible_python_interpreter": "/usr/bin/python3",
            "xdpcap_iface": "eth0",
        }


def _ssh(lab: Lab, address: str, known_hosts: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [
        "ssh",
        "-F",
        "/dev/null",  # no user or system ssh_config may change what is tested
        "-i",
        str(lab.key_path),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=5",
        *extra,
        f"root@{address}",
        "ip -br addr show eth0",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_openssh_client_with_strict_host_keys(lab: Lab, family: str) -> None:
    for host in lab.hosts:
        proc = _ssh(lab, getattr(host, family), lab.known_hosts_path)
        assert proc.returncode == 0, proc.stderr
        assert host.ipv4 in proc.stdout  # the command ran inside that host's namespace


def test_openssh_client_rejects_unknown_host_key(lab: Lab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = _ssh(lab, lab.hosts[0].ipv4, empty)
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_sshd_refuses_passwords(lab: Lab) -> None:
    proc = _ssh(lab, lab.hosts[0].ipv4, lab.known_hosts_path, "-o", "PubkeyAuthentication=no")
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr


def _fabric(lab: Lab, address: str, known_hosts: Path) -> fabric.Connection:
    conn = fabric.Connection(
        host=address,
        user="root",
        config=fabric.Config(overrides={"load_ssh_configs": False}),
        connect_timeout=5,
        connect_kwargs={
            "key_filename": str(lab.key_path),
            "look_for_keys": False,
            "allow_agent": False,
        },
    )
    # Fabric's default policy trusts any host key: reject unknown keys, know only the lab's.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client.load_host_keys(str(known_hosts))
    return conn


def test_fabric_with_known_hosts(lab: Lab) -> None:
    for host in lab.hosts:
        with _fabric(lab, host.ipv4, lab.known_hosts_path) as conn:
            result = conn.run("ip -br addr show eth0", hide=True, timeout=10, in_stream=False)
        assert host.ipv6 in result.stdout


def test_fabric_rejects_unknown_host_key(lab: Lab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    conn = _fabric(lab, lab.hosts[0].ipv4, empty)
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        conn.open()
    conn.close()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_hosts_ping_each_other(lab: Lab, family: str) -> None:
    for src in lab.hosts:
        for dst in lab.hosts:
            if src == dst:
                continue
            proc = lab.run_in(src, ["ping", "-n", "-c", "1", "-W", "2", getattr(dst, family)])
            assert proc.returncode == 0, f"{src.name} -> {dst.name}: {proc.stdout}"


def test_traffic_between_every_pair(lab: Lab) -> None:
    report = lab.traffic(1.0)
    pairs = HOSTS * (HOSTS - 1) * 2  # ordered pairs × (IPv4, IPv6)
    assert len(report["ping"]) == pairs and all(report["ping"].values())
    for kind in ("tcp", "udp"):
        assert len(report[kind]) == pairs
        assert all(count >= 1 for count in report[kind].values()), report[kind]
    # The echo servers and clients ended with the call.
    for host in lab.hosts:
        out = lab.run_in(host, ["ip", "netns", "pids", host.namespace]).stdout
        pids = [int(p) for p in out.split()]
        assert all(
            b"sshd" in Path(f"/proc/{pid}/cmdline").read_bytes()
            for pid in pids
            if Path(f"/proc/{pid}").exists()
        )


def test_up_again_is_harmless(lab: Lab) -> None:
    before = lab.status()
    assert lab.up() == lab.inventory_path
    after = lab.status()
    assert [h["sshd_pid"] for h in after["hosts"]] == [h["sshd_pid"] for h in before["hosts"]]


# ---- down, also after a broken up


def test_down_removes_everything(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    lab.up()
    # A stray process in a namespace must not keep the namespace (or the test) alive.
    lab.run_in(lab.hosts[1], ["sh", "-c", "sleep 300 >/dev/null 2>&1 &"])
    assert _leftovers(lab.name, lab.state_dir)
    lab.down()
    assert _leftovers(lab.name, lab.state_dir) == []
    lab.down()  # twice is harmless
    with pytest.raises(LabError, match="not up"):
        lab.require_up()


def test_two_labs_coexist(make_lab: Callable[..., Lab]) -> None:
    first, second = make_lab(hosts=2), make_lab(hosts=2)
    first.up()
    second.up()
    assert first.hosts[0].ipv4 != second.hosts[0].ipv4
    assert first.status()["up"] and second.status()["up"]
    first.down()
    assert second.status()["up"]


@pytest.mark.parametrize("step", ["state", "bridge", "host2", "sshd"])
def test_down_after_failed_up(
    make_lab: Callable[..., Lab], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    lab = make_lab()
    monkeypatch.setenv(FAIL_AFTER_ENV, step)
    with pytest.raises(LabError, match=f"after step {step}"):
        lab.up()
    monkeypatch.delenv(FAIL_AFTER_ENV)
    assert not lab.status()["up"]
    if step == "host2":
        # Half a lab: two hosts with sshd, no third host.
        status = lab.status()
        assert [h["exists"] for h in status["hosts"]] == [True, True, False]
    lab.down()
    assert _leftovers(lab.name, lab.state_dir) == []


# Runs `up` in a child that SIGKILLs itself after the second host is made: a real crash,
# no Python cleanup at all.
_CRASHING_UP = """
import os, signal, sys
from xdpcap.orchestrator.lab.namespaces import Lab
def crash(self, step):
    if step == "host2":
        os.kill(os.getpid(), signal.SIGKILL)
Lab._checkpoint = crash
Lab(sys.argv[1], 3, sys.argv[2]).up()
"""


@pytest.mark.parametrize("keep_state", [True, False], ids=["with-state", "state-lost"])
def test_down_after_killed_up(make_lab: Callable[..., Lab], keep_state: bool) -> None:
    lab = make_lab()
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_UP, lab.name, str(lab.state_dir)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert Path("/run/netns", f"xdpcap-{lab.name}2").exists()
    assert _processes_mentioning(str(lab.state_dir))  # the sshds outlived their parent
    if not keep_state:
        # Without state.json, down must find everything by name alone.
        (lab.state_dir / "state.json").unlink()
    lab.down()
    assert _leftovers(lab.name, lab.state_dir) == []


def test_up_repairs_after_killed_up(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    subprocess.run(
        [sys.executable, "-c", _CRASHING_UP, lab.name, str(lab.state_dir)],
        capture_output=True,
        timeout=60,
    )
    assert lab.up() == lab.inventory_path
    assert lab.status()["up"]
    proc = _ssh(lab, lab.hosts[2].ipv4, lab.known_hosts_path)
    assert proc.returncode == 0, proc.stderr


def test_context_manager_always_downs(tmp_path: Path) -> None:
    name = _unique_name()
    with pytest.raises(RuntimeError), Lab(name, 2, tmp_path / name) as lab:
        assert lab.status()["up"]
        raise RuntimeError("a failing test body")
    assert _leftovers(name, tmp_path / name) == []


def test_context_manager_cleans_a_failed_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _unique_name()
    monkeypatch.setenv(FAIL_AFTER_ENV, "host1")
    with pytest.raises(LabError), Lab(name, 2, tmp_path / name):
        pass
    assert _leftovers(name, tmp_path / name) == []


def test_cli_up_status_inventory_down(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="xdpcap")
    lab_cli.register(parser.add_subparsers(dest="command", required=True))
    name = _unique_name()
    common = ["--name", name, "--state-dir", str(tmp_path / name)]

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(["lab", *argv, *common])
        code = args.func(args)
        return code, capsys.readouterr().out

    try:
        code, out = run("up", "--hosts", "2")
        assert code == 0 and out.strip() == str(tmp_path / name / "inventory.yml")
        assert run("inventory") == (0, out)
        code, out = run("status", "--json")
        assert code == 0 and json.loads(out)["up"]
        assert run("traffic", "--seconds", "0")[0] == 0
    finally:
        assert run("down")[0] == 0
    assert run("status")[0] == 1
    with pytest.raises(LabError, match="not up"):
        run("inventory")
    assert _leftovers(name, tmp_path / name) == []


def test_run_in_rejects_unknown_host(lab: Lab) -> None:
    with pytest.raises(LabError, match="no host"):
        lab.run_in("nosuchhost", ["true"])
