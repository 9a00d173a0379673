"""The benchmarks run (their --quick modes) and xdpcap loses nothing unaccounted.

Timings are never asserted: they are measured by the scripts and recorded in
BENCHMARKS.md by hand, not checked by CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", ["capture", "egress", "merge", "run"])
def test_quick_benchmark_runs(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    print(result.stdout[-3000:])
    # Each script exits non-zero when xdpcap left packets unaccounted or a peer's output
    # disagrees with ours; a table on stdout shows it measured something.
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "|" in result.stdout
    if script == "capture":
        # --quick includes the filtered profile, so CI also checks that xdpcap's XDP filter
        # writes exactly the matching frames (the exit status covers it).
        assert "### Profile `filtered`" in result.stdout, result.stdout[-2000:]
