"""`xdpcap run` end to end on the namespace lab: real sshd, real SSH, real XDP."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
from pathlib import Path

import paramiko
import pytest
from rich.console import Console
from xdpcap.orchestrator.inventory.load import load_inventory
from xdpcap.orchestrator.remote.host import CaptureSettings, RemoteHost
from xdpcap.orchestrator.remote.ssh import SshSettings
from xdpcap.orchestrator.remote.standby import Standby
from xdpcap.orchestrator.run.results import RunResult
from xdpcap.orchestrator.run.runner import Run, RunOptions

from .agent_helpers import capinfos, read_headers, tshark_fields, xdp_program
from .lab_helpers import (
    delayed_udp_echo,
    echo_pairs,
    inventory_with,
    pings_between_all,
    private_lab,
    udp_between_all,
    udp_echo_pairs,
    xdpcap,
)
from .xdp_owner import bpffs_in, build_coop, coop_attached, xdp_filter_dropping

SKEW_NS = 250_000_000


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with private_lab("run", tmp_path_factory.mktemp("runlab")) as lab:
        yield lab


def _merged_path(result) -> Path:
    assert result.stdout.strip(), result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def _run_json(merged: Path) -> dict:
    return json.loads((merged.parent / "run.json").read_text())


def _run_in_process(lab, tmp_path: Path) -> RunResult:
    """A 2 s `xdpcap run` on the lab in this process, so a test can patch its parts."""
    hosts = list(load_inventory(str(lab.inventory_path)).hosts.values())
    capture = CaptureSettings(2.0, None, 256, 1, "auto", 120.0)
    options = RunOptions(
        iface="eth0",
        capture=capture,
        runs_dir=tmp_path / "runs",
        inventory_path=str(lab.inventory_path),  # for `xdpcap collect`
    )
    return Run(hosts, options, SshSettings(), Console(file=io.StringIO())).execute()


def test_run_merges_every_host_in_order(lab, tmp_path: Path) -> None:
    with pings_between_all(lab, seconds=40):
        result = xdpcap(
            "run",
            "-i",
            str(lab.inventory_path),
            "--duration",
            "6",
            "--runs-dir",
            str(tmp_path / "runs"),
        )
    assert result.returncode == 0, result.stderr
    merged = _merged_path(result)
    info = capinfos(merged)
    assert "Strict time order:   True" in info
    names = {row[0] for row in tshark_fields(merged, "frame.interface_name")}
    assert names == {f"{h.name}:eth0" for h in lab.hosts}

    pairs, orphans = echo_pairs(merged)
    assert len(pairs) >= 6 * 10  # every ordered pair of 3 hosts, for several seconds
    iface_of = {h.ipv4: f"{h.name}:eth0" for h in lab.hosts}
    for request, reply, request_iface, reply_iface, pinger, pinged in pairs:
        assert request < reply, (request, reply)
        # XDP sees what arrives: the request on the pinged host, the reply on the pinger.
        assert (request_iface, reply_iface) == (iface_of[pinged], iface_of[pinger])
    assert orphans <= 6  # at most one per host pair, at the window's edges

    run = _run_json(merged)
    for host in run["hosts"]:
        assert host["state"] == "done"
        assert host["summary"]["unaccounted"] == 0
        assert Path(host["local_file"]).exists()
        assert host["t_capturing_s"] is not None
    # The synchronised start: no window opened before every host was ready, and every
    # window opened and closed at the same instant (the lab's hosts share one clock).
    last_ready = max(h["t_ready_s"] for h in run["hosts"])
    assert all(h["t_capturing_s"] > last_ready for h in run["hosts"])
    for edge in ("window_start_ns", "window_end_ns"):
        times = [h["summary"][edge] for h in run["hosts"]]
        assert max(times) - min(times) < 1_000_000, (edge, times)
    # Scheduled from the measured delivery of one line to every ready agent and back,
    # not the fixed 0.2 s, and still every "start T" arrived before T.
    # Three hosts: all launched at once, under the default --forks.
    assert run["launch"]["forks"] == 50 and run["launch"]["peak_at_once"] == len(run["hosts"])
    start = run["start"]
    assert start["delivery_ms"] is not None
    assert start["lead_s"] == pytest.approx(max(0.05, 2 * start["delivery_ms"] / 1000), abs=1e-3)
    assert start["late"] == []
    assert all(h["summary"]["window_start_ns"] == start["at_ns"] for h in run["hosts"])


def test_each_ping_is_seen_leaving_and_arriving(lab, tmp_path: Path) -> None:
    """The default direction is inout: every echo request and reply between two lab
    hosts is in the merged file twice — outbound on its sender, then inbound on its
    receiver (the lab's hosts share one clock, so that order is the truth)."""
    with pings_between_all(lab, seconds=40):
        result = xdpcap(
            "run", "-i", str(lab.inventory_path), "--duration", "4",
            "--runs-dir", str(tmp_path / "runs"), "icmp",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    merged = _merged_path(result)
    iface_of = {h.ipv4: f"{h.name}:eth0" for h in lab.hosts}
    rows = tshark_fields(
        merged, "frame.number", "frame.interface_name", "frame.packet_flags_direction",
        "icmp.type", "icmp.ident", "icmp.seq", "ip.src", "ip.dst",
        display_filter="icmp.type == 8 || icmp.type == 0",
    )  # fmt: skip
    copies: dict[tuple, list[tuple[int, str, str]]] = {}
    for number, iface, direction, *packet in rows:
        copies.setdefault(tuple(packet), []).append((int(number), iface, direction))
    complete = 0
    for (_kind, _ident, _seq, src, dst), seen in copies.items():
        if len(seen) == 1:  # cut by the window's edge on one side
            continue
        complete += 1
        assert [(iface, direction) for _n, iface, direction in seen] == [
            (iface_of[src], "0x00000002"),  # leaving its sender
            (iface_of[dst], "0x00000001"),  # then arriving at its receiver
        ], seen
    assert complete >= 6 * 2 * 20  # 6 ordered pairs, requests and replies, 10/s for 4 s
    for host in _run_json(merged)["hosts"]:
        assert set(host["summary"]["directions"]) == {"in", "out"}
        assert host["summary"]["unaccounted"] == 0


def test_clock_skew_is_corrected(lab, tmp_path: Path) -> None:
    skewed = lab.hosts[1].name
    inventory = inventory_with(lab, tmp_path, {skewed: {"xdpcap_test_clock_skew_ns": SKEW_NS}})
    with delayed_udp_echo(lab, seconds=12):
        result = xdpcap(
            "run", "-i", str(inventory), "--duration", "5", "--runs-dir", str(tmp_path / "runs")
        )
    assert result.returncode == 0, result.stderr
    merged = _merged_path(result)
    run = _run_json(merged)
    offsets = {h["name"]: h["clock"]["offset_ns"] for h in run["hosts"]}
    assert abs(offsets[skewed] - SKEW_NS) < 20_000_000
    pairs = udp_echo_pairs(merged)
    assert len(pairs) >= 6 * 10
    assert all(request < reply for request, reply in pairs)

    uncorrected = tmp_path / "uncorrected.pcapng"
    files = [h["local_file"] for h in run["hosts"]]
    merge = xdpcap("merge", *files, "-w", str(uncorrected), "--no-clock-correction")
    assert merge.returncode == 0, merge.stderr
    pairs = udp_echo_pairs(uncorrected)
    inverted = [p for p in pairs if p[0] > p[1]]
    # Pings towards the skewed host: their requests carry its +250 ms and land after
    # the replies; a third of all pairs (2 of the 6 directions).
    assert len(inverted) >= len(pairs) // 4, (len(inverted), len(pairs))


@pytest.mark.parametrize("standby", ["ready", "never ready"])
def test_fetch_sessions_open_during_the_capture(lab, tmp_path: Path, monkeypatch, standby) -> None:
    """The SFTP session opens during the window; when that does not work, the fetch opens
    its own. The clock offset comes from the capture agent itself (no probe session).
    Either way: every host fetched with a clock offset, and no thread or channel left
    open."""
    channels: list[paramiko.Channel] = []
    open_session = paramiko.Transport.open_session

    def recorded(self, *args, **kwargs):
        channels.append(open_session(self, *args, **kwargs))
        return channels[-1]

    monkeypatch.setattr(paramiko.Transport, "open_session", recorded)
    taken: list[object] = []
    take = RemoteHost.take_standby
    monkeypatch.setattr(
        RemoteHost, "take_standby", lambda self: taken.append(take(self)) or taken[-1]
    )
    if standby == "never ready":
        monkeypatch.setattr(Standby, "_open", lambda self: None)

    result = _run_in_process(lab, tmp_path)

    assert result.exit_code == 0
    assert all(s.state == "done" and s.clock is not None for s in result.states)
    expected = len(lab.hosts) if standby == "ready" else 0
    assert sum(1 for sftp in taken if sftp) == expected
    # One session per host for the agent, and one for SFTP unless the standby had it.
    assert len(channels) == 2 * len(lab.hosts)
    assert not [t for t in threading.enumerate() if t.name.startswith("standby-")]
    assert channels and all(c.closed for c in channels)


def test_ctrl_c_during_the_fetch_merges_what_arrived(lab, tmp_path: Path, monkeypatch) -> None:
    """A Ctrl-C that lands while the captures are being fetched: the fetched hosts are
    merged, the others keep their capture for `collect`, which then completes the run."""
    interrupted_host = lab.hosts[0].name
    fetch = RemoteHost.fetch

    def fetch_or_interrupt(self, *args, **kwargs):
        if self.host.name == interrupted_host:
            raise KeyboardInterrupt
        return fetch(self, *args, **kwargs)

    monkeypatch.setattr(RemoteHost, "fetch", fetch_or_interrupt)
    result = _run_in_process(lab, tmp_path)
    monkeypatch.undo()

    assert result.exit_code == 3
    assert oct(result.run_dir.stat().st_mode & 0o777) == oct(0o700)  # captures are private
    states = {s.name: s for s in result.states}
    assert "collect" in states[interrupted_host].reason
    assert all(states[h.name].ok for h in lab.hosts[1:])
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["interrupted"] is True
    names = {row[0] for row in tshark_fields(result.merged, "frame.interface_name")}
    assert f"{interrupted_host}:eth0" not in names

    collected = xdpcap("collect", str(result.run_dir), "--wait", "20")
    assert collected.returncode == 0, collected.stderr
    run = json.loads((result.run_dir / "run.json").read_text())
    assert all(h["state"] == "done" for h in run["hosts"]), run["hosts"]


def test_a_capture_damaged_on_its_way_is_refused_and_kept(lab, tmp_path, monkeypatch) -> None:
    """A per-host file that changed between the agent's hash and the controller's copy:
    that host is reported with the reason, its remote copy stays for a look, and the
    other hosts are merged."""
    damaged_host = lab.hosts[0].name
    fetch = RemoteHost.fetch

    def damage_then_fetch(self, *args, **kwargs):
        if self.host.name == damaged_host:
            with open(self.state.remote_file, "r+b") as f:  # the lab shares our filesystem
                f.seek(40)
                f.write(b"\xde\xad\xbe\xef")
        return fetch(self, *args, **kwargs)

    monkeypatch.setattr(RemoteHost, "fetch", damage_then_fetch)
    result = _run_in_process(lab, tmp_path)

    assert result.exit_code == 3
    states = {s.name: s for s in result.states}
    damaged = states[damaged_host]
    assert "damaged in transfer" in damaged.reason and damaged.local_file is None
    remote = Path(damaged.remote_file)
    assert remote.exists()  # kept on the host
    for leftover in (remote, remote.with_name(remote.name + ".json")):
        leftover.unlink(missing_ok=True)
    remote.parent.rmdir()
    assert all(states[h.name].ok for h in lab.hosts[1:])
    assert result.merged is not None and result.merged.exists()


def test_limit_and_list_hosts(lab, tmp_path: Path) -> None:
    first, second, third = (h.name for h in lab.hosts)
    listed = xdpcap(
        "run", "-i", str(lab.inventory_path), "--limit", f"all:!{second}", "--list-hosts"
    )
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and third in listed.stdout and second not in listed.stdout

    result = xdpcap(
        "run",
        "-i",
        str(lab.inventory_path),
        "--limit",
        f"{first}:{third}",
        "--duration",
        "2",
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert result.returncode == 0, result.stderr
    names = {row[0] for row in tshark_fields(_merged_path(result), "frame.interface_name")}
    assert names <= {f"{first}:eth0", f"{third}:eth0"}
    assert {h["name"] for h in _run_json(_merged_path(result))["hosts"]} == {first, third}


def test_count_stops_the_run(lab, tmp_path: Path) -> None:
    with pings_between_all(lab, seconds=30):
        result = xdpcap(
            "run",
            "-i",
            str(lab.inventory_path),
            "--count",
            "15",
            "--duration",
            "60",
            "--runs-dir",
            str(tmp_path / "runs"),
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    run = _run_json(_merged_path(result))
    for host in run["hosts"]:
        assert host["summary"]["stopped_by"] == "count"
        assert host["summary"]["written"] >= 15
        window = host["summary"]["window_end_ns"] - host["summary"]["window_start_ns"]
        assert window < 30e9


def test_filters_from_the_command_line_and_a_host_variable(lab, tmp_path: Path) -> None:
    """Trailing words filter every host but one, whose xdpcap_filter wins; each host's
    interface in the merged file carries its own expression, and the sums close."""
    replies_host = lab.hosts[2].name
    replies_only = "icmp[icmptype] == icmp-echoreply"
    inventory = inventory_with(lab, tmp_path, {replies_host: {"xdpcap_filter": replies_only}})
    with pings_between_all(lab, seconds=40):
        result = xdpcap(
            "run",
            "-i",
            str(inventory),
            "--duration",
            "4",
            "--runs-dir",
            str(tmp_path / "runs"),
            "icmp[icmptype]",
            "==",
            "icmp-echo",
        )
    assert result.returncode == 0, result.stderr
    merged = _merged_path(result)
    expected = {h.name: "icmp[icmptype] == icmp-echo" for h in lab.hosts}
    expected[replies_host] = replies_only

    rows = tshark_fields(merged, "frame.interface_name", "icmp.type")
    by_iface: dict[str, set[str]] = {}
    for iface, icmp_type in rows:
        by_iface.setdefault(iface, set()).add(icmp_type)
    assert by_iface == {f"{name}:eth0": {"0" if name == replies_host else "8"} for name in expected}
    _shb, idbs = read_headers(merged)
    filters = {idb["if_name"]: idb["if_filter"] for _snaplen, idb in idbs}
    assert filters == {f"{n}:eth0": (0, e.encode()) for n, e in expected.items()}

    for host in _run_json(merged)["hosts"]:
        summary = host["summary"]
        assert host["filter"] == summary["filter"] == expected[host["name"]]
        assert summary["filtered_out"] > 0  # the other pings, and the lab's other traffic
        assert summary["seen"] == (
            summary["filtered_out"] + summary["written"] + summary["not_sampled"] + summary["lost"]
        )
        assert f"{host['name']}: ok;" in result.stderr
    assert f"filtered out {summary['filtered_out']}," in result.stderr


def test_check_reports_each_host(lab) -> None:
    result = xdpcap("check", "-i", str(lab.inventory_path))
    assert result.returncode == 0, result.stdout + result.stderr
    for host in lab.hosts:
        assert host.name in result.stdout
    assert result.stdout.count("ok") >= len(lab.hosts)
    # Whether a capture there compiles the sampler or loads it from the cache.
    assert result.stdout.count("cached") + result.stdout.count("compiles") == len(lab.hosts)


def test_unreachable_host_gives_exit_3(tmp_path: Path) -> None:
    with private_lab("down", tmp_path, hosts=3) as lab:
        dead = lab.hosts[2].name
        pid = lab.sshd_pid(dead)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        result = xdpcap(
            "run",
            "-i",
            str(lab.inventory_path),
            "--duration",
            "2",
            "--runs-dir",
            str(tmp_path / "runs"),
        )
        assert result.returncode == 3, result.stderr
        assert dead in result.stderr and "cannot connect" in result.stderr
        merged = _merged_path(result)
        names = {row[0] for row in tshark_fields(merged, "frame.interface_name")}
        assert f"{dead}:eth0" not in names
        run = _run_json(merged)
        states = {h["name"]: h["state"] for h in run["hosts"]}
        assert states[dead] == "failed"
        assert sum(1 for s in states.values() if s == "done") == 2


DROPPED_PORT = 7001  # dropped by both owners: coop_xdp.c's XDP_DROP, and xdp-filter's rule


def test_a_run_beside_a_cooperating_program_and_xdp_filter(tmp_path: Path) -> None:
    """One host runs a cooperating program (its hook named by the host variable), one
    xdp-filter, one nothing: one merged file, each host's IDB saying how it was captured.
    Every program, pin and bpffs goes before the lab does, whatever the outcome."""
    obj = build_coop(tmp_path)
    with private_lab("own", tmp_path) as lab, contextlib.ExitStack() as owners:
        coop_host, filter_host, plain_host = lab.hosts
        spaces = {}
        for host in (coop_host, filter_host):
            # The agents run in the mount namespace of the host's sshd: the bpffs goes
            # there, so the hook's pin is found, and libxdp has its bpffs.
            sshd_mounts = Path(f"/proc/{lab.sshd_pid(host.name)}/ns/mnt")
            spaces[host.name] = owners.enter_context(bpffs_in(sshd_mounts, f"lab{host.name}"))
        coop = owners.enter_context(
            coop_attached(spaces[coop_host.name], coop_host.namespace, "eth0", obj)
        )
        owners.enter_context(
            xdp_filter_dropping(
                spaces[filter_host.name], filter_host.namespace, "eth0", DROPPED_PORT
            )
        )
        dispatcher = xdp_program(filter_host.namespace, "eth0")
        assert dispatcher is not None
        inventory = inventory_with(
            lab, tmp_path, {coop_host.name: {"xdpcap_xdp_hook": str(coop.hook_pin)}}
        )
        with (
            pings_between_all(lab, seconds=12),
            udp_between_all(lab, rate=20, seconds=12, port=DROPPED_PORT),
        ):
            result = xdpcap("run", "-i", str(inventory), "--duration", "6",
                            "--runs-dir", str(tmp_path / "runs"))  # fmt: skip
        assert result.returncode == 0, result.stderr
        merged = _merged_path(result)
        # Each host's interface in the one file says how its inbound was captured.
        _, idbs = read_headers(merged)
        described = {options["if_name"]: options["if_description"] for _, options in idbs}
        assert set(described) == {f"{h.name}:eth0" for h in lab.hosts}
        coop_idb = described[f"{coop_host.name}:eth0"]
        assert f"through hook {coop.hook_pin} of XDP program {coop.prog_id} 'coop'" in coop_idb
        filter_idb = described[f"{filter_host.name}:eth0"]
        owner = f"XDP program {dispatcher['name']} (id {dispatcher['id']})"
        assert f"after {owner}" in filter_idb and "are not seen" in filter_idb
        assert ", XDP ingress native (bpf_link) + " in described[f"{plain_host.name}:eth0"]
        inbound = {h["name"]: h["summary"]["inbound"] for h in _run_json(merged)["hosts"]}
        assert inbound == {
            coop_host.name: f"through hook {coop.hook_pin}",
            filter_host.name: f"inbound after {owner}",
            plain_host.name: "our XDP program",
        }
        # The dropped port: seen with its DROP verdict through the hook, not at all after
        # xdp-filter, and arriving where nothing runs (not icmp: the port unreachable
        # errors that come back quote it).
        rows = tshark_fields(merged, "frame.interface_name", "frame.verdict.ebpf_xdp",
                             display_filter=f"udp.dstport == {DROPPED_PORT} and not icmp "
                             "and frame.packet_flags_direction == 1")  # fmt: skip
        arrived = {(name, verdict) for name, verdict in rows}
        assert arrived == {(f"{coop_host.name}:eth0", "1"), (f"{plain_host.name}:eth0", "")}
        # The owners were never touched.
        assert xdp_program(coop_host.namespace, "eth0")["id"] == coop.prog_id
        assert xdp_program(filter_host.namespace, "eth0")["id"] == dispatcher["id"]
