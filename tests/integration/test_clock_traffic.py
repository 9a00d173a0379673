"""Clocks aligned from the traffic, on the lab: hosts skewed by the test hook, the
truth known (the lab's hosts share one real clock), the merge causally exact."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .agent_helpers import tshark_fields
from .lab_helpers import inventory_with, pings_between_all, private_lab, xdpcap

SKEWS = {1: 300_000_000, 2: -150_000_000}  # host index → skew of its clock (ns)
TOLERANCE_NS = 20_000
# Answers every connection with what it received, until killed.
ECHO_SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 7090))
print("up", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100))
    c.close()
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with private_lab("clk", tmp_path_factory.mktemp("clklab")) as lab:
        yield lab


def _skewed_inventory(lab, tmp_path: Path) -> Path:
    return inventory_with(
        lab,
        tmp_path,
        {lab.hosts[i].name: {"xdpcap_test_clock_skew_ns": skew} for i, skew in SKEWS.items()},
    )


def _tcp_between_all(lab) -> None:
    """A short TCP exchange from every host to every other (SYN, SYN-ACK, data, FIN)."""
    servers = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                h.namespace,
                sys.executable,
                "-c",
                ECHO_SERVER,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for h in lab.hosts
    ]
    try:
        for server in servers:
            assert server.stdout.readline().strip() == "up"
        for src in lab.hosts:
            for dst in lab.hosts:
                if src is not dst:
                    code = (
                        f"import socket; c = socket.create_connection(('{dst.ipv4}', 7090));"
                        " c.sendall(b'x' * 64); c.recv(100); c.close()"
                    )
                    subprocess.run(
                        ["ip", "netns", "exec", src.namespace, sys.executable, "-c", code],
                        check=True, timeout=30,
                    )  # fmt: skip
    finally:
        for server in servers:
            server.kill()
            server.wait()


def _run(lab, inventory: Path, tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    with pings_between_all(lab, seconds=30):
        failures: list[BaseException] = []

        def talk_tcp() -> None:
            try:
                _tcp_between_all(lab)
            except BaseException as exc:  # raised in the test, not lost in the thread
                failures.append(exc)

        talk = threading.Thread(target=talk_tcp)
        talk.start()
        result = xdpcap(
            "run", "-i", str(inventory), "--duration", "4",
            "--runs-dir", str(tmp_path / "runs"), *extra,
        )  # fmt: skip
        talk.join()
    assert not failures, failures
    assert result.returncode == 0, result.stderr
    merged = Path(result.stdout.strip().splitlines()[-1])
    return merged, json.loads((merged.parent / "run.json").read_text())


def _echo_inversions(merged: Path) -> tuple[int, int]:
    """(echo pairs, replies before their request), each packet where it arrived."""
    rows = tshark_fields(
        merged, "frame.time_epoch", "icmp.type", "icmp.ident", "icmp.seq", "ip.src", "ip.dst",
        display_filter="(icmp.type == 8 || icmp.type == 0) && frame.packet_flags_direction == 1",
    )  # fmt: skip
    requests, replies = {}, {}
    for ts, kind, ident, seq, src, dst in rows:
        if kind == "8":
            requests[(ident, seq, src, dst)] = float(ts)
        else:
            replies[(ident, seq, dst, src)] = float(ts)
    pairs = [(requests[k], t) for k, t in replies.items() if k in requests]
    return len(pairs), sum(1 for request, reply in pairs if reply < request)


def _arrivals_before_departures(merged: Path) -> tuple[int, int]:
    """(packets seen leaving one host and arriving at another, those arriving first)."""
    rows = tshark_fields(
        merged, "frame.number", "frame.packet_flags_direction", "ip.id", "ip.src", "ip.dst",
        "ip.proto", "frame.interface_id", display_filter="ip",
    )  # fmt: skip
    left, arrived = {}, {}
    for number, direction, *key_and_iface in rows:
        key, iface = tuple(key_and_iface[:4]), key_and_iface[4]
        (left if direction == "0x00000002" else arrived).setdefault(key, []).append(
            (int(number), iface)
        )
    pairs = inverted = 0
    for key, departures in left.items():
        if len(departures) != 1 or len(arrived.get(key, [])) != 1:
            continue  # ambiguous (ip.id reused): not this check's business
        (out_number, out_iface), (in_number, in_iface) = departures[0], arrived[key][0]
        if out_iface != in_iface:
            pairs += 1
            inverted += in_number < out_number  # frame order is the merged time order
    return pairs, inverted


def test_skewed_hosts_are_aligned_exactly(lab, tmp_path: Path) -> None:
    inventory = _skewed_inventory(lab, tmp_path)
    names = [h.name for h in lab.hosts]
    for attempt in range(2):  # in every run, not on average
        merged, run = _run(lab, inventory, tmp_path / str(attempt))
        alignment = run["clock_alignment"]
        assert alignment["reference"] == names[0] and alignment["inconsistent"] == []
        for index, name in enumerate(names):
            shift = next(h["clock_shift_ns"] for h in run["hosts"] if h["name"] == name)
            assert abs(shift - SKEWS.get(index, 0)) <= TOLERANCE_NS, (name, shift)
            if index:
                assert alignment["hosts"][name]["source"] == "traffic"
                lower, upper = alignment["hosts"][name]["feasible_ns"]
                assert lower <= SKEWS[index] <= upper  # the truth is inside the interval
        pairs, inverted = _echo_inversions(merged)
        assert pairs >= 6 * 20 and inverted == 0
        pairs, inverted = _arrivals_before_departures(merged)
        assert pairs >= 6 * 40 and inverted == 0
        delays = alignment["one_way_delays"]
        assert len(delays) == 6  # every ordered pair of hosts
        assert all(0 <= d["min_ns"] <= d["median_ns"] < 5_000_000 for d in delays)


def test_ingress_only_answers_still_order_the_hosts(lab, tmp_path: Path) -> None:
    merged, run = _run(lab, _skewed_inventory(lab, tmp_path), tmp_path, "-Q", "in")
    alignment = run["clock_alignment"]
    assert alignment["bounds_same_packet"] == 0 and alignment["bounds_answer"] >= 6
    pairs, inverted = _echo_inversions(merged)
    assert pairs >= 6 * 20 and inverted == 0
    for index, skew in SKEWS.items():
        lower, upper = alignment["hosts"][lab.hosts[index].name]["feasible_ns"]
        assert lower <= skew <= upper


def test_merge_aligns_any_files_the_same_way(lab, tmp_path: Path) -> None:
    _merged, run = _run(lab, _skewed_inventory(lab, tmp_path), tmp_path)
    files = [h["local_file"] for h in run["hosts"]]
    again = tmp_path / "again.pcapng"
    result = xdpcap("merge", *files, "-w", str(again))
    assert result.returncode == 0, result.stderr
    assert "clocks aligned from the traffic" in result.stderr
    assert _echo_inversions(again)[1] == 0
    assert _arrivals_before_departures(again)[1] == 0
    raw = tmp_path / "raw.pcapng"
    assert xdpcap("merge", *files, "-w", str(raw), "--no-clock-correction").returncode == 0
    assert _arrivals_before_departures(raw)[1] > 0  # the skews, uncorrected, invert pairs


def test_a_drifting_clock_is_followed_over_a_long_capture(lab, tmp_path: Path) -> None:
    """100 ppm over 30 s is 3 ms by the end, a hundred times a lab's one-way delay."""
    drifting = lab.hosts[2].name
    inventory = inventory_with(lab, tmp_path, {drifting: {"xdpcap_test_clock_rate_ppm": 100}})
    with pings_between_all(lab, seconds=90):
        result = xdpcap(
            "run", "-i", str(inventory), "--duration", "30",
            "--runs-dir", str(tmp_path / "runs"), "icmp", timeout=240,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    merged = Path(result.stdout.strip().splitlines()[-1])
    alignment = json.loads((merged.parent / "run.json").read_text())["clock_alignment"]
    assert alignment["inconsistent"] == []
    rates = {name: host["drift_ppb"] for name, host in alignment["hosts"].items()}
    # Against whichever host is the reference, the drifting one runs 100 ppm faster.
    steady = [name for name in rates if name != drifting]
    for name in steady:
        assert abs(rates[drifting] - rates[name] - 100_000) < 1_000, rates
    pairs, inverted = _echo_inversions(merged)
    assert pairs >= 6 * 250 and inverted == 0
    pairs, inverted = _arrivals_before_departures(merged)
    assert pairs >= 6 * 500 and inverted == 0
