"""Draining and formatting are apart: slow formatting fills the backlog, not the rings.

The agent runs for real on a veth with real XDP, with two test-side changes made before
it starts (no hook in the agent): formatting is slowed by a sleep per chunk, and the
perf rings are two pages per CPU, 8 KiB. Without the backlog such a
capture loses most of a ping burst; with it nothing is lost. With the backlog capped
to nothing the kernel's losses appear, and every one is accounted for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .agent_helpers import capinfos, read_isbs, tshark_fields, wait_for_event
from .veth import in_ns, veth_pair

# Runs the agent's own main() after setting the cap and slowing formatting to 12 ms
# per piece of at most 1 KiB (4 samples here): 3 ms a sample, where one arrives every 2.
SLOW_AGENT = """
import sys, time
from xdpcap.agent import capture
from xdpcap.agent import consumer
capture.BACKLOG_MAX_BYTES = int(sys.argv[1])
capture.FORMAT_PIECE_BYTES = 1024
parse = consumer.SampleConsumer.parse
def slow_parse(self, *args):
    time.sleep(0.012)
    return parse(self, *args)
consumer.SampleConsumer.parse = slow_parse
from xdpcap.agent.__main__ import main
sys.exit(main(sys.argv[2:]))
"""
PINGS = 300


@pytest.fixture
def pair():
    with veth_pair("bl") as p:
        yield p


def _capture_burst(pair, tmp_path: Path, backlog_max: int) -> tuple[dict, Path, int]:
    out = tmp_path / "cap.pcapng"
    rx_before = pair.rx_packets()
    argv = ["ip", "netns", "exec", pair.capture_ns, sys.executable, "-c", SLOW_AGENT]
    argv += [str(backlog_max), "capture", "--json-events", "-Q", "in", "-i", pair.capture_if]
    argv += ["-w", str(out), "--duration", "4", "--snaplen", "200", "--buffer-pages", "2"]
    agent = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_event(agent, "capturing")
        # 300 echo requests of 1042 bytes in 0.6 s: a two-page ring holds about 32.
        in_ns(pair.peer_ns, "ping", "-q", "-c", str(PINGS), "-i", "0.002", "-s", "1000",
              "-W", "1", pair.capture_ip, check=False)  # fmt: skip
        done = wait_for_event(agent, "done", timeout=60)
    finally:
        agent.wait(timeout=60)
    assert agent.returncode == 0, agent.stderr.read() if agent.stderr else ""
    return done, out, pair.rx_packets() - rx_before


def test_slow_formatting_loses_nothing(pair, tmp_path: Path) -> None:
    done, out, reached = _capture_burst(pair, tmp_path, backlog_max=128 << 20)
    assert done["lost"] == 0, done["lost_detail"]
    assert done["written"] == done["seen"] == reached >= PINGS
    assert done["backlog_peak_bytes"] > 4096 * 4  # more than the rings could ever hold
    assert done["unaccounted"] == 0
    assert "Strict time order:   True" in capinfos(out)
    requests = tshark_fields(out, "frame.time_epoch", display_filter="icmp.type == 8")
    assert len(requests) == PINGS
    # The program stamps wall-clock time: every packet inside the capture window.
    start, end = done["window_start_ns"] / 1e9, done["window_end_ns"] / 1e9
    assert all(start <= float(t) <= end for (t,) in requests)


def test_full_backlog_leaves_the_loss_to_the_kernel_and_counts_it(pair, tmp_path: Path) -> None:
    done, out, reached = _capture_burst(pair, tmp_path, backlog_max=1)
    assert done["lost_detail"]["perf_buffer_full"] > 0
    assert done["seen"] == reached
    assert done["seen"] == done["written"] + done["lost"] + done["not_sampled"]
    assert done["unaccounted"] == 0
    (isb,) = read_isbs(out)
    assert isb["isb_ifrecv"] == done["seen"]
    assert isb["isb_ifdrop"] == done["lost"]
    assert isb["isb_usrdeliv"] == done["written"]
