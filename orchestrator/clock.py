"""Estimate a host's clock offset from ours over SSH, the NTP way.

The agent's `clock --serve` answers each line we send with its wall clock. For every
round trip we take offset = remote − (sent + received) / 2; the sample with the smallest
round trip wins, and its error bound is ± round trip / 2.
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass

from fabric import Connection

from .channel import RemoteProcess
from .errors import RemoteError

ROUNDS = 8
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
    conn: Connection, command: str, *, name: str, rounds: int = ROUNDS
) -> ClockOffset:
    answers: queue.Queue[str] = queue.Queue()
    process = RemoteProcess(conn, command, answers.put, name=name)
    try:
        _answer(answers, name)  # the first answer only tells us the agent is up
        best: tuple[int, int] | None = None
        for _ in range(rounds):
            sent = time.time_ns()
            if not process.send_line(""):
                break
            remote = _answer(answers, name)
            received = time.time_ns()
            rtt = received - sent
            if best is None or rtt < best[1]:
                best = (remote - (sent + received) // 2, rtt)
    finally:
        process.close()
    if best is None:
        raise RemoteError(f"{name}: the clock probe got no answer")
    return ClockOffset(best[0], best[1] // 2)


def _answer(answers: queue.Queue[str], name: str) -> int:
    try:
        line = answers.get(timeout=ROUND_TIMEOUT_S)
        return int(json.loads(line)["realtime_ns"])
    except (queue.Empty, ValueError, KeyError, TypeError) as exc:
        raise RemoteError(f"{name}: the clock probe got no valid answer") from exc


def sync_state(conn: Connection) -> str | None:
    """What the host says about its own clock sync (chrony, else systemd), best effort."""
    probes = (
        "chronyc -n tracking 2>/dev/null | sed -n 's/^Leap status *: //p'",
        "timedatectl show -p NTPSynchronized --value 2>/dev/null",
    )
    for probe in probes:
        try:
            result = conn.run(probe, timeout=5, warn=True, hide=True)
        except Exception:
            continue
        answer = result.stdout.strip()
        if answer:
            return (
                f"chrony: {answer}"
                if probe.startswith("chronyc")
                else f"NTP synchronized: {answer}"
            )
    return None
