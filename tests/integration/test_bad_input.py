"""Bad input is refused before anything happens: exit 2, one line naming the problem.

Every case but the merge ones runs against an inventory whose hosts are real, reachable
lab hosts, and proves that nothing was done on any of them: no run folder appears under
--runs-dir, and the host's sshd logged no connection at all (its log is private to the
lab, unlike ~/.cache/xdpcap, which every lab on this machine shares). A control test
shows that a real connection does leave a trace in that log, so its silence means
something.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from xdpcap.agent.pcapng import PcapngWriter

from .agent_helpers import tshark_fields
from .lab_helpers import inventory_with, private_lab, xdpcap


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with private_lab("bad", tmp_path_factory.mktemp("badlab"), hosts=2) as lab:
        _wait_for_readiness_probes(lab)
        yield lab


def _sshd_logs(lab) -> dict[str, str]:
    return {h.name: (lab.host_dir(h) / "sshd.log").read_text() for h in lab.hosts}


_CLIENT_PORT = re.compile(r"(?:from|by) \S+ port (\d+)")


def _new_connections(before: dict[str, str], after: dict[str, str]) -> dict[str, set[str]]:
    """Per host, the client ports sshd logged since `before` that it had not logged
    before: new connections. (A connection of an earlier test may still log its end.)"""
    found = {}
    for name, text in after.items():
        seen = set(_CLIENT_PORT.findall(before[name]))
        new = set(_CLIENT_PORT.findall(text[len(before[name]) :])) - seen
        if new:
            found[name] = new
    return found


def _wait_for_readiness_probes(lab, timeout: float = 10.0) -> None:
    """`lab up` probes each sshd's banner; sshd logs that probe a moment later, and it
    must not land in the first test's window."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = _sshd_logs(lab).values()
        if all(any("listening" not in line for line in log.splitlines()) for log in logs):
            return
        time.sleep(0.1)


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _assert_refused(lab, tmp_path: Path, *args: str, words: tuple[str, ...]) -> str:
    """Run `xdpcap ARGS --runs-dir ...`; exit 2, one line with WORDS, no host touched."""
    runs = tmp_path / "runs"
    logs_before = _sshd_logs(lab)
    result = xdpcap(*args, "--runs-dir", str(runs))
    line = _one_line(result)
    assert result.returncode == 2, (result.returncode, result.stderr)
    for word in words:
        assert word in line, (word, line)
    assert result.stdout == "", result.stdout
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    assert _new_connections(logs_before, _sshd_logs(lab)) == {}, "a host was contacted"
    return line


