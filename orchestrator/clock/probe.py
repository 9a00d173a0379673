"""Estimate a host's clock offset from ours over SSH, the NTP way.

A capture agent answers "clock" on its stdin with its wall clock (a run asks the agent
it already talks to); otherwise `clock --serve`, an agent of its own on another channel,
answers each line (`xdpcap collect`, after the capture agent is gone). For every round
trip we take offset = remote − (sent + received) / 2; the sample with the smallest
round trip wins, and its error bound is ± round trip / 2.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fabric import Connection
from paramiko import SSHException

from ...agent.clock import ntp_offset_ns
from ..errors import RemoteError

ROUNDS = 16  # at most
PROBES_AT_ONCE = 8  # hosts whose timed rounds run at the same time (see measure)
MIN_ROUNDS = 4
# The round trips' minimum has settled when this many rounds in a row did not lower it:
# more rounds would cost time (a host's probe holds one of the run's few probe slots)
# for an estimate the traffic refines anyway (clocksync).
SETTLE_ROUNDS = 3
SETTLE_GAIN_NS = 10_000  # a lower round trip by less than this (or 5 %) is jitter
ROUND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ClockOffset:
    offset_ns: int  # host clock − controller clock
    error_ns: int  # ± bound
    sync_state: str | None = None

    def describe(self) -> str:
        text = f"{self.offset_ns / 1e6:+.3f} ms ± {self.error_ns / 1e6:.3f} ms"
        return f"{text} ({self.sync_state})" if self.sync_state else text


class ClockProbe:
    """The agent's `clock --serve` on a channel of its own, read in the thread that measures:
    every hand-off between threads on the reply path would widen the round trip and bias
    the offset. For when no capture agent is there to ask (a reconnect, `xdpcap collect`).

    Starting it costs the host a login shell and a Python start, far longer than the
    rounds: `wait_up` (its first answer, which only says it is up) comes before them.
    """

    def __init__(self, conn: Connection, command: str, *, name: str) -> None:
        self.name = name
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(f"{name}: the SSH connection is closed")
        try:
            self._channel = transport.open_session(timeout=ROUND_TIMEOUT_S)
        except (OSError, SSHException) as exc:
            raise RemoteError(f"{name}: the clock probe failed: {exc}") from exc
        try:
            self._channel.settimeout(ROUND_TIMEOUT_S)
            self._channel.exec_command(command)
            self._reader = self._channel.makefile("rb")
        except (OSError, SSHException) as exc:
            self.close()
            raise RemoteError(f"{name}: the clock probe failed: {exc}") from exc

    def wait_up(self) -> None:
        """Read the first answer, which only says the agent is up."""
        try:
            _answer(self._reader, self.name)
        except OSError as exc:
            raise RemoteError(f"{self.name}: the clock probe failed: {exc}") from exc

    def measure(
        self, rounds: int = ROUNDS, slots: threading.Semaphore | None = None
    ) -> ClockOffset:
        """The timed rounds; call after `wait_up` (see measure_rounds)."""
        channel, reader = self._channel, self._reader

        def round_trip() -> tuple[int, int, int]:
            sent = time.time_ns()
            channel.sendall(b"\n")
            remote = _answer(reader, self.name)
            return sent, remote, time.time_ns()

        try:
            return measure_rounds(round_trip, self.name, rounds, slots)
        except OSError as exc:
            raise RemoteError(f"{self.name}: the clock probe failed: {exc}") from exc

    def close(self) -> None:
        # Closing the channel ends the agent's stdin: it exits.
        with contextlib.suppress(Exception):
            self._channel.close()


def measure_rounds(
    round_trip: Callable[[], tuple[int, int, int]],
    name: str,
    rounds: int = ROUNDS,
    slots: threading.Semaphore | None = None,
) -> ClockOffset:
    """NTP's estimate from timed rounds: `round_trip()` gives (sent, remote, received),
    our clock around the remote one; the round with the smallest round trip wins. The
    rounds stop early once that minimum has settled (SETTLE_ROUNDS without a clear gain,
    after MIN_ROUNDS).

    With `slots`, only so many hosts' rounds run at once: threads of this process
    contending for the GIL add noise to the round trips, but one host at a time made a
    100-host run wait tens of seconds for its probes.
    """
    best: tuple[int, int] | None = None
    with slots or contextlib.nullcontext():
        since_best = 0
        for done in range(rounds):
            sent, remote, received = round_trip()
            rtt = received - sent
            # Only a clear gain restarts the count: nanoseconds of jitter do not.
            gain = best is None or rtt < best[1] - max(SETTLE_GAIN_NS, best[1] // 20)
            since_best = 0 if gain else since_best + 1
            if best is None or rtt < best[1]:
                best = (ntp_offset_ns(sent, remote, received), rtt)
            if done + 1 >= MIN_ROUNDS and since_best >= SETTLE_ROUNDS:
                break
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
