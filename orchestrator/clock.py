"""Estimate a host's clock offset from ours over SSH, the NTP way.

The agent's `clock --serve` answers each line we send with its wall clock. For every
round trip we take offset = remote − (sent + received) / 2; the sample with the smallest
round trip wins, and its error bound is ± round trip / 2.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass

from fabric import Connection

from .errors import RemoteError

ROUNDS = 16
ROUND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ClockOffset:
    offset_ns: int  # host clock − controller clock
    error_ns: int  # ± bound
    sync_state: str | None = None

    def describe(self) -> str:
        text = f"{self.offset_ns / 1e6:+.3f} ms ± {self.error_ns / 1e6:.3f} ms"
        return f"{text} ({self.sync_state})" if self.sync_state else text


def estimate_offset(
    conn: Connection,
    command: str,
    *,
    name: str,
    rounds: int = ROUNDS,
    rounds_lock: threading.Lock | None = None,
) -> ClockOffset:
    """Probe over a channel of its own, read in this thread: every hand-off between
    threads on the reply path would widen the round trip and bias the offset.

    With `rounds_lock`, the agents of many hosts start in parallel but their timed
    rounds run one host at a time: threads of this process contending for the GIL would
    add tens of microseconds of noise to the round trips.
    """
    transport = conn.client.get_transport()
    if transport is None or not transport.is_active():
        raise RemoteError(f"{name}: the SSH connection is closed")
    channel = transport.open_session(timeout=ROUND_TIMEOUT_S)
    channel.settimeout(ROUND_TIMEOUT_S)
    best: tuple[int, int] | None = None
    try:
        channel.exec_command(command)
        reader = channel.makefile("rb")
        _answer(reader, name)  # the first answer only says the agent is up
        with rounds_lock or contextlib.nullcontext():
            for _ in range(rounds):
                sent = time.time_ns()
                channel.sendall(b"\n")
                remote = _answer(reader, name)
                received = time.time_ns()
                rtt = received - sent
                if best is None or rtt < best[1]:
                    best = (remote - (sent + received) // 2, rtt)
    except OSError as exc:
        raise RemoteError(f"{name}: the clock probe failed: {exc}") from exc
    finally:
        channel.close()
    if best is None:
        raise RemoteError(f"{name}: the clock probe got no answer")
    return ClockOffset(best[0], best[1] // 2)


def _answer(reader, name: str) -> int:
    try:
        return int(json.loads(reader.readline())["realtime_ns"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteError(f"{name}: the clock probe got no valid answer") from exc


def corrections(offsets: dict[str, ClockOffset]) -> dict[str, int]:
    """The shift to subtract from each host's timestamps so the hosts agree with each other.

    Two rules, both from how the probe errs:
    - Offsets are taken relative to the median host. The probe's reply path through SSH
      is slower than its request path (paramiko hands data through threads), which biases
      every host's offset by the same tens of microseconds; the median cancels it, and
      the merged capture keeps the consensus clock of the fleet.
    - A relative offset within its own error bound is indistinguishable from zero: we
      leave that host alone rather than move it by noise.
    """
    if not offsets:
        return {}
    ordered = sorted(o.offset_ns for o in offsets.values())
    median = ordered[(len(ordered) - 1) // 2]
    result = {}
    for name, offset in offsets.items():
        relative = offset.offset_ns - median
        result[name] = relative if abs(relative) > offset.error_ns else 0
    return result
