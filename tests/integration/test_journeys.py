"""Journeys on the namespace lab: a link that loses packets (ebtables in the bridge drops
h1's UDP to h3 for a while, before h3's capture point) shows up as
loss on that pair only, and the merged file's packet ids link each packet's sightings:
outbound on the sender first, then inbound on the receiver."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import pytest

from .lab_helpers import private_lab, udp_sender, xdpcap

pytestmark = pytest.mark.integration
PORT = 7091


@contextmanager
def _lossy_link(device: str, src: str, dst: str):
    """Drop h1's UDP packets to h3 for 0.5 s of every 2 s, in the bridge (ebtables, out of
    the port towards h3), so h3 never sees them: loss and arrivals in any capture window,
    however long the run takes to start. (This kernel has no netem, nor tc's gact.)"""
    rule = ["FORWARD", "-o", device, "-p", "IPv4", "--ip-src", src, "--ip-dst", dst,
            "--ip-proto", "udp", "-j", "DROP"]  # fmt: skip
    stop = threading.Event()

    def flap() -> None:
        while not stop.wait(1.5):
            subprocess.run(["ebtables", "-A", *rule], check=True)
            stop.wait(0.5)
            subprocess.run(["ebtables", "-D", *rule], check=True)

    thread = threading.Thread(target=flap, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def test_loss_on_one_link_and_packet_ids_link_the_sightings(tmp_path: Path) -> None:
    with private_lab("jrny", tmp_path) as lab:
        h1, h2, h3 = lab.hosts
        with _lossy_link(h3.veth_root, h1.ipv4, h3.ipv4):
            sender = subprocess.Popen(udp_sender(h1.namespace, 40, 60, PORT, h2.ipv4, h3.ipv4))
            try:
                result = xdpcap(
                    "run", "-i", str(lab.inventory_path), "--duration", "5",
                    "--runs-dir", str(tmp_path / "runs"), "--", "udp", "port", str(PORT),
                )  # fmt: skip
            finally:
                sender.kill()
                sender.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    merged = Path(result.stdout.strip().splitlines()[-1])
    run = json.loads((merged.parent / "run.json").read_text())
    pairs = {(p["sender"], p["receiver"]): p for p in run["journeys"]["pairs"]}
    to_h2, to_h3 = pairs[(h1.name, h2.name)], pairs[(h1.name, h3.name)]
    assert to_h2["lost"] == 0 and to_h2["arrived"] == to_h2["left"] > 50
    assert to_h3["lost"] > 0 and to_h3["arrived"] + to_h3["lost"] == to_h3["left"]
    assert all(p["lost"] == 0 for key, p in pairs.items() if key != (h1.name, h3.name))
    assert all(e["dport"] == PORT for e in to_h3["lost_examples"])
    assert (merged.parent / "report.html").exists()

    # The merged file: one id per packet seen at two points, sightings in order.
    rows = subprocess.run(
        ["tshark", "-r", str(merged), "-T", "fields", "-e", "frame.packet_id",
         "-e", "frame.interface_name", "-e", "frame.packet_flags_direction", "-e", "ip.dst"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    groups: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    unmarked = defaultdict(int)
    for row in rows:
        packet_id, iface, direction, dst = row.split("\t")
        if packet_id:
            groups[packet_id].append((iface.split(":")[0], direction, dst))
        else:
            unmarked[dst] += 1
    assert len(groups) == to_h2["arrived"] + to_h3["arrived"]
    for sightings in groups.values():
        (first, out, dst), (second, into, _) = sightings
        assert (first, out) == (h1.name, "0x00000002")  # outbound on the sender first
        assert second == (h2.name if dst == h2.ipv4 else h3.name) and into == "0x00000001"
    # Only packets seen once go without an id: h1's lost ones to h3, and at most one per
    # receiver sent as its window closed (it arrived after: neither left nor lost).
    assert 0 <= unmarked.pop(h3.ipv4, 0) - to_h3["lost"] <= 1
    assert unmarked.pop(h2.ipv4, 0) <= 1 and not unmarked
