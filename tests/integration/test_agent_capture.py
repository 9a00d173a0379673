"""The agent on real veths with real XDP: capture, accounting, safety."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .agent_helpers import (
    agent_argv,
    attach_foreign_program,
    capinfos,
    read_headers,
    read_isbs,
    start_agent,
    tshark_fields,
    wait_for_event,
    xdp_program,
)
from .lab_helpers import udp_sender
from .veth import in_ns, veth_pair

SNAPLEN = 200


@pytest.fixture
def pair():
    with veth_pair("ag") as p:
        yield p


def _ping(pair, count: int, size: int) -> None:
    in_ns(
        pair.peer_ns,
        "ping",
        "-q",
        "-c",
        str(count),
        "-i",
        "0.01",
        "-s",
        str(size),
        "-W",
        "1",
        pair.capture_ip,
        check=False,
    )


def test_capture_pings_exactly(pair, tmp_path: Path) -> None:
    out = tmp_path / "cap.pcapng"
    rx_before = pair.rx_packets()
    agent = start_agent(
        pair.capture_ns,
        "-Q",
        "in",  # what arrives, checked against the interface's own rx counter
        "-i",
        pair.capture_if,
        "-w",
        str(out),
        "--duration",
        "6",
        "--snaplen",
        str(SNAPLEN),
    )
    try:
        wait_for_event(agent, "capturing")
        _ping(pair, 25, 56)
        _ping(pair, 25, 1400)
        done = wait_for_event(agent, "done", timeout=30)
    finally:
        agent.wait(timeout=30)
    rx_after = pair.rx_packets()
    assert agent.returncode == 0, agent.stderr.read()
    assert xdp_program(pair.capture_ns, pair.capture_if) is None

    info = capinfos(out)
    assert "Strict time order:   True" in info
    assert "nanoseconds" in info
    requests = tshark_fields(
        out,
        "frame.len",
        "frame.cap_len",
        "frame.interface_queue",
        "frame.packet_flags_direction",
        display_filter="icmp.type == 8",
    )
    assert len(requests) == 50
    big = [r for r in requests if int(r[0]) > SNAPLEN]
    assert len(big) == 25
    for frame_len, cap_len, queue, direction in big:
        assert int(frame_len) == 14 + 20 + 8 + 1400  # the true length survives truncation
        assert int(cap_len) == SNAPLEN
        assert queue == "0" and int(direction, 16) == 1  # inbound

    shb, idbs = read_headers(out)
    assert shb["shb_userappl"].startswith("xdpcap ")
    assert shb["shb_os"].startswith("Linux ") and shb["shb_hardware"]
    ((snaplen, idb),) = idbs
    assert snaplen == SNAPLEN
    assert idb["if_name"] == pair.capture_if and idb["if_tsresol"] == b"\x09"
    assert idb["if_hardware"] == "veth" and idb["if_os"].startswith("Linux ")
    assert "XDP ingress" in idb["if_description"] and "every packet" in idb["if_description"]

    isb = read_isbs(out)
    assert len(isb) == 1
    seen = rx_after - rx_before
    assert isb[0]["isb_ifrecv"] == seen == done["seen"]
    assert isb[0]["isb_usrdeliv"] == done["written"] == seen  # nothing lost at this rate
    assert isb[0]["isb_ifdrop"] == 0
    assert isb[0]["isb_filteraccept"] == seen  # sample rate 1: every packet sampled
    assert isb[0]["isb_osdrop"] == 0
    assert done["unaccounted"] == 0


def test_second_run_loads_the_cached_sampler(pair, tmp_path: Path) -> None:
    """The first capture compiles with bcc and caches; the next loads the cache and
    captures exactly the same way."""
    cache = {"XDPCAP_BPF_CACHE": str(tmp_path / "bpf-cache")}
    loaded = []
    for run in range(2):
        out = tmp_path / f"run{run}.pcapng"
        rx_before = pair.rx_packets()
        agent = start_agent(
            pair.capture_ns, "-Q", "in", "-i", pair.capture_if, "-w", str(out),
            "--duration", "3", env=cache,
        )  # fmt: skip
        try:
            ready = wait_for_event(agent, "ready")
            wait_for_event(agent, "capturing")
            _ping(pair, 10, 56)
            done = wait_for_event(agent, "done", timeout=30)
        finally:
            agent.wait(timeout=30)
        assert agent.returncode == 0, agent.stderr.read()
        assert ready["cache_note"] is None
        loaded.append(ready["program"])
        assert done["seen"] == done["written"] == pair.rx_packets() - rx_before
        assert len(tshark_fields(out, "frame.number", display_filter="icmp.type == 8")) == 10
        assert xdp_program(pair.capture_ns, pair.capture_if) is None
    assert loaded == ["bcc", "cache"]
    entries = list((tmp_path / "bpf-cache").iterdir())
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o777 == 0o600


def test_count_stops_and_sampling_accounts(pair, tmp_path: Path) -> None:
    out = tmp_path / "count.pcapng"
    agent = start_agent(
        pair.capture_ns,
        "-i",
        pair.capture_if,
        "-w",
        str(out),
        "--duration",
        "30",
        "--count",
        "20",
        "--sample-rate",
        "2",
    )
    try:
        wait_for_event(agent, "capturing")
        _ping(pair, 200, 56)
        done = wait_for_event(agent, "done", timeout=30)
    finally:
        agent.wait(timeout=30)
    assert done["stopped_by"] == "count"
    assert done["written"] == 20  # exactly --count, as tcpdump -c
    assert done["not_sampled"] > 0
    assert done["seen"] == (
        done["written"] + done["lost"] + done["not_sampled"] + done["past_count"]
    )
    assert done["unaccounted"] == 0
    assert int(tshark_fields(out, "frame.number")[-1][0]) == done["written"]


def _static_neighbours(pair) -> None:
    """Permanent ARP entries both ways: the pings below are then the only frames."""
    for ns, ifname, other_ns, other_if, other_ip in (
        (pair.capture_ns, pair.capture_if, pair.peer_ns, pair.peer_if, pair.peer_ip),
        (pair.peer_ns, pair.peer_if, pair.capture_ns, pair.capture_if, pair.capture_ip),
    ):
        mac = in_ns(other_ns, "cat", f"/sys/class/net/{other_if}/address").stdout.strip()
        in_ns(ns, "ip", "neigh", "replace", other_ip, "lladdr", mac, "dev", ifname,
              "nud", "permanent")  # fmt: skip


def test_count_reached_by_the_last_packet_stops_at_once(pair, tmp_path: Path) -> None:
    """The N-th packet, followed by silence, ends a --count N capture: it is written
    without waiting for a later packet to push it out of the time ordering.

    N = 32, the rings' wake-up count: the 32nd sample wakes the agent at once, so the
    last few samples are younger than the ordering's horizon at that drain and must be
    released by a later drain that finds nothing new."""
    _static_neighbours(pair)
    out = tmp_path / "count.pcapng"
    agent = start_agent(
        pair.capture_ns, "-Q", "in", "-i", pair.capture_if, "-w", str(out),
        "--duration", "60", "--count", "32",
    )  # fmt: skip
    try:
        wait_for_event(agent, "capturing")
        _ping(pair, 32, 56)  # exactly 32 echo requests arrive, then nothing
        done = wait_for_event(agent, "done", timeout=90)
    finally:
        agent.wait(timeout=30)
    assert done["stopped_by"] == "count", done
    assert done["written"] == 32 and done["past_count"] == 0
    assert done["unaccounted"] == 0


def test_foreign_program_is_refused_and_kept(pair, tmp_path: Path) -> None:
    """Our own XDP program (--rx-capture xdp) never replaces another; by default the
    capture goes beside it instead (tests/integration/test_xdp_hook.py)."""
    foreign = attach_foreign_program(pair.capture_ns, pair.capture_if)
    try:
        result = subprocess.run(
            agent_argv(
                pair.capture_ns,
                "capture",
                "-i",
                pair.capture_if,
                "-w",
                str(tmp_path / "x.pcapng"),
                "--rx-capture",
                "xdp",
                "--duration",
                "2",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "already attached" in lines[0]
        assert f"id {foreign['id']}" in lines[0] and "foreign_pass" in lines[0]
        still = xdp_program(pair.capture_ns, pair.capture_if)
        assert still is not None and still["id"] == foreign["id"]
    finally:
        in_ns(pair.capture_ns, "ip", "link", "set", "dev", pair.capture_if, "xdp", "off")


def _epoch_ns(text: str) -> int:
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 10**9 + int(fraction.ljust(9, "0")[:9])


def test_the_window_closes_under_traffic_with_nothing_in_transit(pair, tmp_path: Path) -> None:
    """Packets arrive (and ICMP answers leave) as the window closes: the agent drains
    after a grace period, not after detaching (the hooks stay attached, disabled, until
    "done"), and every packet a hook saw is in the file — none in transit, none lost,
    the last one at the close — and the hooks are gone afterwards."""
    out = tmp_path / "close.pcapng"
    agent = start_agent(pair.capture_ns, "-i", pair.capture_if, "-w", str(out), "--duration", "1.5")
    try:
        wait_for_event(agent, "capturing")
        # 5,000 packets a second for 3 s: through the close of the 1.5 s window.
        sender = subprocess.Popen(udp_sender(pair.peer_ns, 5000, 3, 9, pair.capture_ip))
        done = wait_for_event(agent, "done", timeout=30)
        sender.wait(timeout=30)
    finally:
        agent.wait(timeout=30)
    assert agent.returncode == 0, agent.stderr.read()
    assert xdp_program(pair.capture_ns, pair.capture_if) is None
    assert done["lost"] == 0, done["lost_detail"]
    assert (
        done["seen"]
        == done["written"]
        == done["directions"]["in"]["seen"] + done["directions"]["out"]["seen"]
    )
    assert done["written"] > 2000
    stamps = [_epoch_ns(f[0]) for f in tshark_fields(out, "frame.time_epoch")]
    assert len(stamps) == done["written"]
    # Traffic ran through the close: the last packet is within 50 ms of the window's end.
    assert 0 <= done["window_end_ns"] - stamps[-1] < 50_000_000


def test_kill_9_leaves_nothing_attached(pair, tmp_path: Path) -> None:
    agent = start_agent(
        pair.capture_ns,
        "-i",
        pair.capture_if,
        "-w",
        str(tmp_path / "killed.pcapng"),
        "--duration",
        "60",
    )
    wait_for_event(agent, "capturing")
    assert xdp_program(pair.capture_ns, pair.capture_if)["name"] == "xdpcap_sampler"
    # `ip netns exec` execs the agent, so the pid is the agent's own.
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(timeout=10)
    deadline = time.monotonic() + 5
    while xdp_program(pair.capture_ns, pair.capture_if) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert xdp_program(pair.capture_ns, pair.capture_if) is None

    again = tmp_path / "again.pcapng"
    agent = start_agent(pair.capture_ns, "-i", pair.capture_if, "-w", str(again), "--duration", "3")
    wait_for_event(agent, "capturing")
    _ping(pair, 5, 56)
    done = wait_for_event(agent, "done", timeout=30)
    agent.wait(timeout=30)
    assert done["written"] >= 5


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(pair, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "sig.pcapng"
    agent = start_agent(pair.capture_ns, "-i", pair.capture_if, "-w", str(out), "--duration", "60")
    wait_for_event(agent, "capturing")
    _ping(pair, 5, 56)
    time.sleep(0.3)
    agent.send_signal(signum)
    done = wait_for_event(agent, "done", timeout=30)
    agent.wait(timeout=30)
    assert agent.returncode == 0
    assert done["stopped_by"] == signal.Signals(signum).name
    assert done["written"] >= 5
    assert xdp_program(pair.capture_ns, pair.capture_if) is None
    assert "Strict time order:   True" in capinfos(out)


def test_second_capture_on_same_interface_is_refused(pair, tmp_path: Path) -> None:
    first = start_agent(
        pair.capture_ns, "-i", pair.capture_if, "-w", str(tmp_path / "1.pcapng"), "--duration", "20"
    )
    try:
        wait_for_event(first, "capturing")
        result = subprocess.run(
            agent_argv(
                pair.capture_ns,
                "capture",
                "-i",
                pair.capture_if,
                "-w",
                str(tmp_path / "2.pcapng"),
                "--duration",
                "2",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "already running" in result.stderr
        assert xdp_program(pair.capture_ns, pair.capture_if)["name"] == "xdpcap_sampler"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    assert xdp_program(pair.capture_ns, pair.capture_if) is None


def test_preflight_reports(pair) -> None:
    import json

    result = subprocess.run(
        agent_argv(pair.capture_ns, "preflight", "-i", pair.capture_if),
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(result.stdout)
    assert report["verdict"] == "ok", report["reason"]
    assert report["iface_exists"] and report["driver"] == "veth"
    assert report["headers"] and report["bcc"]
    assert report["privileges"]["CAP_BPF"] and report["free_bytes"] > 0
    # An empty cache folder: the first capture would compile.
    fresh = subprocess.run(
        agent_argv(pair.capture_ns, "preflight", "-i", pair.capture_if),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDPCAP_BPF_CACHE": "/nonexistent/xdpcap-cache"},
    )
    assert json.loads(fresh.stdout)["sampler_cached"] is False
    missing = subprocess.run(
        agent_argv(pair.capture_ns, "preflight", "-i", "nosuch0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "nosuch0" in json.loads(missing.stdout)["reason"]
