"""The scheduled start: "start T" on the agent's stdin, and when its window opens."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from xdpcap.agent import clock
from xdpcap.agent.capture import Capture, CaptureOptions
from xdpcap.agent.protocol import ControllerCommands, EventSink
from xdpcap.agent.start import MAX_START_LEAD_NS

MS = 1_000_000


def _commands(text: str) -> ControllerCommands:
    commands = ControllerCommands(io.StringIO(text))
    assert commands.eof.wait(5)
    return commands


def test_start_with_and_without_a_time() -> None:
    assert _commands("start\n").start_at_ns is None
    scheduled = _commands("start 1796395196123040427\n")
    assert scheduled.start.is_set() and scheduled.start_at_ns == 1796395196123040427
    assert _commands("start soon\n").start_at_ns is None  # not a time: at once


def _capture() -> Capture:
    capture = Capture(CaptureOptions(iface="eth0", output=Path("x.pcapng")), EventSink(None))
    capture._offset = clock.realtime_minus_monotonic_ns()
    return capture


def _window_start(capture: Capture, start_at_ns: int | None) -> tuple[int, int]:
    commands = _commands("")
    commands.start_at_ns = start_at_ns
    before = clock.monotonic_ns()
    return capture._window_start(commands), before


def test_the_window_opens_at_the_scheduled_instant() -> None:
    capture = _capture()
    at = time.time_ns() + 300 * MS
    start, _ = _window_start(capture, at)
    assert abs(start + capture._offset - at) < MS  # T on our clock, in monotonic time


def test_a_time_our_clock_disagrees_with_opens_the_window_at_once() -> None:
    capture = _capture()
    for at in (time.time_ns() - 50 * MS, time.time_ns() + MAX_START_LEAD_NS + 500 * MS):
        start, before = _window_start(capture, at)
        assert before <= start <= clock.monotonic_ns()
    start, before = _window_start(capture, None)
    assert before <= start <= clock.monotonic_ns()


def test_the_lead_follows_the_slowest_measured_round_trip() -> None:
    from xdpcap.orchestrator.run import runner as run

    per_host = run.START_LEAD_PER_HOST_S
    # A WAN host 180 ms away: twice its round trip, whatever the others.
    lead, slowest = run.start_lead_s([2 * MS, 180 * MS, 1 * MS])
    assert slowest == pytest.approx(0.18) and lead == pytest.approx(0.36 + 3 * per_host)
    # A lab where lines take a millisecond: the floor.
    lead, _ = run.start_lead_s([1 * MS] * 10)
    assert lead == pytest.approx(run.START_LEAD_MIN_S + 10 * per_host)
    # One host without a measure: the fixed lead for all.
    lead, slowest = run.start_lead_s([1 * MS, None])
    assert slowest is None and lead == pytest.approx(run.START_LEAD_S + 2 * per_host)
