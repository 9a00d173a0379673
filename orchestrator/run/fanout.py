"""The fan-out: the same work on every host, a bounded number at a time.

Like Fabric's `GroupResult`, it returns each host's result or exception once every host
has finished: one slow or broken host never hides the others. A host's failure is also
reported the moment it happens (`on_failure`), so the live table and the live stream
react at once instead of after the slowest host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..errors import XdpcapError
from ..remote.host import RemoteHost
from ..remote.state import Phase

T = TypeVar("T")


@dataclass
class HostResults(Generic[T]):
    """Per host: what the work returned, or the exception it raised (pairs, in the order
    the hosts finished: a host need not be hashable)."""

    succeeded: list[tuple[T, object]] = field(default_factory=list)
    failed: list[tuple[T, Exception]] = field(default_factory=list)


def each_host(
    items: Sequence[T],
    work: Callable[[T], object],
    at_once: int,
    on_failure: Callable[[T, Exception], None] | None = None,
    meanwhile: Callable[[], None] | None = None,
    abort: threading.Event | None = None,
) -> HostResults[T]:
    """Run `work` on every item with at most `at_once` at a time; exceptions are results.

    `meanwhile` runs in this thread once the work has started. `abort` is set when this
    thread is interrupted (Ctrl-C), before waiting for the workers: work that watches it
    ends early, and what has not started yet is not started. Only that interruption (or
    an exception from `meanwhile`) propagates.
    """
    results: HostResults[T] = HostResults()
    lock = threading.Lock()

    def guarded(item: T) -> None:
        try:
            value = work(item)
        except Exception as exc:  # every failure is a host's result, whatever its type
            with lock:
                results.failed.append((item, exc))
            if on_failure is not None:
                on_failure(item, exc)
        else:
            with lock:
                results.succeeded.append((item, value))

    with ThreadPoolExecutor(max_workers=max(1, min(at_once, len(items) or 1))) as pool:
        pending = pool.map(guarded, items)  # submits every item now
        try:
            if meanwhile is not None:
                meanwhile()
            list(pending)
        except BaseException:
            if abort is not None:
                abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


def failure_reason(exc: Exception) -> str:
    """One line for a host's failure: our errors say it themselves, anything else (a bug,
    a library's surprise) is named by its type."""
    return str(exc) if isinstance(exc, XdpcapError) else f"{type(exc).__name__}: {exc}"


def fail_remote(remote: RemoteHost, exc: Exception | str) -> None:
    """Mark a host failed (with its one-line reason, without the host's name the table
    shows anyway); its live stream stops waiting."""
    if remote.live is not None:
        remote.live.done(None)  # nothing more comes from it
    reason = exc if isinstance(exc, str) else failure_reason(exc)
    remote.state.move(Phase.FAILED, reason.removeprefix(f"{remote.host.name}: "))


def each_remote(
    remotes: Sequence[RemoteHost],
    work: Callable[[RemoteHost], object],
    at_once: int,
    meanwhile: Callable[[], None] | None = None,
    abort: threading.Event | None = None,
) -> HostResults[RemoteHost]:
    """each_host over RemoteHosts: a host whose work fails is marked failed at once."""
    return each_host(remotes, work, at_once, fail_remote, meanwhile, abort)
