"""The agent's --start-at: one absolute wall-clock start for every host of a fleet."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from xdpcap.agent import clock, validate
from xdpcap.agent.__main__ import main
from xdpcap.agent.capture import Capture, CaptureOptions
from xdpcap.agent.errors import UsageError
from xdpcap.agent.start import START_AT_LEAD_NS, START_AT_SLACK_NS

SECOND = 1_000_000_000


@pytest.mark.parametrize("ahead_s", [-1.5, 0, 0.2, 599])
def test_start_at_accepts_a_little_past_up_to_ten_minutes_ahead(ahead_s: float) -> None:
    now = 10**18
    value = now + int(ahead_s * SECOND)
    assert validate.start_at(value, now) == value


@pytest.mark.parametrize(
    ("ahead_s", "fragment"),
    [(-2.5, "2.5 s in the past"), (-86400, "in the past"), (601, "601.0 s ahead")],
)
def test_start_at_refuses_stale_or_far_times(ahead_s: float, fragment: str) -> None:
    now = 10**18
    with pytest.raises(UsageError, match=fragment):
        validate.start_at(now + int(ahead_s * SECOND), now)


def _capture_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["capture", "-i", "lo", "-w", str(tmp_path / "x.pcapng"), "--duration", "1", *extra]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--start-at", str(time.time_ns() - 60 * SECOND)), "in the past"),
        (("--start-at", str(time.time_ns() + 3600 * SECOND)), "ahead of this host's clock"),
        (("--start-at", "soon"), "invalid int value"),
        (("--start-at", str(time.time_ns()), "--wait-start"), "give one"),
    ],
)
def test_bad_start_at_is_one_line_and_exit_2(tmp_path: Path, capsys, extra, fragment) -> None:
    # Refused before anything is attached (no root needed to see it).
    assert main(_capture_argv(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "x.pcapng").exists()


class _Events:
    """Stands in for the agent's EventSink: keeps what the capture reports."""

    controller_gone = False

    def __init__(self) -> None:
        self.emitted: list[dict] = []

    def emit(self, event: str, **fields) -> None:
        self.emitted.append({"event": event, **fields})


def _capture(events: _Events, start_at_ns: int | None = None) -> Capture:
    options = CaptureOptions(
        iface="eth0", output=Path("/nonexistent"), buffer_pages=256, start_at_ns=start_at_ns
    )
    return Capture(options, events)  # type: ignore[arg-type]


def test_wait_until_wakes_just_before_the_time_and_the_program_opens_at_it() -> None:
    target = clock.wall_clock_ns() + 300_000_000
    capture = _capture(_Events(), start_at_ns=target)
    assert capture._wait_until(target)
    early = target - clock.wall_clock_ns()
    assert 0 < early <= START_AT_LEAD_NS  # woke before it, never sooner than the lead
    # The window's start, handed to the program: the given instant on the monotonic clock.
    capture._offset = clock.realtime_minus_monotonic_ns()
    assert capture._window_start(None) == target - capture._offset


def test_window_opens_now_when_the_time_has_passed() -> None:
    capture = _capture(_Events(), start_at_ns=clock.wall_clock_ns() - 10_000_000)
    capture._offset = clock.realtime_minus_monotonic_ns()
    before = clock.monotonic_ns()
    assert before <= capture._window_start(None) <= clock.monotonic_ns()


def test_ready_too_late_is_reported_and_the_window_opens_at_once(capsys) -> None:
    events = _Events()
    capture = _capture(events)
    target = clock.wall_clock_ns() - 50 * START_AT_SLACK_NS
    started = time.monotonic()
    assert capture._wait_until(target)
    assert time.monotonic() - started < 0.05
    (event,) = events.emitted
    assert event["event"] == "late" and event["late_ns"] >= 50 * START_AT_SLACK_NS
    assert "after --start-at" in capsys.readouterr().err


def test_a_stop_while_waiting_ends_the_wait() -> None:
    capture = _capture(_Events())
    capture.stop.set("SIGTERM")
    assert not capture._wait_until(clock.wall_clock_ns() + 60 * SECOND)
