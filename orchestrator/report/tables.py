"""The report's tables for the terminal: per-host accounting, the clock alignment, and
per host pair what left, arrived and was lost, and how long it took."""

from __future__ import annotations

from rich.table import Table


def host_table(data: dict) -> Table:
    table = Table(title="hosts")
    for column in ("host", "state", "written", "seen", "filtered out", "lost", "file"):
        table.add_column(column, justify="left" if column in ("host", "state", "file") else "right")
    for host in data.get("hosts") or []:
        summary = host.get("summary") or {}
        table.add_row(
            str(host.get("name")),
            str(host.get("state", "")),
            _n(summary.get("written", host.get("packets"))),
            _n(summary.get("seen", host.get("seen"))),
            _n(summary.get("filtered_out")),
            _n(summary.get("lost", host.get("lost"))),
            str(host.get("local_file") or ""),
        )
    return table


def clock_table(data: dict) -> Table | None:
    alignment = data.get("clock_alignment")
    if not alignment:
        return None
    table = Table(title=f"clock alignment (reference {alignment.get('reference')})")
    for column in ("host", "offset", "feasible interval", "drift", "from"):
        table.add_column(column, justify="left" if column in ("host", "from") else "right")
    for name, clock in (alignment.get("hosts") or {}).items():
        low, high = clock.get("feasible_ns") or [None, None]
        table.add_row(
            name,
            ms(clock.get("offset_ns")),
            f"[{ms(low, '-inf')}, {ms(high, '+inf')}]",
            f"{(clock.get('drift_ppb') or 0) / 1000:+.3f} ppm",
            str(clock.get("source", "")),
        )
    return table


def pair_table(data: dict) -> Table | None:
    journeys = data.get("journeys")
    if not journeys or not journeys.get("pairs"):
        return None
    table = Table(title="host pairs (sender → receiver)")
    columns = (
        "pair",
        "left",
        "arrived",
        "lost",
        "lost %",
        "dup",
        "reord",
        "p50",
        "p90",
        "p99",
        "max",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "pair" else "right", no_wrap=True)
    for pair in journeys["pairs"]:
        delay = pair.get("delay_ns") or {}
        table.add_row(
            f"{pair['sender']} → {pair['receiver']}",
            _n(pair["left"]),
            _n(pair["arrived"]),
            _n(pair["lost"]),
            lost_percent(pair),
            _n(pair["duplicated"]),
            _n(pair["reordered"]),
            *(us(delay.get(k)) for k in ("p50", "p90", "p99", "max")),
        )
    return table


def residence_table(data: dict) -> Table | None:
    journeys = data.get("journeys") or {}
    if not journeys.get("residence"):
        return None
    table = Table(title="residence time (arrived on one interface, left by another)")
    for column in ("host", "packets", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="left" if column == "host" else "right")
    for host in journeys["residence"]:
        delay = host["delay_ns"]
        table.add_row(
            host["host"],
            _n(host["packets"]),
            *(us(delay.get(k)) for k in ("p50", "p90", "p99", "max")),
        )
    return table


def tables(data: dict) -> list[Table]:
    found = [host_table(data), clock_table(data), pair_table(data), residence_table(data)]
    return [table for table in found if table is not None]


def lost_percent(pair: dict) -> str:
    return f"{100 * pair['lost'] / pair['left']:.2f}" if pair["left"] else "-"


def ms(ns: int | None, missing: str = "-") -> str:
    return missing if ns is None else f"{ns / 1e6:+.6f} ms"


def us(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f} µs"


def _n(value) -> str:
    return "-" if value is None else str(value)
