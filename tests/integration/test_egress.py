"""Both directions: XDP on receive, tc egress on send, in one file and one clock.

A veth pair between two namespaces; the agent captures on the capture side while that
side pings (its requests leave, the replies arrive) or talks TCP. Both attach paths for
egress are exercised: the tcx link this kernel has, and the clsact filter of older
kernels (Debian 12's 6.1), forced.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from xdpcap.agent.hooks.tc import TC_HANDLE

from .agent_helpers import capinfos, read_isbs, start_agent, tshark_fields, wait_for_event
from .veth import in_ns, veth_pair

OUTBOUND, INBOUND = "0x00000002", "0x00000001"  # as tshark prints epb_flags' direction

# A foreign tc egress program that counts what it sees, attached by a process of its
# own (a tcx link, last in the chain, or a clsact filter at priority 5). It prints its
# counter for every line it reads and detaches when its stdin closes.
FOREIGN_TC = r"""
import ctypes, os, shutil, struct, sys, tempfile
from pathlib import Path
sys.path.append("/usr/lib/python3/dist-packages")
from xdpcap.agent.headers import apply_environment
from xdpcap.agent.headers import find_kernel_headers
from xdpcap.agent import libbpf
work = tempfile.mkdtemp(prefix="xdpcap-test-headers-")  # bcc's header farm, removed below
apply_environment(find_kernel_headers(Path(work)))
from bcc import BPF
b = BPF(text='''
BPF_ARRAY(seen, u64, 1);
int foreign_count(struct __sk_buff *skb) {
    int zero = 0;
    u64 *value = seen.lookup(&zero);
    if (value) __sync_fetch_and_add(value, 1);
    return -1;
}
''')
fd = b.load_func(b"foreign_count", BPF.SCHED_CLS).fd
shutil.rmtree(work)
ifindex = int(open(f"/sys/class/net/{sys.argv[1]}/ifindex").read())
if sys.argv[2] == "tcx":
    link = libbpf.link_create(fd, ifindex, libbpf.BPF_TCX_EGRESS, 0)
    assert link >= 0, link
else:
    libbpf.tc_egress_hook_create(ifindex)
    libbpf.tc_egress_attach(ifindex, fd, 0x666, 5)
print("attached", flush=True)
for _line in sys.stdin:
    print(b["seen"][ctypes.c_int(0)].value, flush=True)
if sys.argv[2] != "tcx":
    libbpf.tc_egress_detach(ifindex, 0x666, 5)
"""


@pytest.fixture
def pair():
    with veth_pair("eg") as p:
        yield p


def _ping(pair, count: int = 5, target: str | None = None, ns: str | None = None) -> None:
    in_ns(
        ns or pair.capture_ns,
        "ping",
        "-q",
        "-c",
        str(count),
        "-i",
        "0.05",
        "-W",
        "1",
        target or pair.peer_ip,
        check=False,
    )


def _capture(pair, out: Path, *args: str, action=None) -> dict:
    """One capture while `action()` runs; the agent's "done" event."""
    agent = start_agent(
        pair.capture_ns, "-i", pair.capture_if, "-w", str(out), "--duration", "60", *args
    )
    try:
        wait_for_event(agent, "capturing")
        if action is not None:
            action()
        time.sleep(0.3)
        agent.send_signal(signal.SIGINT)
        done = wait_for_event(agent, "done", timeout=30)
        agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)
    assert agent.returncode == 0, agent.stderr.read()
    return done


def _icmp(out: Path) -> list[tuple[str, str]]:
    """(direction, ICMP type) of every echo packet, in file order."""
    rows = tshark_fields(out, "frame.packet_flags_direction", "icmp.type", display_filter="icmp")
    return [(direction, icmp_type) for direction, icmp_type in rows]


def _assert_sums_close(done: dict) -> None:
    assert done["unaccounted"] == 0
    for name, d in done["directions"].items():
        total = d["filtered_out"] + d["written"] + d["lost"] + d["not_sampled"] + d["past_count"]
        assert d["seen"] == total, (name, d)
    for key in ("seen", "filtered_out", "written", "lost", "not_sampled"):
        assert done[key] == sum(d[key] for d in done["directions"].values()), key


