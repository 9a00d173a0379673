"""One host's state in a run: where it is (an enum of phases, moved in one place) and
what it did (counts, times, files). The live table, run.json and the report read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..clock.probe import ClockOffset


class Phase(str, Enum):
    """A host's phases, in the order a run moves through them; their values are what
    run.json and the tables show."""

    PENDING = "pending"
    CONNECTING = "connecting"
    UPLOADING = "uploading"
    COMPILING = "compiling"  # the agent started: it compiles (or loads) and attaches
    READY = "ready"  # attached, waiting for the start
    CAPTURING = "capturing"
    CAPTURED = "captured"  # the agent wrote its file and waits for the fetch
    DISCONNECTED = "disconnected"  # the connection died; the agent goes on by itself
    FETCHING = "fetching"
    DONE = "done"  # the file is here and checked
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


_KEEP: Any = object()  # move() without a reason leaves the one the host has


@dataclass
class HostState:
    """What the live table and the final report show for one host."""

    name: str
    address: str
    iface: str
    state: Phase = Phase.PENDING
    reason: str | None = None
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    seen: int = 0
    t_ready_s: float | None = None
    t_capturing_s: float | None = None
    window_start_ns: int | None = None
    summary: dict[str, Any] | None = None
    clock: ClockOffset | None = None  # as measured: host clock − controller clock
    clock_shift_ns: int | None = None  # what the merge subtracted (see clock.corrections)
    local_file: str | None = None
    remote_file: str | None = None
    sha256: str | None = None
    filter: str | None = None  # the capture filter expression this host ran
    direction: str = "inout"  # -Q: in, out or inout
    xdp_hook: str | None = None  # --xdp-hook: the pinned hook map of the host's XDP program
    process: bool | None = None  # attribution: --process, xdpcap_process (None: default, off)
    pid: int | None = None  # keep only this process's packets (--pid, xdpcap_pid)
    comm: str | None = None  # ... processes of this name (--comm, xdpcap_comm)
    container: str | None = None  # ... in this container (--container, xdpcap_container)
    headers: str | None = None  # the kernel headers the sampler was compiled against

    def __post_init__(self) -> None:
        self.state = Phase(self.state)  # as read back from run.json: a known phase or an error

    def move(self, phase: Phase, reason: str | None = _KEEP) -> None:
        """The one place a host changes state; `reason` says why (None clears it, as when
        a host that was lost comes back with its capture)."""
        self.state = phase
        if reason is not _KEEP:
            self.reason = reason

    @property
    def ok(self) -> bool:
        return self.state == Phase.DONE and self.local_file is not None and not self.partial

    @property
    def partial(self) -> str | None:
        return (self.summary or {}).get("partial_reason")

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "clock"}
        data["state"] = self.state.value
        if self.clock:
            data["clock"] = {
                "offset_ns": self.clock.offset_ns,
                "error_ns": self.clock.error_ns,
                "sync_state": self.clock.sync_state,
            }
        return data
