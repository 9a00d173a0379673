"""Tables for people: the live progress of a run, its final report, `check` verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..remote.state import HostState

if TYPE_CHECKING:  # loaded when a table is first drawn: `xdpcap run` connects before that
    from rich.table import Table


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def live_table(states: Sequence[HostState]) -> Table:
    from rich.table import Table

    table = Table(title="xdpcap: capturing", expand=False)
    for column in ("host", "iface", "state", "packets", "bytes", "lost"):
        table.add_column(
            column, justify="right" if column in ("packets", "bytes", "lost") else "left"
        )
    for s in states:
        table.add_row(s.name, s.iface, s.state, str(s.packets), _human_bytes(s.bytes), str(s.lost))
    table.add_row(
        "total",
        "",
        "",
        str(sum(s.packets for s in states)),
        _human_bytes(sum(s.bytes for s in states)),
        str(sum(s.lost for s in states)),
        style="bold",
    )
    return table


def _window(s: HostState) -> str:
    summary = s.summary or {}
    start, end = summary.get("window_start_ns"), summary.get("window_end_ns")
    if not start or not end:
        return "-"
    return f"{(end - start) / 1e9:.2f} s"


def final_table(states: Sequence[HostState]) -> Table:
    from rich.table import Table

    table = Table(title="xdpcap: run results")
    for column in ("host", "result", "written", "lost", "seen", "window", "clock offset"):
        table.add_column(column)
    for s in states:
        if s.ok:
            result = "[green]ok[/green]"
        elif s.partial:
            result = f"[yellow]partial: {s.partial}[/yellow]"
        else:
            result = f"[red]failed: {s.reason or s.state}[/red]"
        summary = s.summary or {}
        table.add_row(
            s.name,
            result,
            str(summary.get("written", s.packets)),
            str(summary.get("lost", s.lost)),
            str(summary.get("seen", s.seen)),
            _window(s),
            s.clock.describe() if s.clock else "-",
        )
    return table


def check_table(rows: Sequence[tuple[str, dict[str, Any] | None, str | None]]) -> Table:
    from rich.table import Table

    table = Table(title="xdpcap check")
    table.add_column("host", no_wrap=True)  # the columns a narrow terminal must not cut
    for column in ("verdict", "kernel", "bcc", "headers", "sampler", "hooks", "reason"):
        # One word each: cut, "compiles" and "cached" read alike ("comp…", "cach…").
        short = column in ("verdict", "sampler")  # hooks may name a pin path: wraps
        table.add_column(column, no_wrap=short, min_width=10 if column == "sampler" else None)
    for name, report, error in rows:
        if report is None:
            table.add_row(name, "[red]unreachable[/red]", "-", "-", "-", "-", "-", error or "")
            continue
        verdict = report.get("verdict", "?")
        colour = "green" if verdict == "ok" else "red"
        headers = (
            "exact"
            if report.get("headers_exact")
            else ("other version" if report.get("headers") else "none")
        )
        table.add_row(
            name,
            f"[{colour}]{verdict}[/{colour}]",
            str(report.get("kernel")),
            str(report.get("bcc")),
            headers,
            _sampler_state(report.get("sampler_cached")),
            _hooks(report.get("hooks")),
            str(report.get("reason")),
        )
    return table


def _hooks(hooks: dict[str, str] | None) -> str:
    """How inbound and outbound packets would be captured: "xdp+tcx" (or xdp+clsact)."""
    if not hooks:
        return "-"
    return "+".join(hooks.values())


def _sampler_state(cached: bool | None) -> str:
    """What the first capture on the host does: load the cached sampler, or compile it."""
    return {True: "cached", False: "compiles"}.get(cached, "-")


def final_lines(states: Sequence[HostState]) -> list[str]:
    lines = []
    for s in states:
        summary = s.summary or {}
        if s.ok:
            result = "ok"
        elif s.partial:
            result = f"partial: {s.partial}"
        else:
            result = f"failed: {s.reason or s.state}"
        clock = f", clock {s.clock.describe()}" if s.clock else ""
        # With a filter, most of what a host sees is rightly not written: say how much.
        # (--pid, --comm and --container filter too, without an expression.)
        filtered = (
            f", filtered out {summary['filtered_out']}"
            if summary.get("filter") or summary.get("filtered_out")
            else ""
        )
        directions = summary.get("directions") or {}
        split = (
            " (" + ", ".join(f"{name} {d['written']}" for name, d in directions.items()) + ")"
            if len(directions) > 1
            else ""
        )
        lines.append(
            f"{s.name}: {result}; written {summary.get('written', s.packets)}{split}, "
            f"lost {summary.get('lost', s.lost)}, seen {summary.get('seen', s.seen)}{filtered}, "
            f"window {_window(s)}{clock}"
        )
    return lines