def test_default_captures_both_directions(pair, tmp_path: Path) -> None:
    out = tmp_path / "both.pcapng"
    done = _capture(pair, out, action=lambda: _ping(pair, 5))
    packets = _icmp(out)
    assert packets.count((OUTBOUND, "8")) == 5  # our requests, leaving
    assert packets.count((INBOUND, "0")) == 5  # their replies, arriving
    assert len(packets) == 10
    _assert_sums_close(done)
    assert set(done["directions"]) == {"in", "out"}
    assert done["directions"]["out"]["written"] >= 5 and done["directions"]["in"]["written"] >= 5
    assert "tcx egress" in done["hooks"] and "XDP ingress" in done["hooks"]

    # Each request precedes its reply: one clock for both hooks.
    times = tshark_fields(out, "frame.time_epoch", "icmp.type", "icmp.seq", display_filter="icmp")
    at = {(t, int(seq)): float(ts) for ts, t, seq in times}
    for seq in range(1, 6):
        assert at[("8", seq)] < at[("0", seq)]
    assert "Strict time order:   True" in capinfos(out)
    (isb,) = read_isbs(out)
    assert isb["isb_ifrecv"] == done["seen"]


@pytest.mark.parametrize(
    ("direction", "expected"), [("in", (INBOUND, "0")), ("out", (OUTBOUND, "8"))]
)
def test_one_direction(pair, tmp_path: Path, direction: str, expected) -> None:
    out = tmp_path / f"{direction}.pcapng"
    done = _capture(pair, out, "-Q", direction, action=lambda: _ping(pair, 5))
    assert _icmp(out) == [expected] * 5
    assert set(done["directions"]) == {direction}
    _assert_sums_close(done)


