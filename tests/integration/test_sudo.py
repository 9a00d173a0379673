"""Not root on the host: the agent runs through sudo (-n, or with the become password).

The lab hosts share this machine's users, so the test makes a throw-away user with the
lab key in its authorized_keys and a sudoers drop-in, and removes both afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .lab_helpers import BECOME_PASSWORD as PASSWORD
from .lab_helpers import inventory_with, private_lab, sudo_user, xdpcap


@pytest.fixture
def lab(tmp_path: Path):
    if shutil.which("sudo") is None:
        pytest.fail("sudo is not installed (scripts/setup.sh installs it)")
    with private_lab("sudo", tmp_path) as lab:
        yield lab


def _as_user(lab, tmp_path: Path, user: str, **extra: object) -> Path:
    return inventory_with(
        lab, tmp_path, {h.name: {"ansible_user": user, **extra} for h in lab.hosts}
    )


def _run(inventory: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    result = xdpcap(
        "run", "-i", str(inventory), "--duration", "2", "--runs-dir", str(tmp_path / "runs")
    )
    print(result.stderr)
    return result


def test_passwordless_sudo(lab, tmp_path: Path) -> None:
    with sudo_user(lab, nopasswd=True) as user:
        result = _run(_as_user(lab, tmp_path, user), tmp_path)
        assert result.returncode == 0, result.stderr
        merged = Path(result.stdout.strip().splitlines()[-1])
        run = json.loads((merged.parent / "run.json").read_text())
        assert all(h["state"] == "done" for h in run["hosts"])
        # The agent ran as root, yet the user could fetch its file and it is gone now.
        leftovers = list(Path(f"/home/{user}/.cache/xdpcap/runs").rglob("*.pcapng"))
        assert leftovers == []


def test_sudo_password_from_the_inventory(lab, tmp_path: Path) -> None:
    with sudo_user(lab, nopasswd=False) as user:
        refused = _run(_as_user(lab, tmp_path, user), tmp_path)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.count("sudo needs a password") == len(lab.hosts)

        inventory = _as_user(lab, tmp_path, user, ansible_become_password=PASSWORD)
        result = _run(inventory, tmp_path)
        assert result.returncode == 0, result.stderr
        assert PASSWORD not in result.stderr + result.stdout


def _run_on_a_terminal(argv: list[str], answer: str, timeout: float = 120) -> tuple[int, str]:
    """Run `xdpcap ARGV` on a pseudo-terminal, answer its password prompt, and return
    its exit status and everything it showed there."""
    import pty
    import select
    import sys
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling tty, as for a person
        os.execvp(sys.executable, [sys.executable, "-m", "xdpcap.orchestrator", *argv])
    shown = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if not answered and b"BECOME password:" in shown:
                os.write(fd, answer.encode() + b"\n")
                answered = True
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_sudo_password_asked_on_the_terminal(lab, tmp_path: Path) -> None:
    with sudo_user(lab, nopasswd=False) as user:
        argv = ["run", "-i", str(_as_user(lab, tmp_path, user)), "--ask-become-pass"]
        argv += ["--duration", "2", "--runs-dir", str(tmp_path / "runs")]
        status, shown = _run_on_a_terminal(argv, PASSWORD)
        assert status == 0, shown
        assert "BECOME password:" in shown
        assert PASSWORD not in shown  # not echoed, not logged
        assert "merged" in shown
