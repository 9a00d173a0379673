"""Inbound beside a real foreign XDP program on a real veth: through its xdpcap hook
(clang-built, bpftool-loaded, pinned on a bpffs the test mounts), and after it at tc
ingress (xdp-filter, libxdp) — with the owner never touched."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdpcap.orchestrator.merge.reader import load

from .agent_helpers import (
    attach_foreign_program,
    read_headers,
    read_isb_comments,
    tshark_fields,
    wait_for_event,
    xdp_program,
)
from .veth import VethPair, in_ns, veth_pair
from .xdp_owner import (
    COOP_ABORT_PORT,
    COOP_PORTS,
    COOP_REDIRECT_PORT,
    BpffsNamespace,
    bpffs_namespace,
    build_coop,
    hook_slots,
    load_coop,
    xdp_filter_dropping,
)

PER_PORT = 5
EPB_VERDICT = 7
SLOT_NAMES = {"xdpcap_aborted", "xdpcap_drop", "xdpcap_pass", "xdpcap_tx", "xdpcap_redirect"}

# Sends PER_PORT UDP datagrams to each port, then says how many each listener got.
SEND = """
import socket, sys
dst, ports, n = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    for port in ports:
        s.sendto(b"xdpcap-hook-test", (dst, port))
"""
# Counts what reaches sockets on the capture side for 7001 and 7002 (drop and pass).
LISTEN = """
import select, socket, sys, time
socks = {}
for port in (7001, 7002):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    socks[s] = port
got = {7001: 0, 7002: 0}
print("listening", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    ready, _, _ = select.select(list(socks), [], [], 0.1)
    for s in ready:
        s.recv(2048)
        got[socks[s]] += 1
print(got[7001], got[7002], flush=True)
"""


@pytest.fixture
def pair() -> Iterator[VethPair]:
    with veth_pair("hk") as p:
        yield p


@pytest.fixture
def space() -> Iterator[BpffsNamespace]:
    with bpffs_namespace("hk") as s:
        yield s


@pytest.fixture
def coop(pair: VethPair, space: BpffsNamespace, tmp_path: Path):
    return load_coop(space, pair.capture_ns, pair.capture_if, build_coop(tmp_path))


def _agent(space: BpffsNamespace, pair: VethPair, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        space.argv(
            pair.capture_ns, sys.executable, "-m", "xdpcap.agent", "capture", "--json-events", *args
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _send(pair: VethPair, ports) -> None:
    ports_arg = ",".join(str(p) for p in ports)
    in_ns(pair.peer_ns, sys.executable, "-c", SEND, pair.capture_ip, ports_arg, str(PER_PORT))


def _capture(space, pair, tmp_path: Path, *args: str, ports=(7001, 7002, 7003, 7004, 7005)):
    out = tmp_path / "hook.pcapng"
    listener = subprocess.Popen(
        ["ip", "netns", "exec", pair.capture_ns, sys.executable, "-c", LISTEN, "6"],
        stdout=subprocess.PIPE,
        text=True,
    )
    agent = _agent(space, pair, "-i", pair.capture_if, "-w", str(out), "--duration", "4", *args)
    try:
        assert listener.stdout.readline().strip() == "listening"
        wait_for_event(agent, "capturing")
        _send(pair, ports)
        done = wait_for_event(agent, "done", timeout=60)
        _, err = agent.communicate(timeout=30)
        dropped, passed = (int(v) for v in listener.communicate(timeout=30)[0].split())
    finally:
        for proc in (agent, listener):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return out, done, err, (dropped, passed)


def _sums_close(figures: dict) -> bool:
    parts = ("filtered_out", "written", "lost", "not_sampled", "past_count")
    return figures["seen"] == sum(figures[p] for p in parts)


@pytest.mark.parametrize("how", ["discovery", "flag"])
def test_every_packet_carries_the_owners_verdict(space, pair, coop, tmp_path, how) -> None:
    args = ["-Q", "in", "udp and not port 7005"]  # the filter: 7005 is passed, not captured
    if how == "flag":
        args += ["--xdp-hook", str(coop.hook_pin)]
    out, done, err, (dropped, passed) = _capture(space, pair, tmp_path, *args)

    # The owner's behaviour is unchanged: 7001 dropped before any socket, 7002 delivered.
    assert (dropped, passed) == (0, PER_PORT)
    found_line = [line for line in err.splitlines() if "found pinned" in line]
    assert len(found_line) == (1 if how == "discovery" else 0), err
    # Each packet's verdict, as Wireshark shows it, is the owner's for its port.
    rows = tshark_fields(out, "udp.dstport", "frame.verdict.ebpf_xdp")
    assert Counter((int(p), int(v)) for p, v in rows) == Counter(
        {(port, verdict): PER_PORT for port, verdict in COOP_PORTS.items()}
    )
    # The same through the project's own reader (epb_verdict: type 2, eBPF XDP).
    verdicts = Counter()
    for packet in load(out).packets:
        (value,) = [v for code, v in packet.options if code == EPB_VERDICT]
        assert value[0] == 2
        verdicts[int.from_bytes(value[1:], "little")] += 1
    assert verdicts == Counter({v: PER_PORT for v in COOP_PORTS.values()})
    # Counts per verdict close, in the summary (and so in run.json) and the ISB comment.
    assert done["unaccounted"] == 0
    for name, action in (("DROP", 1), ("PASS", 2), ("TX", 3), ("ABORTED", 0)):
        figures = done["verdicts"][name]
        assert figures["written"] == PER_PORT == verdicts[action], name
        assert _sums_close(figures), (name, figures)
    # 7005 is passed and filtered out (and so may be an ARP exchange)
    assert done["verdicts"]["PASS"]["filtered_out"] >= PER_PORT
    # The interface says how it was captured, naming the program and its id.
    _, idbs = read_headers(out)
    description = idbs[0][1]["if_description"]
    assert f"through hook {coop.hook_pin} of XDP program {coop.prog_id} 'coop'" in description
    assert "as it leaves the program" in description
    # Never touch the owner: same program, still attached; the hook's slots empty again.
    assert xdp_program(pair.capture_ns, pair.capture_if)["id"] == coop.prog_id
    assert hook_slots(space, pair.capture_ns, coop.hook_pin) == {}


def test_after_kill_9_the_next_capture_clears_only_our_slots(space, pair, coop, tmp_path) -> None:
    agent = _agent(space, pair, "-i", pair.capture_if, "-w", str(tmp_path / "k.pcapng"), "-Q", "in")
    try:
        wait_for_event(agent, "capturing")
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    left = hook_slots(space, pair.capture_ns, coop.hook_pin)
    assert set(left.values()) == SLOT_NAMES  # a prog array keeps them after we die
    # Someone else's program takes slot 3 (here the owner itself: a compatible program).
    hook = str(coop.hook_pin)
    space.run(pair.capture_ns, "bpftool", "map", "update", "pinned", hook, "key", "3", "0", "0",
              "0", "value", "pinned", str(coop.prog_pin))  # fmt: skip
    refused = subprocess.run(
        space.argv(
            pair.capture_ns,
            sys.executable,
            "-m",
            "xdpcap.agent",
            "capture",
            "-i",
            pair.capture_if,
            "-w",
            str(tmp_path / "r.pcapng"),
            "-Q",
            "in",
            "--duration",
            "1",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1, refused.stderr
    assert "slot 3" in refused.stderr and "never replaces it" in refused.stderr
    # Our stale slots are cleared; the foreign one stays.
    assert hook_slots(space, pair.capture_ns, coop.hook_pin) == {3: "coop"}
    space.run(
        pair.capture_ns, "bpftool", "map", "delete", "pinned", hook, "key", "3", "0", "0", "0"
    )
    _, done, _, _ = _capture(space, pair, tmp_path, "-Q", "in", "udp", ports=(7002,))
    assert done["verdicts"]["PASS"]["written"] == PER_PORT
    assert hook_slots(space, pair.capture_ns, coop.hook_pin) == {}
    assert xdp_program(pair.capture_ns, pair.capture_if)["id"] == coop.prog_id


def _tc_ingress_filters(pair: VethPair) -> str:
    """(A tcx link is the kernel's to drop when our process ends; a clsact filter ours.)"""
    return in_ns(pair.capture_ns, "tc", "filter", "show", "dev", pair.capture_if, "ingress",
                 check=False).stdout  # fmt: skip


@pytest.mark.parametrize("tc_attach", ["auto", "clsact"])
def test_after_xdp_filter_at_tc_ingress(space, pair, tmp_path, tc_attach) -> None:
    """xdp-filter (libxdp) drops UDP 7001: the default capture works, inbound holds what
    it passed, egress as before; it keeps its id."""
    ns = pair.capture_ns
    with xdp_filter_dropping(space, ns, pair.capture_if, 7001):
        _capture_after_xdp_filter(space, pair, tmp_path, tc_attach)


def _capture_after_xdp_filter(space, pair: VethPair, tmp_path: Path, tc_attach: str) -> None:
    ns = pair.capture_ns
    owner = xdp_program(ns, pair.capture_if)
    assert owner is not None
    out = tmp_path / "after.pcapng"
    agent = _agent(space, pair, "-i", pair.capture_if, "-w", str(out), "--duration", "4",
                   "--egress-attach", tc_attach, "udp or icmp")  # fmt: skip
    try:
        wait_for_event(agent, "capturing")
        _send(pair, (7001, 7002))
        in_ns(pair.peer_ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", pair.capture_ip)
        done = wait_for_event(agent, "done", timeout=60)
        agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
    rows = tshark_fields(out, "frame.packet_flags_direction", "udp.dstport", "icmp.type")
    inbound_udp = Counter(port for d, port, _ in rows if d == "0x00000001" and port)
    assert inbound_udp == Counter({"7002": PER_PORT})  # the dropped port is not seen
    icmp = Counter((d, t) for d, _, t in rows if t in ("0", "8"))  # (7002 has no listener)
    assert icmp == Counter({("0x00000001", "8"): 3, ("0x00000002", "0"): 3})  # egress as before
    assert done["unaccounted"] == 0
    assert done["inbound"] == f"inbound after XDP program {owner['name']} (id {owner['id']})"
    # xdp-filter drops: nothing aborted or redirected (its tracepoints were watched).
    assert set(done["owner_events"].values()) == {0}
    method = "tcx" if tc_attach == "auto" else "clsact"
    _, idbs = read_headers(out)
    description = idbs[0][1]["if_description"]
    assert (
        f"after XDP program {owner['name']} (id {owner['id']}) at {method} ingress" in description
    )
    assert "drops, redirects and XDP_TX are not seen" in description
    # The owner keeps its id; nothing of ours is left at tc.
    assert xdp_program(ns, pair.capture_if)["id"] == owner["id"]
    assert "xdpcap" not in _tc_ingress_filters(pair)


def test_our_own_xdp_is_still_refused_beside_a_foreign_program(space, pair, coop, tmp_path) -> None:
    result = subprocess.run(
        space.argv(
            pair.capture_ns,
            sys.executable,
            "-m",
            "xdpcap.agent",
            "capture",
            "-i",
            pair.capture_if,
            "-w",
            str(tmp_path / "x.pcapng"),
            "--rx-capture",
            "xdp",
            "--duration",
            "1",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "already attached" in result.stderr and f"id {coop.prog_id}" in result.stderr
    assert xdp_program(pair.capture_ns, pair.capture_if)["id"] == coop.prog_id


def test_check_reports_the_hook_and_clears_a_killed_captures_slots(
    space, pair, coop, tmp_path
) -> None:
    agent = _agent(space, pair, "-i", pair.capture_if, "-w", str(tmp_path / "k.pcapng"), "-Q", "in")
    try:
        wait_for_event(agent, "capturing")
        # While it runs, check leaves its slots alone (the capture holds the lock).
        live = space.run(pair.capture_ns, sys.executable, "-m", "xdpcap.agent", "preflight",
                         "-i", pair.capture_if, check=False)  # fmt: skip
        assert json.loads(live.stdout)["hooks"]["in"] == f"hook {coop.hook_pin}"
        assert set(hook_slots(space, pair.capture_ns, coop.hook_pin).values()) == SLOT_NAMES
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    space.run(pair.capture_ns, sys.executable, "-m", "xdpcap.agent", "preflight", "-i",
              pair.capture_if, check=False)  # fmt: skip
    assert hook_slots(space, pair.capture_ns, coop.hook_pin) == {}
    assert xdp_program(pair.capture_ns, pair.capture_if)["id"] == coop.prog_id


def test_a_frags_owner_gets_slot_programs_loaded_to_match(space, pair, tmp_path) -> None:
    """SEC("xdp.frags"): ours are refused in its prog array until loaded with frags."""
    owner = load_coop(space, pair.capture_ns, pair.capture_if, build_coop(tmp_path, "COOP_FRAGS"))
    _, done, _, (dropped, passed) = _capture(
        space,
        pair,
        tmp_path,
        "-Q",
        "in",
        "udp",
        "--xdp-hook",
        str(owner.hook_pin),
        ports=(7001, 7002),
    )
    assert (dropped, passed) == (0, PER_PORT)
    assert done["verdicts"]["DROP"]["written"] == PER_PORT == done["verdicts"]["PASS"]["written"]
    assert hook_slots(space, pair.capture_ns, owner.hook_pin) == {}


# Room for the agent to load the sampler before the window opens (a compile, at worst).
WINDOW_LEAD_NS = 25_000_000_000


def test_after_xdp_counts_the_owners_aborted_and_redirected_packets(
    space, pair, coop, tmp_path
) -> None:
    """Behind the owner at tc ingress (forced, though it has a hook), its XDP_ABORTED and
    XDP_REDIRECT packets are counted from its tracepoints, inside the window only."""
    # A veth can send redirected frames only where its peer can take them (an XDP program
    # there, or GRO); otherwise each redirect fails (xdp:xdp_redirect_err).
    attach_foreign_program(pair.peer_ns, pair.peer_if)
    out = tmp_path / "owner.pcapng"
    start_at = time.time_ns() + WINDOW_LEAD_NS
    agent = _agent(space, pair, "-i", pair.capture_if, "-w", str(out), "-Q", "in",
                   "--rx-capture", "after-xdp", "--start-at", str(start_at), "--duration", "3",
                   "udp")  # fmt: skip
    try:
        wait_for_event(agent, "ready")
        # Attached, window not yet open: these are the owner's, but not the window's.
        _send(pair, (COOP_ABORT_PORT, COOP_REDIRECT_PORT))
        assert time.time_ns() < start_at, "the agent was not ready before the window opened"
        capturing = wait_for_event(agent, "capturing", timeout=WINDOW_LEAD_NS / 1e9 + 30)
        # Armed ahead of time: the window opens at its start, a little after this event.
        time.sleep(max(0, capturing["window_start_ns"] - time.time_ns()) / 1e9 + 0.2)
        _send(pair, (7001, 7002, COOP_ABORT_PORT, COOP_REDIRECT_PORT))
        done = wait_for_event(agent, "done", timeout=60)
        _, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
    events = done["owner_events"]
    assert events["aborted"] == PER_PORT, events
    assert events["redirected"] == PER_PORT, events
    assert events["redirect_failed"] == 0
    # What tc ingress saw is only what the owner passed.
    assert Counter(port for (port,) in tshark_fields(out, "udp.dstport")) == Counter(
        {"7002": PER_PORT}
    )
    assert done["unaccounted"] == 0
    owner = f"inbound after XDP program coop (id {coop.prog_id})"
    assert done["inbound"] == owner
    line = [line for line in err.splitlines() if "packets written" in line]
    assert f"{owner}: aborted {PER_PORT}, redirected {PER_PORT}" in line[0], err
    (comment,) = read_isb_comments(out)
    assert f"{owner}: {events}" in comment
    assert xdp_program(pair.capture_ns, pair.capture_if)["id"] == coop.prog_id
