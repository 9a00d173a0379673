"""The report's tables: per-host accounting, the clock alignment, and per host pair what
left, arrived and was lost, and how long it took. Each is built once as data (`Sheet`),
then drawn by rich on the terminal (`to_rich`) or written as an HTML table for the page
(`to_html`): one set of columns and rows, two renderers."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table


@dataclass
class Sheet:
    """A table as data: its title, its columns (name, left-aligned?) and its rows."""

    title: str
    columns: list[tuple[str, bool]]
    rows: list[list[str]] = field(default_factory=list)


def host_table(data: dict) -> Sheet:
    left = ("host", "state", "file")
    names = ("host", "state", "written", "seen", "filtered out", "lost", "file")
    sheet = Sheet("hosts", [(c, c in left) for c in names])
    for host in data.get("hosts") or []:
        summary = host.get("summary") or {}
        sheet.rows.append(
            [
                str(host.get("name")),
                str(host.get("state", "")),
                _n(summary.get("written", host.get("packets"))),
                _n(summary.get("seen", host.get("seen"))),
                _n(summary.get("filtered_out")),
                _n(summary.get("lost", host.get("lost"))),
                str(host.get("local_file") or ""),
            ]
        )
    return sheet


def clock_table(data: dict) -> Sheet | None:
    alignment = data.get("clock_alignment")
    if not alignment:
        return None
    names = ("host", "offset", "feasible interval", "drift", "from")
    sheet = Sheet(
        f"clock alignment (reference {alignment.get('reference')})",
        [(c, c in ("host", "from")) for c in names],
    )
    for name, clock in (alignment.get("hosts") or {}).items():
        low, high = clock.get("feasible_ns") or [None, None]
        sheet.rows.append(
            [
                name,
                ms(clock.get("offset_ns")),
                f"[{ms(low, '-inf')}, {ms(high, '+inf')}]",
                f"{(clock.get('drift_ppb') or 0) / 1000:+.3f} ppm",
                str(clock.get("source", "")),
            ]
        )
    return sheet


def pair_table(data: dict) -> Sheet | None:
    journeys = data.get("journeys")
    if not journeys or not journeys.get("pairs"):
        return None
    names = ("pair", "left", "arrived", "lost", "lost %", "dup", "reord", "p50", "p90", "p99")
    sheet = Sheet("host pairs (sender → receiver)", [(c, c == "pair") for c in (*names, "max")])
    for pair in journeys["pairs"]:
        delay = pair.get("delay_ns") or {}
        sheet.rows.append(
            [
                f"{pair['sender']} → {pair['receiver']}",
                _n(pair["left"]),
                _n(pair["arrived"]),
                _n(pair["lost"]),
                lost_percent(pair),
                _n(pair["duplicated"]),
                _n(pair["reordered"]),
                *(us(delay.get(k)) for k in ("p50", "p90", "p99", "max")),
            ]
        )
    return sheet


def residence_table(data: dict) -> Sheet | None:
    journeys = data.get("journeys") or {}
    if not journeys.get("residence"):
        return None
    names = ("host", "packets", "p50", "p90", "p99", "max")
    sheet = Sheet(
        "residence time (arrived on one interface, left by another)",
        [(c, c == "host") for c in names],
    )
    for host in journeys["residence"]:
        delay = host["delay_ns"]
        sheet.rows.append(
            [host["host"], _n(host["packets"]), *(us(delay.get(k)) for k in names[2:])]
        )
    return sheet


def sheets(data: dict) -> list[Sheet]:
    found = [host_table(data), clock_table(data), pair_table(data), residence_table(data)]
    return [sheet for sheet in found if sheet is not None]


def tables(data: dict) -> list[Table]:
    """The sheets as rich tables, for the terminal."""
    return [to_rich(sheet) for sheet in sheets(data)]


def to_rich(sheet: Sheet) -> Table:
    from rich.table import Table

    table = Table(title=sheet.title)
    for name, left in sheet.columns:
        table.add_column(name, justify="left" if left else "right", no_wrap=not left)
    for row in sheet.rows:
        table.add_row(*row)
    return table


def to_html(sheet: Sheet) -> str:
    """An HTML table (a page of a hundred hosts has thousands of pair rows: written as
    text, not laid out cell by cell as a terminal table)."""
    head = "".join(
        f"<th class={'l' if left else 'r'}>{html.escape(name)}</th>" for name, left in sheet.columns
    )
    aligns = ["l" if left else "r" for _name, left in sheet.columns]
    body = "".join(
        "<tr>"
        + "".join(f"<td class={a}>{html.escape(cell)}</td>" for a, cell in zip(aligns, row))
        + "</tr>"
        for row in sheet.rows
    )
    return (
        f"<table class=sheet><caption>{html.escape(sheet.title)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def lost_percent(pair: dict) -> str:
    return f"{100 * pair['lost'] / pair['left']:.2f}" if pair["left"] else "-"


def ms(ns: int | None, missing: str = "-") -> str:
    return missing if ns is None else f"{ns / 1e6:+.6f} ms"


def us(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f} µs"


def _n(value) -> str:
    return "-" if value is None else str(value)
