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


class _Sampler:
    """What the opener asks of a sampler; notes whether "start" was already heard."""

    def __init__(self, commands: ControllerCommands) -> None:
        self.commands = commands
        self.enabled: list[tuple[int, int, int]] = []
        self.start_heard: list[bool] = []

    def enable(self, offset: int, start: int, end: int) -> None:
        self.enabled.append((offset, start, end))
        self.start_heard.append(self.commands.start.is_set())


def test_the_command_reader_opens_the_window_as_start_arrives() -> None:
    """ "start T" costs the agent one wake-up: the reader thread opens the window itself,
    before the main thread hears of it (which then goes on with the same instant)."""
    options = CaptureOptions(iface="eth0", output=Path("x.pcapng"), duration_s=5)
    capture = Capture(options, EventSink(None))
    commands = ControllerCommands(io.StringIO(""))
    sampler = _Sampler(commands)
    commands.on_start = capture._opener(sampler)
    at = time.time_ns() + 300 * MS
    commands._read(io.StringIO(f"start {at}\n"))
    offset, start = capture._opened
    assert abs(start + offset - at) < MS
    assert sampler.enabled == [(offset, start, start + 5 * 10**9)]
    assert sampler.start_heard == [False]
    assert commands.start.is_set()


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


def test_the_lead_follows_the_measured_delivery_to_every_host() -> None:
    from xdpcap.orchestrator.run import runner as run

    # A WAN host 180 ms away, or 100 agents waking one after another: twice the delivery.
    assert run.start_lead_s(0.18, 3) == pytest.approx(0.36)
    assert run.start_lead_s(0.25, 100) == pytest.approx(0.5)  # not a constant per host
    # A lab where lines take a millisecond: the floor.
    assert run.start_lead_s(0.001, 10) == pytest.approx(run.START_LEAD_MIN_S)
    # Not measured (an agent did not answer): the fixed lead, with time per host.
    per_host = run.START_LEAD_PER_HOST_S
    assert run.start_lead_s(None, 2) == pytest.approx(run.START_LEAD_S + 2 * per_host)


class _Agent:
    """A ready agent's side of the clock exchange, answering after `delay_s`."""

    def __init__(self, delay_s: float | None) -> None:
        self.delay_s = delay_s
        self.sent_ns = 0

    def send_clock(self) -> bool:
        self.sent_ns = time.time_ns()
        return True

    def clock_answer(self, timeout_s: float) -> tuple[int, int] | None:
        if self.delay_s is None or self.delay_s > timeout_s:
            return None
        return (0, self.sent_ns + int(self.delay_s * 1e9))


def test_the_delivery_is_until_the_last_answer() -> None:
    from xdpcap.orchestrator.run import runner as run

    agents = [_Agent(0.002), _Agent(0.120), _Agent(0.010)]
    assert run.broadcast_delivery_s(agents) == pytest.approx(0.120, abs=0.05)
    assert run.broadcast_delivery_s([_Agent(0.002), _Agent(None)]) is None
