"""`xdpcap collect RUN_FOLDER`: come back for captures a run could not fetch, and merge again.

An agent whose SSH connection died goes on capturing to its own deadline, then writes
its file and a `.json` summary beside it. `collect` reconnects to every host of the run
that has no local file yet, waits (bounded) for that summary, fetches and verifies the
capture, and redoes the merge with the clock offsets the run measured.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ..agent import validate
from . import inventory_ansible
from .agent_bundle import build_agent_bundle
from .clock import PROBES_AT_ONCE, ClockOffset
from .errors import RemoteError, UsageError
from .remote_host import HostState, RemoteHost
from .run import RunResult, _each, merge_states, print_result, write_run_json
from .ssh import SshSettings

WAIT_FOR_CAPTURE_S = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    collect = sub.add_parser("collect", help="fetch what a run could not, and merge again")
    collect.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    collect.add_argument(
        "--wait",
        type=float,
        default=WAIT_FOR_CAPTURE_S,
        help="seconds to wait for a capture still running (default 60)",
    )
    collect.add_argument("--accept-new-host-keys", action="store_true")
    collect.add_argument(
        "--inventory-reader",
        choices=inventory_ansible.READERS,
        help="who reads the run's inventory again (as `xdpcap run`)",
    )
    collect.add_argument("--vault-password-file", help="decrypt !vault values in the inventory")
    collect.set_defaults(func=collect_command)


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


def collect_command(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    validate.positive_number("--wait", args.wait, 3600)
    run = load_run(args.run_dir)
    states = _states_of(run, args.run_dir / "run.json")
    inventory = inventory_ansible.load(
        run["inventory"], args.inventory_reader, args.vault_password_file
    ).inventory
    settings = SshSettings(accept_new_host_keys=args.accept_new_host_keys)
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
            remote.open()
            deadline = time.monotonic() + args.wait
            summary = remote.read_remote_summary()
            while summary is None and time.monotonic() < deadline:
                time.sleep(1)
                summary = remote.read_remote_summary()
            if summary is None:
                raise RemoteError(
                    f"{remote.host.name}: no finished capture at {remote.state.remote_file}"
                )
            remote.state.summary = summary
            if remote.state.clock is None:
                remote.agent_path = f"{remote.cache_dir}/{bundle.filename}"
                try:
                    remote.probe_clock(clock_slots)
                except RemoteError as exc:  # merged without correction, and said so
                    console.print(f"{exc}; its clock offset is unknown")
            remote.fetch(args.run_dir / "hosts")
            remote.state.state = "done"
            remote.state.reason = None
        finally:
            remote.close()

    _each(10, remotes, fetch)
    out = Path(run["merged"]) if run.get("merged") else args.run_dir / "merged.pcapng"
    report = merge_states(states, out, clock_correction=run.get("clock_correction", True))
    run["hosts"] = [s.to_dict() for s in states]
    run["merged"] = str(out) if report is not None else None
    alignment = report.alignment if report is not None else None
    run["clock_alignment"] = alignment.to_dict() if alignment else None
    write_run_json(args.run_dir, run)
    result = RunResult(args.run_dir, states, out if report is not None else None, report)
    print_result(result, console)
    if result.merged is not None:
        print(result.merged)
    return result.exit_code