@contextmanager
def _tcp_server(pair, port: int, serve: str) -> Iterator[None]:
    """A TCP server on the peer side running `serve` (Python, with the accepted socket
    `c`) for one connection; gone when the block ends."""
    code = (
        f"import socket; s = socket.create_server(('0.0.0.0', {port})); print('up', flush=True)\n"
        f"c, _ = s.accept()\n{serve}"
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", pair.peer_ns, sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "up"
        yield
    finally:
        server.kill()
        server.wait()


def _tcp_client(pair, port: int, talk: str) -> None:
    """Connect from the capture side and run `talk` with the socket `c`."""
    code = f"import socket; c = socket.create_connection(('{pair.peer_ip}', {port}))\n{talk}"
    in_ns(pair.capture_ns, sys.executable, "-c", code)


def test_tcp_handshake_from_both_sides(pair, tmp_path: Path) -> None:
    out = tmp_path / "tcp.pcapng"
    with _tcp_server(pair, 7070, "c.sendall(c.recv(100)); c.close()"):
        talk = "c.sendall(b'hi'); assert c.recv(10) == b'hi'; c.close()"
        _capture(pair, out, "tcp port 7070", action=lambda: _tcp_client(pair, 7070, talk))
    rows = tshark_fields(out, "frame.packet_flags_direction", "tcp.flags.str", "tcp.len")
    flags = [(d, f.replace("\u00b7", ".")) for d, f, _ in rows]
    assert flags[0] == (OUTBOUND, "..........S.")  # our SYN leaves
    assert flags[1] == (INBOUND, ".......A..S.")  # their SYN-ACK arrives
    assert flags[2] == (OUTBOUND, ".......A....")  # our ACK leaves
    payload = [(d, int(n)) for d, _, n in rows if int(n) > 0]
    assert payload == [(OUTBOUND, 2), (INBOUND, 2)]  # "hi" each way
    assert {d for d, _f in flags} == {OUTBOUND, INBOUND}


def test_filter_applies_to_both_directions(pair, tmp_path: Path) -> None:
    out = tmp_path / "requests.pcapng"

    def both_ways() -> None:
        _ping(pair, 4)  # our requests leave
        _ping(pair, 3, target=pair.capture_ip, ns=pair.peer_ns)  # theirs arrive

    done = _capture(pair, out, "icmp[icmptype] == icmp-echo", action=both_ways)
    assert sorted(_icmp(out)) == sorted([(OUTBOUND, "8")] * 4 + [(INBOUND, "8")] * 3)
    assert done["directions"]["out"]["filtered_out"] >= 3  # our replies to their pings
    assert done["directions"]["in"]["filtered_out"] >= 4  # their replies to ours
    _assert_sums_close(done)


def test_gso_super_packets_are_captured_whole(pair, tmp_path: Path) -> None:
    """What the stack hands a TSO device: packets far over the MTU, as tcpdump shows."""
    out = tmp_path / "gso.pcapng"
    with _tcp_server(pair, 7071, "while c.recv(1 << 16): pass"):
        send = "c.sendall(bytes(4 << 20)); c.close()"
        done = _capture(
            pair, out, "-Q", "out", "tcp dst port 7071",
            action=lambda: _tcp_client(pair, 7071, send),
        )  # fmt: skip
    rows = [(int(a), int(b)) for a, b in tshark_fields(out, "frame.len", "frame.cap_len")]
    assert max(length for length, _ in rows) > 1514  # super-packets, not MTU-sized frames
    assert all(cap == min(length, 65472) for length, cap in rows)
    assert done["lost"] == 0
    _assert_sums_close(done)


@contextmanager
def _tcpdump_out(pair, out: Path, expression: str) -> Iterator[None]:
    """tcpdump -Q out on the capture side for the block's length: the reference. Its
    ring gets 64 MiB (-B): with the default 2 MiB, 64 KiB super-packets overflow it."""
    tcpdump = subprocess.Popen(
        ["ip", "netns", "exec", pair.capture_ns, "tcpdump", "-i", pair.capture_if, "-Q", "out",
         "-B", "65536", "--immediate-mode", "-w", str(out), "--", expression],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert "listening on" in tcpdump.stderr.readline()
        yield
    finally:
        tcpdump.send_signal(signal.SIGINT)
        try:
            tcpdump.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tcpdump.kill()
            tcpdump.wait(timeout=30)


def _bytes_covered(segments: list[tuple[int, int]]) -> int:
    """How many stream bytes the (sequence number, length) segments cover together;
    numbers are taken from the first segment's, modulo 2^32 (they may wrap)."""
    first = segments[0][0]
    covered, end = 0, None
    for seq, n in sorted(((s - first) % (1 << 32), n) for s, n in segments):
        start = seq if end is None else max(seq, end)
        covered += max(0, seq + n - start)
        end = seq + n if end is None else max(end, seq + n)
    return covered


def test_bulk_transfer_with_a_payload_filter_holds_its_segments(pair, tmp_path: Path) -> None:
    """Outgoing TCP payload lies in page fragments past the skb's linear head (GSO); the
    egress filter reads it there, and selects what `tcpdump -Q out` selects."""
    size = 4 << 20
    # Every payload byte is "X", so the segment's first four bytes match wherever TCP
    # cut the stream; the load is still at the header length tcp[12] gives.
    expression = "tcp dst port 7300 and tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x58585858"
    ours, reference = tmp_path / "bulk.pcapng", tmp_path / "tcpdump.pcap"
    send = f"c.sendall(b'X' * {size}); c.close()"
    with (
        _tcp_server(pair, 7300, "while c.recv(1 << 16): pass"),
        _tcpdump_out(pair, reference, expression),
    ):
        done = _capture(
            pair, ours, "-Q", "out", expression, action=lambda: _tcp_client(pair, 7300, send)
        )
    fields = ("frame.len", "tcp.seq_raw", "tcp.len")
    rows = [tuple(int(v) for v in row) for row in tshark_fields(ours, *fields)]
    assert max(length for length, _seq, _n in rows) > 1514  # GSO: payload past the head
    # Every byte of the transfer (a segment TCP sent again is in the file twice, as in
    # tcpdump's: the bytes covered count once).
    assert _bytes_covered([(seq, n) for _len, seq, n in rows]) == size
    assert all(n > 0 for _len, _seq, n in rows)  # and no segment without payload
    expected = [tuple(int(v) for v in row) for row in tshark_fields(reference, *fields)]
    assert sorted(rows) == sorted(expected)
    assert done["lost"] == 0
    _assert_sums_close(done)


def _xdpcap_programs() -> dict[int, str]:
    """Every loaded program named xdpcap_*, on the whole machine: id → name."""
    progs = json.loads(subprocess.run(
        ["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True
    ).stdout)  # fmt: skip
    return {p["id"]: p["name"] for p in progs if p.get("name", "").startswith("xdpcap_")}


def _wait_until_gone(ids: set[int], timeout: float = 10.0) -> None:
    """Programs are freed a moment after their last reference goes (RCU)."""
    deadline = time.monotonic() + timeout
    while ids & set(_xdpcap_programs()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ids & set(_xdpcap_programs())


def _tc_egress_filters(pair) -> str:
    return in_ns(pair.capture_ns, "tc", "filter", "show", "dev", pair.capture_if, "egress").stdout


def test_kill_9_leaves_nothing_with_tcx(pair, tmp_path: Path) -> None:
    before = set(_xdpcap_programs())  # other captures on this machine are not ours
    agent = start_agent(
        pair.capture_ns, "-i", pair.capture_if, "-w", str(tmp_path / "k.pcapng"),
        "--duration", "60",
    )  # fmt: skip
    wait_for_event(agent, "capturing")
    ours = {i: n for i, n in _xdpcap_programs().items() if i not in before}
    # The two capture points, and (attribution on by default) the process table's hooks:
    # all of them must go with the process.
    assert {"xdpcap_egress", "xdpcap_sampler"} <= set(ours.values())
    agent.kill()
    agent.wait(timeout=30)
    _wait_until_gone(set(ours))  # no link held them: the kernel let them go
    net = json.loads(
        in_ns(pair.capture_ns, "bpftool", "-j", "net", "show", "dev", pair.capture_if).stdout
    )
    assert net[0]["xdp"] == [] and net[0]["tc"] == []
    done = _capture(pair, tmp_path / "again.pcapng", action=lambda: _ping(pair, 2))
    assert done["written"] >= 4


def _kill_9_during_a_clsact_capture(pair, out: Path) -> None:
    """What a killed run leaves: its clsact filter (no link took it away)."""
    agent = start_agent(
        pair.capture_ns, "-i", pair.capture_if, "-w", str(out), "--duration", "60",
        "--egress-attach", "clsact",
    )  # fmt: skip
    wait_for_event(agent, "capturing")
    agent.kill()
    agent.wait(timeout=30)


def test_legacy_clsact_path_cleans_up_and_recovers(pair, tmp_path: Path) -> None:
    """Forced as on a 6.1 kernel: our filter goes at the end, a killed run's filter goes
    at the next start, and someone else's filter and the qdisc are never touched."""
    foreign = subprocess.Popen(
        ["ip", "netns", "exec", pair.capture_ns, sys.executable, "-c", FOREIGN_TC,
         pair.capture_if, "clsact"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert foreign.stdout.readline().strip() == "attached"
        clean = _capture(
            pair, tmp_path / "a.pcapng", "--egress-attach", "clsact",
            action=lambda: _ping(pair, 3),
        )  # fmt: skip
        assert "clsact egress" in clean["hooks"]
        after = _tc_egress_filters(pair)
        assert f"handle {TC_HANDLE:#x}" not in after and "foreign_count" in after

        _kill_9_during_a_clsact_capture(pair, tmp_path / "b.pcapng")
        stale = _tc_egress_filters(pair)
        assert f"handle {TC_HANDLE:#x}" in stale and "xdpcap_egress" in stale  # left behind

        # The next start removes it, whichever way it attaches: clsact here, tcx (the
        # default on this kernel) in the second round.
        for how in ("clsact", "auto"):
            again = _capture(
                pair, tmp_path / f"c-{how}.pcapng", "--egress-attach", how,
                action=lambda: _ping(pair, 3),
            )  # fmt: skip
            assert again["directions"]["out"]["written"] >= 3
            assert "xdpcap_egress" not in _tc_egress_filters(pair)
            if how == "clsact":  # leave one behind again for the tcx round
                _kill_9_during_a_clsact_capture(pair, tmp_path / "d.pcapng")
                assert "xdpcap_egress" in _tc_egress_filters(pair)
        final = _tc_egress_filters(pair)
        assert "xdpcap_egress" not in final and "foreign_count" in final
        qdiscs = in_ns(pair.capture_ns, "tc", "qdisc", "show", "dev", pair.capture_if).stdout
        assert "clsact" in qdiscs
    finally:
        foreign.stdin.close()
        foreign.wait(timeout=30)


@pytest.mark.parametrize("how", ["tcx", "clsact"])
def test_a_foreign_tc_program_keeps_running(pair, tmp_path: Path, how: str) -> None:
    foreign = subprocess.Popen(
        ["ip", "netns", "exec", pair.capture_ns, sys.executable, "-c", FOREIGN_TC,
         pair.capture_if, how],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip

    def counter() -> int:
        foreign.stdin.write("?\n")
        foreign.stdin.flush()
        return int(foreign.stdout.readline())

    try:
        assert foreign.stdout.readline().strip() == "attached"
        seen = []

        def ping_and_count() -> None:
            seen.append(counter())
            _ping(pair, 5)
            seen.append(counter())

        done = _capture(pair, tmp_path / "f.pcapng", "-Q", "out", action=ping_and_count)
        assert seen[1] - seen[0] >= 5  # it saw our pings while we captured them
        assert done["directions"]["out"]["written"] >= 5
        before = counter()
        _ping(pair, 2)
        assert counter() - before >= 2  # and after we are gone
    finally:
        foreign.stdin.close()
        foreign.wait(timeout=30)
