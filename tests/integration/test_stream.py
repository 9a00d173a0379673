"""The live stream end to end on the namespace lab: `xdpcap run -w -` into a reader that
notes when each packet arrives, a host stopped mid-stream, a reader that goes away, and
Wireshark's own engine (tshark) driving the extcap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pcapng
import pytest
from xdpcap.orchestrator.cli import extcap

from .agent_helpers import capinfos, tshark_fields
from .lab_helpers import pings_between_all, private_lab, udp_between_all, xdpcap

READER = Path(__file__).with_name("stream_reader.py")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with private_lab("strm", tmp_path_factory.mktemp("streamlab")) as lab:
        yield lab


class Streamed:
    """`xdpcap run ... -w -` piped into stream_reader.py."""

    def __init__(self, tmp_path: Path, *run_args: str, reader_args: tuple[str, ...] = ()):
        self.seen_path = tmp_path / "seen.json"
        self.raw = tmp_path / "stream.pcapng"
        self.progress = tmp_path / "progress.json"
        self.runs = tmp_path / "runs"
        self.stderr_path = tmp_path / "xdpcap.stderr"
        self.reader = subprocess.Popen(
            [
                sys.executable,
                str(READER),
                str(self.seen_path),
                "--save",
                str(self.raw),
                "--progress",
                str(self.progress),
                *reader_args,
            ],
            stdin=subprocess.PIPE,
        )
        with self.stderr_path.open("w") as stderr:
            self.xdpcap = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "xdpcap.orchestrator",
                    "run",
                    "--runs-dir",
                    str(self.runs),
                    "-w",
                    "-",
                    *run_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=self.reader.stdin,
                stderr=stderr,
            )
        self.reader.stdin.close()  # the reader's end of file is xdpcap's alone

    def wait(self, timeout: float = 180) -> int:
        try:
            code = self.xdpcap.wait(timeout)
            self.reader.wait(30)
        finally:
            for proc in (self.xdpcap, self.reader):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return code

    def wait_until_every_host_streams(self, hosts: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.progress.exists():
                counts = json.loads(self.progress.read_text())["packets_per_interface"]
                if len(counts) >= hosts:
                    return
            assert self.xdpcap.poll() is None, self.stderr
            time.sleep(0.1)
        raise AssertionError(f"not every host streamed within {timeout} s: {self.stderr}")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def seen(self) -> dict:
        return json.loads(self.seen_path.read_text())

    def run_json(self) -> dict:
        (folder,) = list(self.runs.iterdir())
        return json.loads((folder / "run.json").read_text())


def _file_packets(path: Path, name_of) -> Counter:
    """(interface name, timestamp, bytes) of every packet of a pcapng, by python-pcapng."""
    import hashlib

    found: Counter = Counter()
    names: list[str] = []
    with path.open("rb") as f:
        for block in pcapng.FileScanner(f):
            if isinstance(block, pcapng.blocks.InterfaceDescription):
                names.append(name_of(block.options["if_name"]))
            elif isinstance(block, pcapng.blocks.EnhancedPacket):
                ts = block.timestamp_high << 32 | block.timestamp_low
                digest = hashlib.blake2b(block.packet_data, digest_size=8).hexdigest()
                found[(names[block.interface_id], ts, digest)] += 1
    return found


def _stream_packets(seen: dict) -> Counter:
    names = [i["name"] for i in seen["interfaces"]]
    return Counter((names[p[1]], p[2], p[4]) for p in seen["packets"])


def _closes(host: dict) -> None:
    s = host["summary"]
    assert s["unaccounted"] == 0 and s["seen"] == (
        s["filtered_out"] + s["written"] + s["lost"] + s["not_sampled"] + s["past_count"]
    )


def test_the_stream_is_live_ordered_and_holds_every_packet(lab, tmp_path: Path) -> None:
    with pings_between_all(lab, seconds=30):
        run = Streamed(tmp_path, "-i", str(lab.inventory_path), "--duration", "8")
        assert run.wait() == 0, run.stderr
    seen, data = run.seen, run.run_json()
    packets = seen["packets"]
    # One interface block per host:iface, each before that host's first packet.
    assert sorted(i["name"] for i in seen["interfaces"]) == sorted(
        f"{h.name}:eth0" for h in lab.hosts
    )
    assert {p[1] for p in packets} == {0, 1, 2}
    stamps = [p[2] for p in packets]
    assert stamps == sorted(stamps)
    assert seen["trailing_bytes"] == 0 and seen["statistics"] == 3
    # Live: most packets reached the reader while the capture window was still open.
    window_end = min(h["window_start_ns"] for h in data["hosts"]) + 8 * 10**9
    assert sum(p[0] < window_end for p in packets) > len(packets) / 2
    # Wireshark's tools read the stream as it came.
    assert "Strict time order:   True" in capinfos(run.raw)
    assert len(tshark_fields(run.raw, "frame.number")) == len(packets)
    # Every packet of the run folder, frame for frame: the hosts' own files (same clock
    # here, so the same timestamps) and the count of the verified merged file.
    folder = Path(data["merged"]).parent
    from_hosts: Counter = Counter()
    for host in data["hosts"]:
        _closes(host)
        from_hosts += _file_packets(
            Path(host["local_file"]), lambda _n, h=host: f"{h['name']}:eth0"
        )
    assert _stream_packets(seen) == from_hosts
    merged = _file_packets(folder / "merged.pcapng", lambda name: name)
    assert sum(merged.values()) == len(packets)
    stream = data["stream"]
    assert stream["packets"] == len(packets) and not stream["reader_gone"]
    # The stream's own SSH traffic is left out of every capture (else it feeds itself).
    for host in data["hosts"]:
        assert host["filter"].startswith("not (host ") and "tcp port 22)" in host["filter"]
        assert host["summary"]["filtered_out"] > 0
    for counts in stream["hosts"].values():
        assert counts["late"] == counts["skipped_host"] == counts["skipped_controller"] == 0
        assert counts["unsent"] == 0
    assert f"live stream: {len(packets)} of the {len(packets)} packets" in run.stderr


def test_a_slow_reader_costs_the_stream_packets_never_the_hosts(lab, tmp_path: Path) -> None:
    # A reader taking 32 KiB/s, 1 MiB of controller memory for the stream, and some
    # 400 KB/s of packets to stream: the controller must skip, the agents lose nothing.
    with udp_between_all(lab, rate=300, seconds=60):
        run = Streamed(
            tmp_path,
            "-i",
            str(lab.inventory_path),
            "--duration",
            "6",
            "--stream-buffer",
            "1",
            reader_args=("--throttle", str(32 << 10)),
        )
        assert run.wait(timeout=300) == 0, run.stderr
    seen, data = run.seen, run.run_json()
    stamps = [p[2] for p in seen["packets"]]
    assert stamps == sorted(stamps)
    skipped = 0
    for host in data["hosts"]:
        _closes(host)
        assert host["summary"]["lost"] == 0
        c = data["stream"]["hosts"][host["name"]]
        assert host["summary"]["written"] == (
            c["written"] + c["late"] + c["skipped_host"] + c["skipped_controller"] + c["unsent"]
        )
        skipped += c["skipped_controller"]
    assert skipped > 0
    assert len(seen["packets"]) == data["stream"]["packets"]
    assert "skipped at the controller" in run.stderr


def _agent_pid(namespace: str) -> int:
    """The capture agent's process in a lab host's namespace."""
    pids = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=True
    ).stdout.split()
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"xdpcap-agent" in part for part in cmdline) and b"capture" in cmdline:
            return int(pid)
    raise AssertionError(f"no capture agent in {namespace}")


def test_a_stopped_host_is_left_out_and_its_late_packets_counted(lab, tmp_path: Path) -> None:
    stopped = lab.hosts[1]
    with pings_between_all(lab, seconds=40):
        run = Streamed(tmp_path, "-i", str(lab.inventory_path), "--duration", "12")
        run.wait_until_every_host_streams(len(lab.hosts))
        pid = _agent_pid(stopped.namespace)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.time_ns()
        time.sleep(3)
        os.kill(pid, signal.SIGCONT)
        resumed_at = time.time_ns()
        assert run.wait() == 0, run.stderr
    seen, data = run.seen, run.run_json()
    names = [i["name"] for i in seen["interfaces"]]
    assert f"{stopped.name}: nothing heard for" in run.stderr
    # The others kept flowing once the stopped host was left out (idle time: 2 s).
    others = [p for p in seen["packets"] if names[p[1]] != f"{stopped.name}:eth0"]
    assert any(stopped_at + 2 * 10**9 < p[0] < resumed_at for p in others)
    stamps = [p[2] for p in seen["packets"]]
    assert stamps == sorted(stamps)  # late packets were never written out of order
    counts = data["stream"]["hosts"][stopped.name]
    assert counts["late"] > 0
    for host in data["hosts"]:
        _closes(host)  # nothing is missing from the run folder
        c = data["stream"]["hosts"][host["name"]]
        # What the host wrote = what the stream carried + what it could not, and why.
        assert host["summary"]["written"] == (
            c["written"] + c["late"] + c["skipped_host"] + c["skipped_controller"] + c["unsent"]
        )


def test_the_reader_going_away_stops_the_run_as_ctrl_c(lab, tmp_path: Path) -> None:
    with pings_between_all(lab, seconds=60):
        run = Streamed(
            tmp_path,
            "-i",
            str(lab.inventory_path),
            "--duration",
            "60",
            reader_args=("--stop-after", "100"),
        )
        assert run.wait() == 0, run.stderr
    assert len(run.seen["packets"]) >= 100
    data = run.run_json()
    assert "the live stream's reader went away: stopping every agent" in run.stderr
    assert data["interrupted"] and data["stream"]["reader_gone"]
    assert data["merged"] and Path(data["merged"]).exists()
    for host in data["hosts"]:
        assert host["state"] == "done"
        assert host["summary"]["stopped_by"] == "controller"
        _closes(host)


@pytest.fixture
def installed_extcap():
    """xdpcap's launcher in tshark's extcap folder, removed afterwards whatever happens."""
    folder = extcap.extcap_folder()
    before = sorted(os.listdir(folder))
    assert extcap.LAUNCHER_NAME not in before, "a launcher is already installed"
    try:
        result = xdpcap("extcap", "install", timeout=60)
        assert result.returncode == 0, result.stderr
        yield folder
    finally:
        result = xdpcap("extcap", "uninstall", timeout=60)
        (folder / extcap.LAUNCHER_NAME).unlink(missing_ok=True)  # whatever happened above
    assert result.returncode == 0 and "removed" in result.stdout, result.stdout + result.stderr
    assert sorted(os.listdir(folder)) == before


def _finished_run(path: Path, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = json.loads(path.read_text())
        if data["merged"]:
            return data
        time.sleep(0.2)
    raise AssertionError(f"the run did not finish within {timeout} s: {path}")


def _tshark(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["tshark", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_tshark_captures_across_the_hosts_through_the_extcap(
    lab, tmp_path: Path, installed_extcap: Path
) -> None:
    # Wireshark's questions, asked by tshark itself.
    listed = _tshark("-D")
    assert "xdpcap (xdpcap: many hosts over SSH, merged in time order)" in listed.stdout, (
        listed.stdout + listed.stderr
    )
    dlts = _tshark("-i", "xdpcap", "-L")
    assert "EN10MB" in dlts.stdout, dlts.stdout + dlts.stderr
    prefs = _tshark("-G", "defaultprefs").stdout
    for name in ("inventory", "iface", "duration", "count", "snaplen", "direction", "limit"):
        assert f"#extcap.xdpcap.{name}:" in prefs
    out = tmp_path / "out.pcapng"
    runs = tmp_path / "runs"
    with pings_between_all(lab, seconds=40):
        result = _tshark(
            "-i",
            "xdpcap",
            "-o",
            f"extcap.xdpcap.inventory:{lab.inventory_path}",
            "-o",
            "extcap.xdpcap.iface:eth0",
            "-o",
            "extcap.xdpcap.duration:8",
            "-o",
            f"extcap.xdpcap.runsdir:{runs}",
            "-f",
            "icmp",
            "-w",
            str(out),
            timeout=180,
        )
    log = runs / extcap.LOG_NAME
    said = log.read_text() if log.exists() else "(no log)"
    assert result.returncode == 0, result.stderr + said
    rows = tshark_fields(out, "frame.interface_name", "ip.proto")
    assert {row[0] for row in rows} == {f"{h.name}:eth0" for h in lab.hosts}, said
    assert {row[1] for row in rows} == {"1"}  # the capture-filter box reached every host
    assert "Strict time order:   True" in capinfos(out)
    # The run folder, as after any run, and what the extcap said went to its log. tshark
    # is done once the stream ends; the extcap goes on to fetch and merge.
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    data = _finished_run(folder / "run.json")
    # Each host ran the box's filter, leaving out the stream's own SSH connection.
    for host in data["hosts"]:
        assert host["filter"].startswith("(icmp) and not (host ")
    assert data["stream"]["packets"] == len(rows)
    assert "live stream:" in (runs / extcap.LOG_NAME).read_text()
