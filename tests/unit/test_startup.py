"""What `xdpcap run` loads before its first connect: the controller's start is part of
every run's time to capture, so rich (drawn later) and the merge (run last) wait."""

from __future__ import annotations

import subprocess
import sys

_LOADED_LATE = (
    "import sys\n"
    "from xdpcap.orchestrator.cli.commands import modules_for\n"
    "modules_for('run')\n"
    "late = ('rich', 'xdpcap.orchestrator.merge.captures', 'xdpcap.orchestrator.merge.reader')\n"
    "print(*sorted(m for m in sys.modules if m.startswith(late)))\n"
)


def test_run_loads_neither_rich_nor_the_merge_before_connecting() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOADED_LATE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
