"""`xdpcap extcap`: what Wireshark is told, the run it starts, install and uninstall."""

from __future__ import annotations

import argparse
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from xdpcap.orchestrator.cli import extcap
from xdpcap.orchestrator.cli.main import main
from xdpcap.orchestrator.errors import UsageError

ARG = re.compile(r"^arg \{number=(\d+)\}\{call=(--[a-z-]+)\}\{display=[^}]+\}\{type=(\w+)\}")


def test_interfaces_and_dlts_follow_the_protocol(capsys) -> None:
    assert main(["extcap", "--extcap-interfaces", "--extcap-version=4.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("extcap {version=")
    assert lines[1].startswith("interface {value=xdpcap}{display=")
    assert main(["extcap", "--extcap-dlts", "--extcap-interface", "xdpcap"]) == 0
    assert capsys.readouterr().out.startswith("dlt {number=1}{name=EN10MB}")


def test_the_config_offers_every_run_option(capsys) -> None:
    assert main(["extcap", "--extcap-config", "--extcap-interface", "xdpcap"]) == 0
    lines = capsys.readouterr().out.splitlines()
    args = [ARG.match(line).groups() for line in lines if line.startswith("arg ")]
    calls = [call for _, call, _ in args]
    assert calls == [
        "--inventory",
        "--limit",
        "--iface",
        "--duration",
        "--count",
        "--snaplen",
        "--direction",
        "--runs-dir",
    ]
    assert [int(number) for number, _, _ in args] == list(range(len(args)))
    assert ("0", "--inventory", "fileselect") in args
    values = [line for line in lines if line.startswith("value {arg=6}")]
    assert [re.search(r"\{value=(\w+)\}", v).group(1) for v in values] == ["inout", "in", "out"]


def test_an_unknown_interface_is_refused(capsys) -> None:
    assert main(["extcap", "--extcap-dlts", "--extcap-interface", "eth0"]) == 2
    assert "unknown interface 'eth0'" in capsys.readouterr().err


def test_the_capture_filter_box_is_checked(capsys) -> None:
    assert main(["extcap", "--extcap-interface", "xdpcap", "--extcap-capture-filter", "udp"]) == 0
    assert capsys.readouterr().out == ""
    assert (
        main(["extcap", "--extcap-interface", "xdpcap", "--extcap-capture-filter", "tcp port"]) == 0
    )
    assert "syntax error" in capsys.readouterr().out


def _args(**values) -> argparse.Namespace:
    fields = dict.fromkeys(
        ("inventory", "limit", "iface", "duration", "count", "snaplen", "direction", "runs_dir")
    )
    fields["extcap_capture_filter"] = None
    fields.update(values)
    return argparse.Namespace(**fields)


def test_the_capture_is_a_streaming_run() -> None:
    argv = extcap.run_argv(
        _args(
            inventory="inv.yml",
            iface="eth0",
            duration=8.0,
            direction="in",
            runs_dir="/tmp/r",
            extcap_capture_filter="tcp port 443",
        )
    )
    assert argv == [
        "run", "-i", "inv.yml", "-w", "-", "--runs-dir", "/tmp/r", "--duration", "8.0",
        "--iface", "eth0", "--direction", "in", "--", "tcp port 443",
    ]  # fmt: skip
    defaults = extcap.run_argv(_args(inventory="inv.yml"))
    assert defaults[defaults.index("--duration") + 1] == str(extcap.DEFAULT_DURATION_S)
    assert defaults[defaults.index("--runs-dir") + 1] == os.path.expanduser("~/xdpcap-runs")
    with pytest.raises(UsageError, match="--inventory is required"):
        extcap.run_argv(_args())


def test_install_and_uninstall_touch_only_our_launcher(tmp_path: Path) -> None:
    other = tmp_path / "sshdump"
    other.write_text("#!/bin/sh\n")
    path = extcap.install(tmp_path)
    assert path == tmp_path / "xdpcap" and os.access(path, os.X_OK)
    text = path.read_text()
    assert extcap.MARKER in text and f"'{Path(sys.executable).absolute()}'" in text
    # The launcher answers as Wireshark asks.
    out = subprocess.run([str(path), "--extcap-interfaces"], capture_output=True, text=True)
    assert "interface {value=xdpcap}" in out.stdout, out.stderr
    assert extcap.install(tmp_path) == path  # again: replaced, still one file
    assert extcap.uninstall(tmp_path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sshdump"]
    assert extcap.uninstall(tmp_path) is None


def test_a_foreign_file_of_that_name_is_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / "xdpcap"
    foreign.write_text("#!/bin/sh\necho someone else's\n")
    with pytest.raises(UsageError, match="not xdpcap's launcher"):
        extcap.install(tmp_path)
    with pytest.raises(UsageError, match="not xdpcap's launcher"):
        extcap.uninstall(tmp_path)
    assert foreign.read_text() == "#!/bin/sh\necho someone else's\n"


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        ("Extcap path:         \t/usr/lib/x/wireshark/extcap\n", "/usr/lib/x/wireshark/extcap"),
        (
            "Personal Extcap path:\t/root/.local/lib/wireshark/extcap\n"
            "Global Extcap path:  \t/usr/lib/x/wireshark/extcap\n",
            "/root/.local/lib/wireshark/extcap",
        ),
    ],
)
def test_the_folder_is_the_personal_one_where_there_is_one(
    monkeypatch, listing: str, expected: str
) -> None:
    def fake_run(*_args, **_kwargs):
        return subprocess.CompletedProcess([], 0, stdout="Temp: /tmp\n" + listing, stderr="")

    monkeypatch.setattr(extcap.subprocess, "run", fake_run)
    assert extcap.extcap_folder() == Path(expected)


def test_a_stream_onto_a_terminal_is_refused(tmp_path: Path) -> None:
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    h1:\n      ansible_host: 192.0.2.1\n")
    parent, child = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "xdpcap.orchestrator", "run", "-i", str(inventory),
             "--iface", "eth0", "-w", "-"],
            stdout=child, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(child)
        os.close(parent)
    assert result.returncode == 2
    assert "-w - writes a binary pcapng stream to stdout: pipe it" in result.stderr
