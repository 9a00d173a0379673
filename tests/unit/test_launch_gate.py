"""The launch gate: grows while launches stay fast, shrinks when they slow, stays in bounds."""

from __future__ import annotations

import threading
import time

import pytest
from xdpcap.orchestrator.run import launch_gate
from xdpcap.orchestrator.run.launch_gate import LaunchGate


class FakeClock:
    """time.monotonic for the gate: each launch "takes" what the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(launch_gate.time, "monotonic", fake)
    return fake


def launch(gate: LaunchGate, clock: FakeClock, took_s: float) -> None:
    with gate.slot():
        clock.now += took_s


def test_fast_launches_open_the_gate_up_to_forks(clock) -> None:
    gate = LaunchGate(ceiling=100)
    assert gate.limit == launch_gate.START
    for _ in range(20):
        launch(gate, clock, 0.3)
    assert gate.limit == launch_gate.START + 20
    for _ in range(200):
        launch(gate, clock, 0.31)
    assert gate.limit == 100  # never past --forks


def test_slow_launches_close_it_down_to_the_floor(clock) -> None:
    gate = LaunchGate(ceiling=100)
    launch(gate, clock, 0.2)  # the fastest seen
    for _ in range(4):
        launch(gate, clock, 0.4)  # within the tolerance: still growing
    grown = gate.limit
    for _ in range(3):
        launch(gate, clock, 0.41 * launch_gate.TOLERANCE)
    assert gate.limit == grown - 3
    for _ in range(100):
        launch(gate, clock, 5.0)
    assert gate.limit == launch_gate.FLOOR


def test_a_failed_launch_changes_nothing(clock) -> None:
    gate = LaunchGate(ceiling=50)
    launch(gate, clock, 0.2)
    before = gate.limit
    with pytest.raises(RuntimeError), gate.slot():
        clock.now += 30.0
        raise RuntimeError("host unreachable")
    assert gate.limit == before
    assert gate.fastest_s == 0.2


def test_small_forks_bound_the_start_and_the_floor() -> None:
    gate = LaunchGate(ceiling=2)
    assert (gate.limit, gate.floor) == (2, 2)
    assert LaunchGate(ceiling=6).limit == 6


def test_never_more_at_once_than_the_limit() -> None:
    """Real threads: 40 launches through a gate of 5 that cannot grow (ceiling 5)."""
    gate = LaunchGate(ceiling=5)
    at_once, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal at_once, most
        with gate.slot():
            with lock:
                at_once += 1
                most = max(most, at_once)
            time.sleep(0.01)
            with lock:
                at_once -= 1

    threads = [threading.Thread(target=work) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 5 == gate.peak
    report = gate.report()
    assert report["forks"] == 5 and report["peak_at_once"] == 5