def _inventory(tmp_path: Path, text: str, name: str = "inventory.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _lab_inventory(lab, tmp_path: Path, mutate) -> Path:
    """The lab's inventory (reachable hosts, right keys) after MUTATE(data) changed it."""
    data = yaml.safe_load(lab.inventory_path.read_text())
    mutate(data)
    return _inventory(tmp_path, yaml.safe_dump(data))


# --------------------------------------------------------------------------- control


def test_control_a_connection_shows_in_the_sshd_log(lab) -> None:
    """Without this, an unchanged sshd log would prove nothing."""
    before = _sshd_logs(lab)
    host = lab.hosts[0]
    subprocess.run(
        [
            *("ssh", "-i", str(lab.key_path), "-o", f"UserKnownHostsFile={lab.known_hosts_path}"),
            *("-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"),
            f"root@{host.ipv4}",
            "true",
        ],
        check=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    assert _sshd_logs(lab)[host.name] != before[host.name]


# --------------------------------------------------------------------------- inventory


def test_missing_inventory_file(lab, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    _assert_refused(
        lab, tmp_path, "run", "-i", str(missing), "--iface", "eth0", words=(str(missing),)
    )


def test_invalid_yaml(lab, tmp_path: Path) -> None:
    good = lab.inventory_path.read_text()
    broken = _inventory(tmp_path, good + "  lab9: {ansible_host: [198.18.0.9\n")
    line = _assert_refused(lab, tmp_path, "run", "-i", str(broken), words=(str(broken),))
    assert "YAML" in line


def test_unknown_key_in_a_group(lab, tmp_path: Path) -> None:
    def typo(data: dict) -> None:
        data["lab"]["hsots"] = data["lab"]["hosts"]

    inventory = _lab_inventory(lab, tmp_path, typo)
    _assert_refused(lab, tmp_path, "run", "-i", str(inventory), words=("hsots",))


@pytest.mark.parametrize(
    "text",
    ["lab:\n  hosts: {}\n", "lab:\n  hosts:\n", "all:\n  children:\n    lab: {}\n", "{}\n", ""],
    ids=["empty-mapping", "null-hosts", "empty-child", "empty-document", "empty-file"],
)
def test_empty_host_list(lab, tmp_path: Path, text: str) -> None:
    inventory = _inventory(tmp_path, text)
    _assert_refused(lab, tmp_path, "run", "-i", str(inventory), "--iface", "eth0", words=())


@pytest.mark.parametrize("port", [0, 65536, 70000, -1, "22x", "yes"])
def test_port_out_of_range(lab, tmp_path: Path, port) -> None:
    first = lab.hosts[0].name

    def bad_port(data: dict) -> None:
        data["lab"]["hosts"][first]["ansible_port"] = port

    inventory = _lab_inventory(lab, tmp_path, bad_port)
    _assert_refused(lab, tmp_path, "run", "-i", str(inventory), words=(first, "port"))


def test_port_out_of_range_in_a_host_key(lab, tmp_path: Path) -> None:
    def bad_key(data: dict) -> None:
        hosts = data["lab"]["hosts"]
        name = next(iter(hosts))
        hosts[f"{name}:99999"] = hosts.pop(name)

    inventory = _lab_inventory(lab, tmp_path, bad_key)
    _assert_refused(lab, tmp_path, "run", "-i", str(inventory), words=("99999",))


def test_test_only_clock_skew_is_refused_outside_the_tests(
    lab, tmp_path: Path, monkeypatch
) -> None:
    skew = {h.name: {"xdpcap_test_clock_skew_ns": 250_000_000} for h in lab.hosts[:1]}
    inventory = inventory_with(lab, tmp_path, skew)
    monkeypatch.delenv("XDPCAP_TEST_HOOKS")  # as on an operator's machine
    _assert_refused(
        lab,
        tmp_path,
        "run",
        "-i",
        str(inventory),
        "--iface",
        "eth0",
        words=("xdpcap_test_clock_skew_ns", "XDPCAP_TEST_HOOKS"),
    )


@pytest.mark.parametrize("pattern", ["nosuchhost", "lab*:&nosuchgroup", "~^zz", "lab[7]"])
def test_limit_that_matches_nothing(lab, tmp_path: Path, pattern: str) -> None:
    _assert_refused(
        lab,
        tmp_path,
        "run",
        "-i",
        str(lab.inventory_path),
        "--limit",
        pattern,
        words=("--limit",),
    )


@pytest.mark.parametrize("pattern", ["", " ", ",", ":"], ids=["empty", "space", "comma", "colon"])
def test_empty_limit_is_not_every_host(lab, tmp_path: Path, pattern: str) -> None:
    """`--limit "$HOSTS"` with HOSTS unset must not capture everywhere."""
    _assert_refused(
        lab,
        tmp_path,
        "run",
        "-i",
        str(lab.inventory_path),
        f"--limit={pattern}",
        words=("--limit",),
    )


def test_limit_that_matches_nothing_in_check(lab, tmp_path: Path) -> None:
    logs_before = _sshd_logs(lab)
    result = xdpcap("check", "-i", str(lab.inventory_path), "--limit", "nosuchhost")
    assert "nosuchhost" in _one_line(result)
    assert result.returncode == 2
    assert _sshd_logs(lab) == logs_before


# --------------------------------------------------------------------------- interfaces

BAD_IFACES = [
    "eth0;id",
    "$(reboot)",
    "eth 0",
    "eth0'",
    'eth0"',
    "`id`",
    "eth0|sh",
    "eth0&&id",
    "eth0\nid",
    "a" * 16,
    "é" * 8,  # 16 bytes in UTF-8, 8 characters
    "",
    "-eth0",
    "--help",
    "..",
    "eth0/1",
]
BAD_IFACE_IDS = [
    "semicolon",
    "command-substitution",
    "space",
    "single-quote",
    "double-quote",
    "backticks",
    "pipe",
    "and",
    "newline",
    "16-bytes",
    "16-utf8-bytes",
    "empty",
    "dash",
    "double-dash",
    "dotdot",
    "slash",
]


@pytest.mark.parametrize("iface", BAD_IFACES, ids=BAD_IFACE_IDS)
def test_bad_iface_flag(lab, tmp_path: Path, iface: str) -> None:
    line = _assert_refused(
        lab, tmp_path, "run", "-i", str(lab.inventory_path), f"--iface={iface}", words=()
    )
    assert "interface" in line


@pytest.mark.parametrize("iface", BAD_IFACES, ids=BAD_IFACE_IDS)
def test_bad_iface_host_var(lab, tmp_path: Path, iface: str) -> None:
    second = lab.hosts[1].name
    inventory = inventory_with(lab, tmp_path, {second: {"xdpcap_iface": iface}})
    line = _assert_refused(lab, tmp_path, "run", "-i", str(inventory), words=())
    assert "interface" in line or "xdpcap_iface" in line
    assert second in line  # which host's variable is wrong


@pytest.mark.parametrize("iface", ["eth0;id", "$(reboot)", "a" * 16], ids=["semi", "subst", "16"])
def test_bad_iface_in_check(lab, tmp_path: Path, iface: str) -> None:
    logs_before = _sshd_logs(lab)
    result = xdpcap("check", "-i", str(lab.inventory_path), f"--iface={iface}")
    assert "interface" in _one_line(result)
    assert result.returncode == 2
    assert _sshd_logs(lab) == logs_before


def test_bad_iface_in_list_hosts(lab, tmp_path: Path) -> None:
    second = lab.hosts[1].name
    inventory = inventory_with(lab, tmp_path, {second: {"xdpcap_iface": "eth0;id"}})
    _assert_refused(lab, tmp_path, "run", "-i", str(inventory), "--list-hosts", words=(second,))


@pytest.mark.parametrize(
    "python", ["python3;id", "$(reboot)", "/usr/bin/env python3", "-c", "python3 -c 1"]
)
def test_bad_python_interpreter(lab, tmp_path: Path, python: str) -> None:
    second = lab.hosts[1].name
    inventory = inventory_with(lab, tmp_path, {second: {"ansible_python_interpreter": python}})
    _assert_refused(
        lab, tmp_path, "run", "-i", str(inventory), words=(second, "ansible_python_interpreter")
    )


# --------------------------------------------------------------------------- filters

FOUR_PROTOCHAINS = tuple(" or ".join(f"ip6 protochain {p}" for p in (6, 17, 1, 58)).split())
BAD_FILTERS = [
    (("tcp", "port"), ("syntax error",)),
    (("tcp", "and", "udp"), ("rejects all packets",)),
    (("ip[0:3]", "=", "1"), ("data size",)),
    (("ip[0]", "<<", "40", "=", "0"), ("shift",)),
    (("ip[0]", "/", "0", "=", "1"), ("division by zero",)),
    # protochain loops (libpcap walks the header chain backwards): each bounded, at most 3.
    (FOUR_PROTOCHAINS, ("4 loops", "at most 3")),
    (("host", "10.0.0.5\x01"), ("printable",)),
]


@pytest.mark.parametrize("words,expected", BAD_FILTERS, ids=[" ".join(w) for w, _ in BAD_FILTERS])
def test_bad_filter(lab, tmp_path: Path, words: tuple[str, ...], expected: tuple[str, ...]) -> None:
    line = _assert_refused(lab, tmp_path, "run", "-i", str(lab.inventory_path), *words, words=())
    assert "filter" in line
    for word in expected:
        assert word in line, (word, line)


def test_bad_filter_host_var_names_the_host(lab, tmp_path: Path) -> None:
    second = lab.hosts[1].name
    inventory = inventory_with(lab, tmp_path, {second: {"xdpcap_filter": "tcp port"}})
    _assert_refused(
        lab, tmp_path, "run", "-i", str(inventory), words=(second, "xdpcap_filter", "syntax error")
    )


def test_filter_file_problems(lab, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-filter"
    _assert_refused(
        lab, tmp_path, "run", "-i", str(lab.inventory_path), "-F", str(missing), words=("-F",)
    )
    both = tmp_path / "filter"
    both.write_text("icmp # pings only\n")
    _assert_refused(
        lab,
        tmp_path,
        "run",
        "-i",
        str(lab.inventory_path),
        "-F",
        str(both),
        "udp",
        words=("not both",),
    )


def test_bad_filter_in_a_local_capture(tmp_path: Path) -> None:
    result = xdpcap(
        "capture", "-i", "lo", "-w", str(tmp_path / "c.pcapng"), "--duration", "1", "tcp", "port"
    )
    assert "syntax error" in _one_line(result)
    assert result.returncode == 2
    assert not (tmp_path / "c.pcapng").exists()


# --------------------------------------------------------------------------- numbers

BAD_NUMBERS = [
    ("--duration", "-1"),
    ("--duration", "0"),
    ("--duration", "nan"),
    ("--duration", "inf"),
    ("--duration", "1e12"),
    ("--duration", "abc"),
    ("--duration", ""),
    ("--count", "-5"),
    ("--count", "0"),
    ("--count", "10000000000000"),
    ("--count", "1.5"),
    ("--count", "lots"),
    ("--snaplen", "0"),
    ("--snaplen", "-1"),
    ("--snaplen", "10"),
    ("--snaplen", "1000000"),
    ("--snaplen", "big"),
    ("--sample-rate", "0"),
    ("--sample-rate", "-3"),
    ("--sample-rate", "4294967296"),
    ("--sample-rate", "x"),
    ("--forks", "0"),
    ("--reconnect-wait", "-1"),
    ("--reconnect-wait", "nan"),
    ("--forks", "-2"),
    ("--forks", "1000000"),
    ("--ready-timeout", "0"),
    ("--ready-timeout", "-1"),
    ("--xdp-mode", "turbo"),
]


@pytest.mark.parametrize(("flag", "value"), BAD_NUMBERS, ids=[f"{f}={v}" for f, v in BAD_NUMBERS])
def test_bad_number(lab, tmp_path: Path, flag: str, value: str) -> None:
    _assert_refused(
        lab, tmp_path, "run", "-i", str(lab.inventory_path), f"{flag}={value}", words=(flag,)
    )


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_ready_timeout_nan_or_inf(lab, tmp_path: Path, value: str) -> None:
    _assert_refused(
        lab,
        tmp_path,
        "run",
        "-i",
        str(lab.inventory_path),
        "--duration",
        "1",
        f"--ready-timeout={value}",
        words=("--ready-timeout",),
    )


# --------------------------------------------------------------------------- output places


def test_runs_dir_that_is_a_file(lab, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    logs_before = _sshd_logs(lab)
    result = xdpcap("run", "-i", str(lab.inventory_path), "--runs-dir", str(afile))
    assert str(afile) in _one_line(result)
    assert result.returncode == 2
    assert _sshd_logs(lab) == logs_before


@pytest.mark.parametrize("where", ["missing-dir", "under-a-file", "a-dir"])
def test_unwritable_output(lab, tmp_path: Path, where: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = {
        "missing-dir": tmp_path / "nodir" / "out.pcapng",
        "under-a-file": afile / "out.pcapng",
        "a-dir": tmp_path,
    }[where]
    _assert_refused(
        lab,
        tmp_path,
        "run",
        "-i",
        str(lab.inventory_path),
        "--duration",
        "1",
        "-w",
        str(out),
        words=(str(out),),
    )


# --------------------------------------------------------------------------- merge

SNAPLEN = 65535


def _capture_file(path: Path, name: str, start_ns: int, packets: int) -> list[int]:
    """A valid pcapng of PACKETS 60-byte frames 1 ms apart; returns each EPB's byte offset."""
    offsets = []
    with path.open("wb") as stream:
        writer = PcapngWriter(stream, userappl="xdpcap-test")
        if_id = writer.add_interface(name, snaplen=SNAPLEN)
        writer.flush()
        for i in range(packets):
            offsets.append(stream.tell())
            frame = bytes(range(6)) * 2 + b"\x08\x00" + bytes([i % 256]) * 46
            writer.write_packet(if_id, start_ns + i * 1_000_000, frame, len(frame))
            writer.flush()
    return offsets


def _frames(path: Path) -> list[str]:
    return [row[0] for row in tshark_fields(path, "frame.interface_name")]


def test_merge_keeps_blocks_before_a_truncation(tmp_path: Path) -> None:
    good = tmp_path / "good.pcapng"
    cut = tmp_path / "cut.pcapng"
    _capture_file(good, "a:eth0", 1_700_000_000_000_000_000, 10)
    offsets = _capture_file(cut, "b:eth0", 1_700_000_000_000_500_000, 10)
    data = cut.read_bytes()
    cut.write_bytes(data[: offsets[6] + 20])  # in the middle of the 7th packet block
    out = tmp_path / "merged.pcapng"

    result = xdpcap("merge", str(good), str(cut), "-w", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.stderr
    assert str(cut) in warnings[0] and f"byte offset {offsets[6]}" in warnings[0], warnings
    assert str(good) not in warnings[0]
    frames = _frames(out)
    assert frames.count("a:eth0") == 10 and frames.count("b:eth0") == 6, frames


@pytest.mark.parametrize(
    "garbage",
    [b"\x00" * 100, b"GET / HTTP/1.1\r\n\r\n" * 10, bytes(range(256)) * 4, b"", b"\n\r\x1a\n"],
    ids=["zeros", "text", "bytes", "empty", "shb-magic-only"],
)
def test_merge_skips_a_garbage_file(tmp_path: Path, garbage: bytes) -> None:
    good = tmp_path / "good.pcapng"
    junk = tmp_path / "junk.pcapng"
    _capture_file(good, "a:eth0", 1_700_000_000_000_000_000, 5)
    junk.write_bytes(garbage)
    out = tmp_path / "merged.pcapng"
    result = xdpcap("merge", str(junk), str(good), "-w", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(junk) in warnings[0], result.stderr
    assert _frames(out) == ["a:eth0"] * 5


def test_merge_of_only_garbage_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(b"\x00" * 64)
    out = tmp_path / "merged.pcapng"
    result = xdpcap("merge", str(junk), "-w", str(out))
    assert result.returncode != 0
    assert str(junk) in _one_line(result)
    assert not out.exists()


def test_merge_of_a_missing_file(tmp_path: Path) -> None:
    good = tmp_path / "good.pcapng"
    _capture_file(good, "a:eth0", 1_700_000_000_000_000_000, 3)
    missing = tmp_path / "missing.pcapng"
    out = tmp_path / "merged.pcapng"
    result = xdpcap("merge", str(good), str(missing), "-w", str(out))
    line = _one_line(result)
    assert str(missing) in line and "No such file" in line
    assert result.returncode == 2
    assert not out.exists()


@pytest.mark.parametrize("spelling", ["same", "dot-slash", "symlink"])
def test_merge_never_writes_over_an_input(tmp_path: Path, spelling: str) -> None:
    first = tmp_path / "a.pcapng"
    second = tmp_path / "b.pcapng"
    _capture_file(first, "a:eth0", 1_700_000_000_000_000_000, 4)
    _capture_file(second, "b:eth0", 1_700_000_000_000_500_000, 4)
    before = first.read_bytes()
    out = {"same": str(first), "dot-slash": f"{tmp_path}/./a.pcapng"}.get(spelling)
    if out is None:
        (tmp_path / "link.pcapng").symlink_to(first)
        out = str(tmp_path / "link.pcapng")
    result = xdpcap("merge", str(first), str(second), "-w", out)
    assert "also an input" in _one_line(result)
    assert result.returncode == 2
    assert first.read_bytes() == before


def test_local_capture_to_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "cap.pcapng"
    result = xdpcap("capture", "-i", "lo", "-w", str(out), "--duration", "1")
    line = _one_line(result)
    assert str(out) in line and "No such file" in line
    assert result.returncode == 1


def test_build_agent_to_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "no" / "agent.pyz"
    result = xdpcap("build-agent", "-o", str(out))
    line = _one_line(result)
    assert str(out) in line
    assert result.returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        ("demo", "--duration", "-1"),
        ("demo", "--duration", "nan"),
        ("demo", "--hosts", "0"),
        ("lab", "up", "--hosts", "1000000"),
    ],
    ids=["demo-negative", "demo-nan", "demo-no-hosts", "lab-huge"],
)
def test_lab_and_demo_numbers_are_checked_before_anything_is_built(args) -> None:
    result = xdpcap(*args)
    assert "between" in _one_line(result)
    assert result.returncode == 2
    lab_bridges = subprocess.run(
        ["ip", "-j", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True
    ).stdout
    assert "xcdemo-br" not in lab_bridges  # the demo lab was never built


@pytest.mark.parametrize(
    "content",
    ["[]", "{", '{"hosts": "x"}', '{"run_id": "r", "inventory": "i", "hosts": [1]}'],
    ids=["list", "not-json", "hosts-not-list", "host-not-object"],
)
def test_collect_of_a_foreign_run_json_is_one_line(tmp_path: Path, content: str) -> None:
    (tmp_path / "run.json").write_text(content)
    result = xdpcap("collect", str(tmp_path))
    assert "run.json" in _one_line(result)
    assert result.returncode == 2
