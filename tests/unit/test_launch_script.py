"""The launch script (remote/host_files.LAUNCH_SCRIPT) run by a local sh, as a host runs it.

Run as root, so it execs the agent itself rather than through sudo.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from xdpcap.orchestrator.remote.host_files import LAUNCH_SCRIPT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="as another user it runs sudo")

CACHE = ".cache/xdpcap"
RUN = f"{CACHE}/runs/0123456789abcdef"
AGENT = f"{CACHE}/xdpcap-agent-test.pyz"
# Stands in for the agent: answers the first line it reads on stdin.
AGENT_ARGV = ["sh", "-c", 'read -r word; echo "agent read $word"']


def _launch(home: Path, sha: str, stdin: str = "") -> tuple[list[str], int]:
    result = subprocess.run(
        ["sh", "-c", LAUNCH_SCRIPT, "xdpcap-launch", CACHE, RUN, AGENT, sha, "", "", *AGENT_ARGV],
        cwd=home,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.splitlines(), result.returncode


def _cached_agent(home: Path) -> str:
    agent = home / AGENT
    agent.parent.mkdir(parents=True)
    agent.write_bytes(b"#!/usr/bin/env python3\nagent bytes\n")
    return hashlib.sha256(agent.read_bytes()).hexdigest()


def test_a_cached_agent_with_its_hash_is_started(tmp_path: Path) -> None:
    sha = _cached_agent(tmp_path)
    lines, status = _launch(tmp_path, sha, stdin="start\n")
    assert status == 0
    # Nothing else writes to the agent's stdout once it runs (its stream frames must
    # not be cut by another writer's line), and the agent reads the controller's line.
    assert lines == [
        "xdpcap-fact uid=0",
        f"xdpcap-fact home={tmp_path}",
        "xdpcap-launch ok",
        "agent read start",
    ]
    for folder in (CACHE, f"{CACHE}/runs", RUN):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o700


@pytest.mark.parametrize("case", ["damaged", "missing"])
def test_an_agent_without_its_hash_is_not_started(tmp_path: Path, case: str) -> None:
    sha = _cached_agent(tmp_path)
    if case == "damaged":
        with (tmp_path / AGENT).open("ab") as f:
            f.write(b"x")
    else:
        (tmp_path / AGENT).unlink()
    lines, status = _launch(tmp_path, sha, stdin="start\n")
    assert status == 0
    assert [line for line in lines if not line.startswith("xdpcap-fact ")] == [
        "xdpcap-launch need-upload"
    ]
