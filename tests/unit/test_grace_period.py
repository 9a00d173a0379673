"""The grace period the agent waits for at the end of a window, instead of detaching."""

from __future__ import annotations

from xdpcap.agent import grace_period, sampler


def test_the_kernel_grants_the_barrier() -> None:
    """A real membarrier(2) call: this machine (and the field's 6.1) has it."""
    assert grace_period.wait_for_running_programs() is True


def test_an_unknown_architecture_has_none(monkeypatch) -> None:
    monkeypatch.setattr(grace_period.platform, "machine", lambda: "sparc64")
    assert grace_period.wait_for_running_programs() is False


class _Hook:
    def __init__(self) -> None:
        self.detached = False

    def detach(self) -> None:
        self.detached = True


def _sampler_with(hook: _Hook) -> sampler.Sampler:
    s = sampler.Sampler.__new__(sampler.Sampler)
    s._attached = [hook]
    return s


def test_quiesce_keeps_the_hooks_when_the_barrier_works(monkeypatch) -> None:
    monkeypatch.setattr(sampler, "wait_for_running_programs", lambda: True)
    hook = _Hook()
    _sampler_with(hook).quiesce()
    assert not hook.detached  # detached later, after "done"


def test_quiesce_detaches_where_there_is_no_barrier(monkeypatch) -> None:
    monkeypatch.setattr(sampler, "wait_for_running_programs", lambda: False)
    hook = _Hook()
    _sampler_with(hook).quiesce()
    assert hook.detached  # a detach waits for running programs as well
