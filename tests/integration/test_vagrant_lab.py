"""`xdpcap run` across real VMs (issue 28): Debian 12's own 6.1 kernel, virtio NICs, real
SSH and clocks of their own, booted by Vagrant (vagrant-libvirt, QEMU; KVM where it works).

One lab for the module (booting it is most of the time); it is destroyed at the end, even
when a test fails, and the destroy is checked to leave nothing but the box's cache.
XDPCAP_VM_NODES sets the number of VMs (default 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .agent_helpers import capinfos, tshark_fields
from .lab_helpers import xdpcap
from .vm_lab import VmLab, missing_prerequisite, nodes_wanted, pings_between_all, vm_lab

RUN_TIMEOUT = 600
# bcc compiles the sampler in each VM the first time: tens of seconds without KVM.
READY = ("--ready-timeout", "300")


@pytest.fixture(scope="module")
def vms(tmp_path_factory) -> VmLab:
    reason = missing_prerequisite()
    if reason is not None:
        if os.environ.get("XDPCAP_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"missing prerequisite in CI: {reason}")
        pytest.skip(reason)
    with vm_lab(tmp_path_factory.mktemp("vms"), nodes_wanted()) as lab:
        yield lab


def _merged(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def _run_json(merged: Path) -> dict:
    return json.loads((merged.parent / "run.json").read_text())


def test_run_across_the_vms(vms: VmLab, tmp_path: Path) -> None:
    """One interface per VM, both directions, clsact egress chosen by itself on 6.1, the
    sampler compiled against the VM's own headers, native XDP on virtio_net, and clocks
    aligned from the traffic: every ping leaves its sender before it reaches its receiver."""
    with pings_between_all(vms, seconds=600):
        time.sleep(5)  # the pings start over SSH: seconds under QEMU without KVM
        result = xdpcap(
            "run", "-i", str(vms.inventory), "--accept-new-host-keys", "--duration", "10", *READY,
            "--runs-dir", str(tmp_path / "runs"), timeout=RUN_TIMEOUT,
        )  # fmt: skip
    print(result.stderr)
    merged = _merged(result)
    assert "Strict time order:   True" in capinfos(merged)
    ifaces = {f"{n.name}:eth1" for n in vms.nodes}
    described = dict(tshark_fields(merged, "frame.interface_name", "frame.interface_description"))
    assert set(described) == ifaces
    for description in described.values():
        # 6.1 has no tcx: the egress hook fell back to clsact without being asked.
        assert "XDP ingress native (bpf_link) + clsact egress" in description, description

    run = _run_json(merged)
    for host in run["hosts"]:
        assert host["state"] == "done", host
        assert host["summary"]["mode"] == "native"  # virtio_net's own XDP, not generic
        assert host["summary"]["unaccounted"] == 0
        assert set(host["summary"]["directions"]) == {"in", "out"}
        assert all(host["summary"]["directions"][d]["written"] > 0 for d in ("in", "out"))
        # The VM's own headers: the sampler was compiled for the kernel it runs.
        assert "(running kernel 6.1." in host["headers"], host["headers"]
        print(f"{host['name']}: clock {host['clock']}, shift {host['clock_shift_ns']} ns")
    alignment = run["clock_alignment"]
    print(json.dumps({k: alignment[k] for k in ("reference", "hosts")}, indent=1))
    assert set(alignment["hosts"]) == {n.name for n in vms.nodes}

    pairs = len(vms.nodes) * (len(vms.nodes) - 1)
    complete, inversions = _ping_order(merged, {n.private_ip: f"{n.name}:eth1" for n in vms.nodes})
    print(f"{complete} pings seen leaving and arriving, {inversions} inversions")
    assert complete >= pairs * 2 * 10  # requests and replies, 5/s for 10 s, with margin
    assert inversions == 0


def _ping_order(merged: Path, iface_of: dict[str, str]) -> tuple[int, int]:
    """(packets seen on both hosts, how many of those arrive before they left)."""
    rows = tshark_fields(
        merged, "frame.number", "frame.interface_name", "frame.packet_flags_direction",
        "icmp.type", "icmp.ident", "icmp.seq", "ip.src", "ip.dst",
        display_filter="icmp.type == 8 || icmp.type == 0",
    )  # fmt: skip
    copies: dict[tuple, list[tuple[str, str]]] = {}
    for _number, iface, direction, *packet in rows:
        copies.setdefault(tuple(packet), []).append((iface, direction))
    complete = inversions = 0
    for (_kind, _ident, _seq, src, dst), seen in copies.items():
        if len(seen) < 2:  # cut by a window's edge on one side
            continue
        complete += 1
        expected = [(iface_of[src], "0x00000002"), (iface_of[dst], "0x00000001")]
        inversions += seen != expected
    return complete, inversions


def test_filter_written_to_stdout(vms: VmLab, tmp_path: Path) -> None:
    """A capture filter runs in every VM's sampler, and `-w -` streams the merge."""
    first = vms.nodes[0]
    out = tmp_path / "stdout.pcapng"
    with pings_between_all(vms, seconds=600), out.open("wb") as sink:
        time.sleep(5)
        proc = subprocess.run(
            [sys.executable, "-m", "xdpcap.orchestrator", "run", "-i", str(vms.inventory),
             "--duration", "6", *READY, "--runs-dir", str(tmp_path / "runs"), "-w", "-",
             "--", "icmp", "and", "host", first.private_ip],
            stdout=sink, stderr=subprocess.PIPE, text=False, timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    err = proc.stderr.decode(errors="replace")
    print(err)
    assert proc.returncode == 0, err
    rows = tshark_fields(out, "frame.interface_name", "ip.src", "ip.dst", "icmp.type")
    assert rows
    assert {row[0] for row in rows} == {f"{n.name}:eth1" for n in vms.nodes}
    for _iface, src, dst, kind in rows:
        assert kind in ("0", "8") and first.private_ip in (src, dst), (src, dst, kind)


def _cut_ssh_connections(address: str) -> None:
    cut = subprocess.run(
        ["ss", "-K", "dst", address, "dport", "=", "22"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert cut.returncode == 0, cut.stderr


def _wait_attached(vms: VmLab, node, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not _attached(vms, node):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the sampler never reached {node.name}"
        time.sleep(1)


def _attached(vms: VmLab, node) -> bool:
    """The sampler's XDP program is on NODE's capture NIC (`ip -j link` shows it)."""
    out = vms.ssh(node, "ip -j -d link show dev eth1")
    return '"xdp"' in out


def test_suspended_vm_is_collected_after_resume(vms: VmLab, tmp_path: Path) -> None:
    """A VM paused mid-capture (`vagrant suspend`), its connections cut, fails the run;
    once resumed, its agent finishes its window (its clock now behind by the pause) and
    `xdpcap collect` fetches it and merges every VM."""
    paused = vms.nodes[-1]
    with pings_between_all(vms, seconds=600):
        proc = subprocess.Popen(
            [sys.executable, "-m", "xdpcap.orchestrator", "run", "-i", str(vms.inventory),
             "--duration", "25", "--reconnect-wait", "5", *READY,
             "--runs-dir", str(tmp_path / "runs")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _wait_attached(vms, paused, proc)
            time.sleep(5)  # packets in the VM's file before it stops
            assert vms.vagrant("suspend", paused.name).returncode == 0
            # A paused VM keeps its TCP connections open and silent: the run would wait
            # for it to come back. Cut them, as a network that failed with it would.
            _cut_ssh_connections(paused.address)
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            resumed = vms.vagrant("resume", paused.name)
    print(err)
    assert resumed.returncode == 0, resumed.stderr
    assert proc.returncode == 3, err
    assert "xdpcap collect" in err
    run_dir = Path(out.strip().splitlines()[-1]).parent
    collected = xdpcap("collect", str(run_dir), "--wait", "300", timeout=RUN_TIMEOUT)
    print(collected.stderr)
    merged = _merged(collected)
    names = {row[0] for row in tshark_fields(merged, "frame.interface_name")}
    assert f"{paused.name}:eth1" in names
    host = next(h for h in _run_json(merged)["hosts"] if h["name"] == paused.name)
    assert host["state"] == "done" and host["summary"]["unaccounted"] == 0
    # Its clock stood still while paused (no NTP in the VMs): the probe after the resume
    # finds it behind by the pause, though its packets before the pause were stamped
    # with the old offset. Reported, not asserted: a clock that steps mid-capture is
    # beyond an offset-and-drift alignment.
    complete, inversions = _ping_order(merged, {n.private_ip: f"{n.name}:eth1" for n in vms.nodes})
    print(
        f"{paused.name}: clock {host['clock']}; {complete} pings seen on both sides, "
        f"{inversions} inversions"
    )
    assert not _attached(vms, paused)  # the agent detached at the end of its window
