"""`xdpcap collect RUN_FOLDER`: come back for captures a run could not fetch, and merge again.

An agent whose SSH connection died goes on capturing to its own deadline, then writes
its file and a `.json` summary beside it. `collect` reconnects to every host of the run
that has no local file yet, waits (bounded) for that summary, fetches and verifies the
capture, and redoes the merge with the clock offsets the run measured.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..clock.probe import PROBES_AT_ONCE, ClockOffset
from ..errors import RemoteError, UsageError
from ..inventory import ansible as inventory_ansible
from ..remote.bundle import build_agent_bundle
from ..remote.host import RemoteHost
from ..remote.ssh import SshSettings
from ..remote.state import HostState, Phase
from .fanout import each_remote
from .results import RunResult, merge_states, write_run_json

WAIT_FOR_CAPTURE_S = 60.0


def _state_from(data: dict) -> HostState:
    fields = {k: v for k, v in data.items() if k in HostState.__dataclass_fields__}
    clock = fields.pop("clock", None)
    state = HostState(**fields)
    if clock:
        state.clock = ClockOffset(clock["offset_ns"], clock["error_ns"], clock.get("sync_state"))
    return state


def load_run(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{run_dir}: not a run folder (no run.json)") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None


def _states_of(run: Any, path: Path) -> list[HostState]:
    """The hosts a run.json records; a file that is not one of ours is one clear line."""
    try:
        if not isinstance(run.get("run_id"), str) or not run.get("inventory"):
            raise ValueError("no run id or no inventory")
        return [_state_from(h) for h in run["hosts"]]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{path}: not a run.json written by xdpcap run ({exc})") from None


@dataclass(frozen=True)
class CollectOptions:
    run_dir: Path
    wait_s: float = WAIT_FOR_CAPTURE_S
    accept_new_host_keys: bool = False
    inventory_reader: str | None = None
    vault_password_file: str | None = None


def collect(options: CollectOptions, console: Console) -> RunResult:
    """Fetch what the run in `options.run_dir` could not, then merge and rewrite run.json."""
    run = load_run(options.run_dir)
    states = _states_of(run, options.run_dir / "run.json")
    inventory = inventory_ansible.load(
        run["inventory"], options.inventory_reader, options.vault_password_file
    ).inventory
    settings = SshSettings(accept_new_host_keys=options.accept_new_host_keys)
    missing = [
        s for s in states if not (s.local_file and Path(s.local_file).exists()) and s.remote_file
    ]
    remotes = []
    for state in missing:
        if state.name not in inventory.hosts:
            state.reason = f"no longer in {run['inventory']}"
            continue
        remotes.append(
            RemoteHost(inventory.hosts[state.name], state, settings, run_id=run["run_id"])
        )

    clock_slots = threading.BoundedSemaphore(PROBES_AT_ONCE)
    bundle = build_agent_bundle()

    def fetch(remote: RemoteHost) -> None:
        try:
            remote.open()  # an unreachable host fails with its connection's reason
            if remote.await_summary(options.wait_s, poll_s=1.0) is None:
                raise RemoteError(
                    f"{remote.host.name}: no finished capture at {remote.state.remote_file}"
                )
            if remote.state.clock is None:
                remote.agent_path = f"{remote.cache_dir}/{bundle.filename}"
                try:
                    remote.probe_clock(clock_slots)
                except RemoteError as exc:  # merged without correction, and said so
                    console.print(f"{exc}; its clock offset is unknown")
            remote.fetch(options.run_dir / "hosts")
            remote.state.move(Phase.DONE, reason=None)
        finally:
            remote.close()

    each_remote(remotes, fetch, 10)
    out = Path(run["merged"]) if run.get("merged") else options.run_dir / "merged.pcapng"
    report = merge_states(states, out, clock_correction=run.get("clock_correction", True))
    run["hosts"] = [s.to_dict() for s in states]
    run["merged"] = str(out) if report is not None else None
    alignment = report.alignment if report is not None else None
    run["clock_alignment"] = alignment.to_dict() if alignment else None
    run["journeys"] = report.journeys if report is not None else None
    write_run_json(options.run_dir, run)
    from ..report.page import write_beside  # plotly loads only here

    _, problem = write_beside(options.run_dir / "run.json")
    if problem:
        console.print(f"[yellow]warning:[/yellow] {problem}")
    result = RunResult(options.run_dir, states, out if report is not None else None, report)
    return result
