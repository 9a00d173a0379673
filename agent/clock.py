"""Clocks: bpf_ktime_get_ns() is CLOCK_MONOTONIC; pcapng wants wall-clock time.

The REALTIME − MONOTONIC offset is measured from many tightly bracketed readings and
the tightest bracket kept, so it is right to well under a microsecond, not to the second.
"""

from __future__ import annotations

import os
import subprocess
import time

# Test-only: the namespace lab shares one clock, so a test makes one agent present a
# skewed clock (its packet timestamps and its answers to the controller's offset probe
# shifted by the same amount) to prove the merge's clock correction works.
TEST_SKEW_ENV = "XDPCAP_TEST_CLOCK_SKEW_NS"
# Test-only as well: a clock that runs fast by RATE ppb from EPOCH (ns) on; the capture's
# packet timestamps and the probe's answers drift alike.
TEST_RATE_ENV = "XDPCAP_TEST_CLOCK_RATE_PPB"
TEST_EPOCH_ENV = "XDPCAP_TEST_CLOCK_EPOCH_NS"


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def test_skew_ns() -> int:
    return _int_env(TEST_SKEW_ENV)


def test_rate_ppb() -> int:
    return _int_env(TEST_RATE_ENV)


def drift_gained_ns(t_ns: int, rate_ppb: int, epoch_ns: int) -> int:
    """What a clock running fast by `rate_ppb` has gained at `t_ns` since `epoch_ns`, in
    integers (a float holds an epoch time in ns only to about 256 ns). The test clock
    drifts by it, and the merge takes it off a drifting host's timestamps."""
    return (t_ns - epoch_ns) * rate_ppb // 1_000_000_000


def ntp_offset_ns(sent_ns: int, remote_ns: int, received_ns: int) -> int:
    """NTP's estimate of a remote clock's offset from one timed exchange: the remote
    reading is taken to lie in the middle of the round trip (error: half of it)."""
    return remote_ns - (sent_ns + received_ns) // 2


def test_drift_ns(wall_ns: int) -> int:
    """What the test clock has gained by `wall_ns` (0 without the hook)."""
    rate = test_rate_ppb()
    return drift_gained_ns(wall_ns, rate, _int_env(TEST_EPOCH_ENV)) if rate else 0


def realtime_minus_monotonic_ns(samples: int = 50) -> int:
    best_width = None
    best_offset = 0
    for _ in range(samples):
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        width = after - before
        if best_width is None or width < best_width:
            best_width = width
            best_offset = ntp_offset_ns(before, real, after)
    return best_offset + test_skew_ns()


def wall_clock_ns() -> int:
    """The host's wall clock as this agent presents it (with the test hooks, if any)."""
    wall = time.clock_gettime_ns(time.CLOCK_REALTIME) + test_skew_ns()
    return wall + test_drift_ns(wall)


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


SYNC_COMMANDS = (
    # chrony's own view; else systemd's (timesyncd, or whatever it knows of).
    (["chronyc", "-n", "tracking"], "Leap status", "chrony: "),
    (["timedatectl", "show", "-p", "NTPSynchronized", "--value"], "", "NTP synchronized: "),
)


def sync_state(timeout_s: float = 2.0) -> str:
    """The host clock's synchronisation as chrony or timedatectl says it ("" if neither).

    For the report beside the clock offset; a few milliseconds of subprocesses, so the
    capture asks in a thread of its own once the window is open.
    """
    for argv, key, label in SYNC_COMMANDS:
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            name, _, value = line.partition(":") if key else ("", "", line)
            if name.strip() == key and value.strip():
                return label + value.strip()
    return ""
