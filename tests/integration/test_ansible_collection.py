"""The xdpcap.capture collection end to end: ansible-galaxy build and install, then
ansible-playbook against the namespace lab (real sshd, real SSH, real XDP), and the agent's
--start-at on two lab hosts."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .agent_helpers import capinfos, start_agent, tshark_fields, wait_for_event, xdp_program
from .lab_helpers import (
    BECOME_PASSWORD,
    echo_pairs,
    inventory_with,
    pings_between_all,
    private_lab,
    sudo_user,
)

REPO = Path(__file__).parents[2]
COLLECTION = REPO / "ansible_collections" / "xdpcap" / "capture"
BIN = Path(sys.executable).parent
DURATION_S = 8


def _ansible_tool(name: str) -> Path:
    tool = BIN / name
    if not tool.exists():
        reason = f"{name} is not installed beside {sys.executable} (make setup installs it)"
        if os.environ.get("XDPCAP_REQUIRE_INTEGRATION") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return tool


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with private_lab("ans", tmp_path_factory.mktemp("anslab")) as lab:
        yield lab


@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory) -> dict[str, str]:
    """The collection built and installed into a private collections path; Ansible's own
    files (home, temporary and async folders, on the controller and the hosts) kept under a
    temporary folder too. host_key_checking stays at Ansible's default: on."""
    work = tmp_path_factory.mktemp("ansible")
    galaxy = _ansible_tool("ansible-galaxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(work / "collections"),
        ANSIBLE_HOME=str(work / "home"),
        ANSIBLE_LOCAL_TEMP=str(work / "local-tmp"),
        ANSIBLE_REMOTE_TMP=str(work / "remote-tmp"),
        ANSIBLE_ASYNC_DIR=str(work / "async"),
        ANSIBLE_NOCOLOR="1",
        # Ansible's default SSH multiplexing, with masters that go soon after the tests.
        ANSIBLE_SSH_ARGS="-C -o ControlMaster=auto -o ControlPersist=10s",
    )
    built = subprocess.run(
        [galaxy, "collection", "build", str(COLLECTION), "--output-path", str(work / "dist")],
        capture_output=True, text=True, timeout=120, env=env, cwd=work,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    tarball = next((work / "dist").glob("xdpcap-capture-*.tar.gz"))
    installed = subprocess.run(
        [galaxy, "collection", "install", str(tarball), "-p", str(work / "collections")],
        capture_output=True, text=True, timeout=120, env=env, cwd=work,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert (work / "collections/ansible_collections/xdpcap/capture/playbooks/capture.yml").exists()
    return env


def _playbook(env: dict[str, str], inventory: Path, cwd: Path, *extra: str):
    return subprocess.run(
        [
            _ansible_tool("ansible-playbook"), "-i", str(inventory), "xdpcap.capture.capture",
            "-e", f"xdpcap_duration={DURATION_S}", *extra,
        ],
        capture_output=True, text=True, timeout=600, env=env, cwd=cwd,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _recap(stdout: str) -> dict[str, str]:
    """PLAY RECAP lines: host -> 'ok=.. changed=.. unreachable=.. failed=..'."""
    recap = stdout.split("PLAY RECAP", 1)[1]
    return {
        line.split()[0]: " ".join(line.split()[2:]) for line in recap.splitlines() if " : " in line
    }


def _packets_by_pcapng(path: Path) -> tuple[list[str], list[tuple[int, int]]]:
    """Interface names and (interface, timestamp ns) of every packet, read by python-pcapng,
    an independent reader."""
    import pcapng

    names: list[str] = []
    packets: list[tuple[int, int]] = []
    with path.open("rb") as f:
        for block in pcapng.FileScanner(f):
            if isinstance(block, pcapng.blocks.InterfaceDescription):
                assert block.options.get("if_tsresol") == b"\x09"  # nanoseconds
                names.append(block.options.get("if_name"))
            elif isinstance(block, pcapng.blocks.EnhancedPacket):
                ts = (block.timestamp_high << 32) | block.timestamp_low
                packets.append((block.interface_id, ts))
    return names, packets


def _play_folders() -> set[str]:
    """The play's private folders on the hosts (the lab's hosts share this file system)."""
    return set(glob.glob("/tmp/xdpcap-*/xdpcap-agent.pyz"))


def _no_agent_left(lab, folders_before: set[str]) -> None:
    for host in lab.hosts:
        assert xdp_program(host.namespace, "eth0") is None, host.name
    # Compared with before the play: another run's leftovers are not this play's.
    assert _play_folders() - folders_before == set()


def test_playbook_captures_every_host_and_merges(lab, ansible_env, tmp_path: Path) -> None:
    folders_before = _play_folders()
    common_args = {h["ansible_ssh_common_args"] for h in _lab_hosts(lab).values()}
    assert all("StrictHostKeyChecking=yes" in args for args in common_args)
    assert "ANSIBLE_HOST_KEY_CHECKING" not in ansible_env

    merged = tmp_path / "merged.pcapng"  # given relative, as a user would, from the cwd
    with pings_between_all(lab, seconds=120):
        result = _playbook(
            ansible_env, lab.inventory_path, tmp_path, "-e", "xdpcap_output=merged.pcapng"
        )
    assert result.returncode == 0, result.stdout + result.stderr
    recap = _recap(result.stdout)
    assert set(recap) == {h.name for h in lab.hosts}
    assert all("failed=0" in line and "unreachable=0" in line for line in recap.values())

    # One merged file, one interface per host:iface, in strict time order (capinfos and
    # python-pcapng agree).
    info = capinfos(merged)
    assert "Strict time order:   True" in info
    expected = {f"{h.name}:eth0" for h in lab.hosts}
    assert {row[0] for row in tshark_fields(merged, "frame.interface_name")} == expected
    names, packets = _packets_by_pcapng(merged)
    assert sorted(names) == sorted(expected)
    stamps = [ts for _iface, ts in packets]
    assert stamps == sorted(stamps)
    assert {iface for iface, _ts in packets} == set(range(len(names)))

    # Every ping's request before its reply, across hosts.
    pairs, orphans = echo_pairs(merged)
    assert len(pairs) >= 6 * 10 * (DURATION_S - 2)
    assert all(request < reply for request, reply, *_ in pairs)
    assert orphans <= 6

    # Every host accounted, from each agent module's summary.
    report = json.loads((tmp_path / "merged-hosts" / "run.json").read_text())
    assert {h["name"] for h in report["hosts"]} == {h.name for h in lab.hosts}
    assert report["excluded"] == {}
    written = 0
    for host in report["hosts"]:
        s = host["summary"]
        assert s["seen"] == (
            s["filtered_out"] + s["written"] + s["lost"] + s["not_sampled"] + s["past_count"]
        ), host["name"]
        assert s["unaccounted"] == 0 and s["stopped_by"] == "duration"
        assert s["written"] > 0
        written += s["written"]
    assert len(packets) == written == report["packets"]
    # One absolute start for all: the windows open together, whatever Ansible's batches.
    starts = [h["summary"]["window_start_ns"] for h in report["hosts"]]
    assert max(starts) - min(starts) < 50_000_000
    _no_agent_left(lab, folders_before)


def test_failed_host_is_reported_and_the_others_merged(lab, ansible_env, tmp_path: Path) -> None:
    folders_before = _play_folders()
    first, broken, third = (h.name for h in lab.hosts)
    inventory = inventory_with(lab, tmp_path, {broken: {"xdpcap_iface": "nosuch0"}})
    merged = tmp_path / "merged.pcapng"
    # A filter with spaces (JSON extra vars): compiled on the controller, one word to the agent.
    extra = json.dumps({"xdpcap_output": str(merged), "xdpcap_filter": "icmp or arp"})
    with pings_between_all(lab, seconds=120):
        result = _playbook(ansible_env, inventory, tmp_path, "-e", extra)
    assert result.returncode == 2, result.stdout + result.stderr  # Ansible: a host failed
    recap = _recap(result.stdout)
    assert "failed=1" in recap[broken]
    assert "failed=0" in recap[first] and "failed=0" in recap[third]
    assert f"fatal: [{broken}]: FAILED!" in result.stdout
    assert "nosuch0" in result.stdout

    names = {row[0] for row in tshark_fields(merged, "frame.interface_name")}
    assert names == {f"{first}:eth0", f"{third}:eth0"}
    assert "Strict time order:   True" in capinfos(merged)
    assert tshark_fields(merged, "frame.number", display_filter="not (icmp or arp)") == []
    report = json.loads((tmp_path / "merged-hosts" / "run.json").read_text())
    assert sorted(h["name"] for h in report["hosts"]) == sorted([first, third])
    for host in report["hosts"]:
        s = host["summary"]
        assert s["filter"] == "icmp or arp" and s["unaccounted"] == 0
        assert s["filtered_out"] > 0 and s["written"] > 0  # the play's own SSH is filtered out
    _no_agent_left(lab, folders_before)


def test_a_user_who_is_not_root_becomes_root_with_a_password(
    lab, ansible_env, tmp_path: Path
) -> None:
    """Logged in as an unprivileged user, the play becomes root through sudo with a
    password (ansible_become_password): the agent attaches as root, the file comes back."""
    folders_before = _play_folders()
    merged = tmp_path / "merged.pcapng"
    with sudo_user(lab, nopasswd=False) as user:
        inventory = inventory_with(
            lab,
            tmp_path,
            {
                h.name: {
                    "ansible_user": user,
                    "ansible_become": True,
                    "ansible_become_password": BECOME_PASSWORD,
                }
                for h in lab.hosts
            },
        )
        # Ansible's temporary files on the hosts where the login user can write them.
        env = {**ansible_env, "ANSIBLE_REMOTE_TMP": "~/.ansible/tmp"}
        with pings_between_all(lab, seconds=120):
            result = _playbook(env, inventory, tmp_path, "-e", f"xdpcap_output={merged}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert BECOME_PASSWORD not in result.stdout + result.stderr
        # Ansible logged in as that user: its temporary folder is in the user's home.
        assert Path(f"/home/{user}/.ansible/tmp").is_dir()
    assert {row[0] for row in tshark_fields(merged, "frame.interface_name")} == {
        f"{h.name}:eth0" for h in lab.hosts
    }
    report = json.loads((tmp_path / "merged-hosts" / "run.json").read_text())
    for host in report["hosts"]:
        s = host["summary"]
        assert s["unaccounted"] == 0 and s["written"] > 0, host["name"]
    _no_agent_left(lab, folders_before)


def test_unknown_host_key_is_refused(lab, ansible_env, tmp_path: Path) -> None:
    """The lab's hosts are trusted only through the known_hosts the lab wrote: with an empty
    one, Ansible (host_key_checking on) refuses to connect."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    args = f"-o UserKnownHostsFile={empty} -o StrictHostKeyChecking=yes"
    inventory = inventory_with(
        lab, tmp_path, {h.name: {"ansible_ssh_common_args": args} for h in lab.hosts}
    )
    # A control folder of its own: a master connection left by an earlier test would be
    # reused without any host key check.
    env = {**ansible_env, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp")}
    result = subprocess.run(
        [_ansible_tool("ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.ping"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 4, result.stdout + result.stderr  # every host unreachable
    assert result.stdout.count("UNREACHABLE!") == len(lab.hosts)
    assert "Host key verification failed" in result.stdout


def test_start_at_opens_both_windows_at_the_given_time(lab, tmp_path: Path) -> None:
    start_at = time.time_ns() + 8_000_000_000  # room for two compiles on a small machine
    agents = []
    for host in lab.hosts[:2]:
        output = str(tmp_path / f"{host.name}.pcapng")
        args = ["-i", "eth0", "-w", output, "--duration", "1", "--start-at", str(start_at)]
        agents.append(start_agent(host.namespace, *args))
    try:
        starts = [wait_for_event(agent, "capturing")["window_start_ns"] for agent in agents]
        for agent in agents:
            wait_for_event(agent, "done")
            assert agent.wait(timeout=60) == 0
    finally:
        for agent in agents:
            agent.kill()
            agent.communicate(timeout=30)
    # The program opens the window at the instant itself, however each agent is scheduled.
    for start in starts:
        assert 0 <= start - start_at < 5_000_000, start - start_at  # within a few ms
    assert abs(starts[0] - starts[1]) < 5_000_000


def _lab_hosts(lab) -> dict[str, dict]:
    return next(iter(yaml.safe_load(lab.inventory_path.read_text()).values()))["hosts"]
