"""What a run leaves: its folder (`xdpcap-runs/<UTC time>/`), run.json, the merge of the
hosts' files (with the clocks aligned from the traffic), and the result printed at the end.
`run` and `collect` both finish here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..clock.probe import corrections
from ..errors import UsageError
from ..remote.state import HostState
from .tables import final_lines, final_table

if TYPE_CHECKING:
    from rich.console import Console

    from ..clock.align import Alignment
    from ..merge.captures import MergeReport


@dataclass
class RunResult:
    run_dir: Path
    states: list[HostState]
    merged: Path | None
    merge_report: MergeReport | None
    stream: dict | None = None  # the live stream's figures (-w -)

    @property
    def exit_code(self) -> int:
        ok = sum(1 for s in self.states if s.ok)
        if ok == len(self.states) and self.merged is not None:
            return 0
        return 3 if ok or any(s.local_file for s in self.states) else 1


def new_run_dir(runs_dir: Path) -> Path:
    try:
        return _new_run_dir(runs_dir)
    except OSError as exc:
        raise UsageError(
            f"cannot create a run folder in {runs_dir}: {exc.strerror or exc}"
        ) from exc


def _new_run_dir(runs_dir: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = runs_dir / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = runs_dir / f"{stamp}-{suffix}"
    # Captures hold other people's traffic: the run folder is for its owner only.
    path.mkdir(mode=0o700, parents=True)
    (path / "hosts").mkdir(mode=0o700)
    return path


def write_run_json(run_dir: Path, data: dict) -> None:
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(run_dir / "run.json")


def merge_states(
    states: Sequence[HostState], out: Path, *, clock_correction: bool
) -> MergeReport | None:
    """Merge every fetched host capture, aligning the hosts' clocks (clock.corrections)
    and following the packets across them (journeys) in the same pass."""
    from ..merge.captures import MergeSource
    from .follow import follow_and_merge, host_view

    fetched = [s for s in states if s.local_file]
    if not fetched:
        return None
    # The probe's offsets are the prior; the traffic the hosts exchanged refines them.
    shifts = corrections({s.name: s.clock for s in fetched if s.clock})
    priors = [shifts.get(state.name, 0) for state in fetched]

    def sources_for(alignment: Alignment | None) -> list[MergeSource]:
        shifts = alignment.shifts_ns if alignment is not None else priors
        return [
            MergeSource(
                path=state.local_file,
                host=state.name,
                address=state.address,
                clock_offset_ns=shifts[index],
                clock_error_ns=state.clock.error_ns if state.clock else None,
                sync_state=state.clock.sync_state if state.clock else None,
                clock_note=alignment.describe(index) if alignment else None,
                clock_drift_ppb=alignment.rates_ppb[index] if alignment else 0,
                clock_epoch_ns=alignment.epoch_ns if alignment else 0,
            )
            for index, state in enumerate(fetched)
        ]

    report, _ = follow_and_merge(
        [s.local_file for s in fetched],
        [s.name for s in fetched],
        priors,
        [host_view(s) for s in fetched],
        out,
        sources_for,
        clock_correction=clock_correction,
    )
    shifts = report.alignment.shifts_ns if report.alignment is not None else priors
    for state, shift in zip(fetched, shifts):
        state.clock_shift_ns = shift
    return report


def print_result(result: RunResult, console: Console) -> None:
    if console.is_terminal:
        console.print(final_table(result.states))
    else:
        # Logs and pipes get one unwrapped line per host, easy to grep.
        for line in final_lines(result.states):
            print(line, file=console.file)
    if result.merge_report is not None:
        for warning in result.merge_report.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        alignment = result.merge_report.alignment
        if alignment is not None:
            console.print(alignment.summary(), soft_wrap=True)
            for delay in alignment.delays:
                console.print(
                    f"one-way delay {delay.sender} → {delay.receiver}: min "
                    f"{delay.min_ns / 1000:.1f} µs, median {delay.median_ns / 1000:.1f} µs "
                    f"({delay.packets} packets)",
                    soft_wrap=True,
                )
    if result.stream is not None:
        console.print(stream_line(result.stream, result.states), soft_wrap=True)
    if result.merged is not None:
        total = result.merge_report.packets if result.merge_report else "?"
        console.print(f"merged {total} packets into {result.merged}", soft_wrap=True)
    else:
        console.print("[red]nothing was captured: no merged file[/red]")
    console.print(f"run folder: {result.run_dir}", soft_wrap=True)


def stream_line(stream: dict, states: Sequence[HostState]) -> str:
    """What the live stream carried of what the hosts wrote, and why not the rest."""
    hosts = stream["hosts"].values()
    written = sum(int((s.summary or {}).get("written", 0)) for s in states)
    text = f"live stream: {stream['packets']} of the {written} packets the hosts wrote"
    missing = {
        "late": sum(h["late"] for h in hosts),
        "skipped on the hosts": sum(h["skipped_host"] for h in hosts),
        "skipped at the controller": sum(h["skipped_controller"] for h in hosts),
        "not taken by the reader": sum(h["unsent"] for h in hosts),
    }
    shown = [f"{why} {n}" for why, n in missing.items() if n]
    if shown:
        text += " (" + ", ".join(shown) + ")"
    if stream["reader_gone"]:
        text += "; its reader went away"
    elif stream.get("cut_off"):
        text += "; its reader was still too slow at the end: cut off"
    return text
