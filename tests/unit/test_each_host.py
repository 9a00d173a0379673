"""each_remote: every host's work in a bounded pool; Ctrl-C stops what watches and what waits."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from xdpcap.orchestrator.remote.state import HostState
from xdpcap.orchestrator.run import fanout


class _Remote:
    def __init__(self, name: str) -> None:
        self.host = type("H", (), {"name": name})()
        self.live = None
        self.state = HostState(name, "", "eth0")


def test_ctrl_c_sets_abort_and_cancels_what_has_not_started() -> None:
    remotes = [_Remote(f"h{n}") for n in range(20)]
    abort = threading.Event()
    started: list[str] = []
    two_running = threading.Barrier(3)

    def work(remote: _Remote) -> None:
        started.append(remote.host.name)
        if len(started) <= 2:
            two_running.wait(5)
        abort.wait(30)  # a launch waiting for its agent, watching the abort

    def ctrl_c() -> None:
        two_running.wait(5)  # both workers busy, 18 hosts queued
        raise KeyboardInterrupt

    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fanout.each_remote(remotes, work, 2, meanwhile=ctrl_c, abort=abort)
    assert abort.is_set()
    assert time.monotonic() - began < 10  # the workers did not sit out their 30 s
    assert len(started) <= 4  # the queued hosts were never started


def test_failures_become_results() -> None:
    remotes = [_Remote("ok"), _Remote("bad")]

    def work(remote: _Remote) -> None:
        if remote.host.name == "bad":
            raise RuntimeError("boom")

    fanout.each_remote(remotes, work, 2)
    assert remotes[1].state.state == "failed" and "boom" in remotes[1].state.reason
    assert remotes[0].state.state == "pending"


def test_results_hold_each_hosts_value_or_exception() -> None:
    """Hosts as the run has them (dataclasses: not hashable) come back paired with what
    their work returned or raised."""

    @dataclass
    class Host:
        name: str

    hosts = [Host("a"), Host("b"), Host("c")]

    def work(host: Host) -> str:
        if host.name == "b":
            raise ValueError("refused")
        return host.name.upper()

    results = fanout.each_host(hosts, work, 2)
    assert sorted((h.name, v) for h, v in results.succeeded) == [("a", "A"), ("c", "C")]
    assert [(h.name, str(e)) for h, e in results.failed] == [("b", "refused")]
