"""`xdpcap demo` (what `make demo` runs): lab up, traffic, run, summary, lab down."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .agent_helpers import capinfos, tshark_fields
from .lab_helpers import xdpcap


def _lab_leftovers() -> list[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [
        line
        for line in (links.stdout + netns.stdout).splitlines()
        if "xcdemo" in line or "xdpcap-demo" in line
    ]


def test_demo_captures_across_the_lab_and_tears_it_down(tmp_path: Path) -> None:
    result = xdpcap(
        "demo", "--hosts", "2", "--duration", "3", "--runs-dir", str(tmp_path), timeout=300
    )
    assert result.returncode == 0, result.stderr
    merged = Path(result.stdout.strip().splitlines()[-1])
    assert merged.exists() and merged.is_relative_to(tmp_path)
    assert "Strict time order:   True" in capinfos(merged)
    names = {row[0] for row in tshark_fields(merged, "frame.interface_name")}
    assert names == {"demo1:eth0", "demo2:eth0"}  # traffic captured on every host
    assert "Echo (ping) request" in result.stdout + result.stderr  # the listing shown
    assert _lab_leftovers() == []
