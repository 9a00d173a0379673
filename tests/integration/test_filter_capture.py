"""Real captures with filters: exactly the frames tcpdump selects, and every packet accounted.

The corpus (and seeded mutations of it) goes out of the peer's veth through AF_PACKET, so
the tc egress program on the peer's side and the XDP sampler on the capture side each see
every frame exactly as built. For each of many expressions, two `xdpcap capture`s run
with the filter at once — `-Q out` on the sender, `-Q in` on the receiver; what each
wrote must be, frame for frame, what `tcpdump -r corpus.pcap EXPR` selects from the same
frames.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from .agent_helpers import read_headers, read_isbs, start_agent, tshark_fields, wait_for_event
from .filter_corpus import EXPRESSIONS, corpus_frames, mutated_frames, tcpdump_selects, write_pcap
from .veth import in_ns, veth_pair

# Every second corpus expression (the engine test runs them all without an interface),
# and every loop (protochain) and payload load [x + k] among the others.
CAPTURED_EXPRESSIONS = list(
    dict.fromkeys(
        [*EXPRESSIONS[::2], *(e for e in EXPRESSIONS if "protochain" in e or "tcp[((" in e)]
    )
)

# Sends a classic pcap's records out of an interface, paced so that veth's XDP ring (256
# frames) never overflows: a drop there would be a sender's artefact, not the filter's.
SENDER = """
import socket, struct, sys, time
data = open(sys.argv[2], "rb").read()
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
at, sent = 24, 0
while at < len(data):
    caplen = struct.unpack_from("<I", data, at + 8)[0]
    sock.send(data[at + 16 : at + 16 + caplen])
    at += 16 + caplen
    sent += 1
    if sent % 32 == 0:
        time.sleep(0.005)
print(sent)
"""


@pytest.fixture(scope="module")
def pair():
    with veth_pair("fc") as p:
        yield p


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> tuple[Path, list[bytes]]:
    frames = corpus_frames() + mutated_frames(seed=7, count=100)
    path = tmp_path_factory.mktemp("filter-capture") / "frames.pcap"
    write_pcap(path, frames)
    return path, frames


def _send(pair, pcap: Path) -> int:
    out = in_ns(pair.peer_ns, sys.executable, "-c", SENDER, pair.peer_if, str(pcap)).stdout
    return int(out)


def _written_frames(path: Path) -> list[bytes]:
    """Packet bytes as python-pcapng (an independent reader) sees them."""
    import pcapng

    with path.open("rb") as f:
        return [
            bytes(block.packet_data)
            for block in pcapng.FileScanner(f)
            if isinstance(block, pcapng.blocks.EnhancedPacket)
        ]


@contextmanager
def _agent(ns: str, iface: str, out: Path, *args: str) -> Iterator[subprocess.Popen]:
    """An agent capturing until the block ends; killed if the block fails on the way."""
    agent = start_agent(ns, "-i", iface, "-w", str(out), "--duration", "60", *args)
    try:
        wait_for_event(agent, "capturing")
        yield agent
    finally:
        if agent.poll() is None:  # the test failed on the way: nothing may outlive it
            agent.kill()
            agent.wait(timeout=30)


def _stop(agent: subprocess.Popen) -> dict:
    agent.send_signal(signal.SIGINT)
    done = wait_for_event(agent, "done", timeout=30)
    agent.wait(timeout=30)
    assert agent.returncode == 0, agent.stderr.read()
    return done


def _capture(pair, out: Path, pcap: Path, *filter_words: str) -> tuple[dict, int]:
    """Receive side only (XDP): its "done" event and the frames sent."""
    with _agent(pair.capture_ns, pair.capture_if, out, *filter_words) as agent:
        sent = _send(pair, pcap)
        time.sleep(0.3)  # XDP runs in the receive path: long done; the agent drains
        return _stop(agent), sent


def _capture_both_sides(
    pair, inbound: Path, outbound: Path, pcap: Path, *filter_words: str
) -> tuple[dict, dict, int]:
    """XDP on the receiver (`-Q in`) and tc egress on the sender (`-Q out`) at once."""
    with ExitStack() as agents:
        receiver = agents.enter_context(
            _agent(pair.capture_ns, pair.capture_if, inbound, "-Q", "in", *filter_words)
        )
        sender = agents.enter_context(
            _agent(pair.peer_ns, pair.peer_if, outbound, "-Q", "out", *filter_words)
        )
        sent = _send(pair, pcap)
        time.sleep(0.3)  # both hooks run on the send path: long done; the agents drain
        return _stop(receiver), _stop(sender), sent


def _assert_wrote_exactly(out: Path, done: dict, sent: int, expected: list[bytes], expression):
    written = _written_frames(out)
    assert Counter(written) == Counter(expected), (
        f"{out.name}: {len(written)} written, {len(expected)} selected by tcpdump"
    )
    # Every frame the hook saw is written or filtered out: nothing else at this rate.
    assert done["seen"] == sent
    assert done["filtered_out"] == sent - len(expected)
    assert done["written"] == len(expected)
    assert done["lost"] == done["not_sampled"] == done["unaccounted"] == 0

    (isb,) = read_isbs(out)
    assert isb["isb_ifrecv"] == sent
    assert isb["isb_filteraccept"] == len(expected)
    assert isb["isb_usrdeliv"] == len(expected)
    _shb, ((_snaplen, idb),) = read_headers(out)
    assert idb["if_filter"] == (0, expression.encode())  # type 0: libpcap's language


@pytest.mark.parametrize("expression", CAPTURED_EXPRESSIONS)
def test_capture_writes_what_tcpdump_selects(pair, frames, tmp_path: Path, expression) -> None:
    pcap, sent_frames = frames
    expected = [sent_frames[i] for i in tcpdump_selects(pcap, expression)]
    inbound, outbound = tmp_path / "in.pcapng", tmp_path / "out.pcapng"
    done_in, done_out, sent = _capture_both_sides(pair, inbound, outbound, pcap, expression)
    assert sent == len(sent_frames)
    _assert_wrote_exactly(inbound, done_in, sent, expected, expression)
    _assert_wrote_exactly(outbound, done_out, sent, expected, expression)


def test_tshark_reads_the_filter_and_the_frames(pair, tmp_path: Path) -> None:
    pcap = tmp_path / "corpus.pcap"  # well-formed frames only: tshark decodes each
    write_pcap(pcap, corpus_frames())
    out = tmp_path / "cap.pcapng"
    expression = "icmp or arp"
    _capture(pair, out, pcap, "-F", str(_filter_file(tmp_path, expression)))
    # By the IP protocol, not tshark's "icmp": tcpdump's icmp takes later fragments too.
    # (ICMP errors quote an inner header: ip.proto "1,17"; the outer one decides.)
    rows = tshark_fields(out, "eth.type", "ip.proto")
    assert rows, "nothing written"
    for ethertype, proto in rows:
        assert ethertype == "0x0806" or (ethertype == "0x0800" and proto.split(",")[0] == "1")
    info = _capinfos_filter(out)
    assert info == expression


def _filter_file(tmp_path: Path, expression: str) -> Path:
    path = tmp_path / "filter"
    path.write_text(f"# what we look for\n{expression}  # nothing else\n")
    return path


def _capinfos_filter(path: Path) -> str:
    import subprocess

    out = subprocess.run(
        ["capinfos", str(path)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = [line.split("=", 1)[1].strip() for line in out.splitlines() if "Filter string" in line]
    assert len(lines) == 1, out
    return lines[0]


def test_frames_the_stack_drops_after_xdp_are_not_os_drops(pair, frames, tmp_path: Path) -> None:
    """The corpus is full of ethertypes the stack drops after XDP passed them (LLDP, STP,
    MPLS, PPPoE...): they raise rx_dropped, yet none was lost before the capture."""
    pcap, _ = frames
    out = tmp_path / "cap.pcapng"
    rx_dropped = Path(f"/sys/class/net/{pair.capture_if}/statistics/rx_dropped")
    before = int(in_ns(pair.capture_ns, "cat", str(rx_dropped)).stdout)
    done, sent = _capture(pair, out, pcap)
    after = int(in_ns(pair.capture_ns, "cat", str(rx_dropped)).stdout)
    assert after > before  # the stack did drop some after XDP
    assert done["seen"] == done["written"] == sent
    (isb,) = read_isbs(out)
    assert isb["isb_osdrop"] == 0
    assert isb["isb_filteraccept"] == sent  # no filter: every packet accepted
