"""report.html: one self-contained page (plotly.js inline: it works offline) with the
run's tables and plots — per-pair delay distributions, delay over time, loss over time,
the clock offsets with their feasible intervals, per-host counts.

The plots are plotly figures, plain dicts drawn by plotly.js (the plotly package's copy,
embedded once in the page's head). Every number comes from run.json (`journeys`, `clock_alignment`,
`hosts`); the delay plots show the uniform sample of each pair kept by the pass.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
from pathlib import Path

from . import tables

PLOT_CLASS = "xdpcap-plot"


def write_page(data: dict, path: Path, title: str) -> Path:
    """Write the page; raises ImportError when plotly is not installed."""
    text = render(data, title)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o600)  # as run folders: captures are other people's traffic
    tmp.replace(path)
    return path


def render(data: dict, title: str) -> str:
    plotly_js, template = _plotly_files()
    figures = [
        ("Per-host counts", _host_counts(data)),
        ("Clock offsets and their feasible intervals", _clocks(data)),
        ("One-way delay per host pair", _delay_distributions(data)),
        ("One-way delay over time", _delay_over_time(data)),
        ("Lost packets over time", _loss_over_time(data)),
    ]
    sections = []
    for index, (heading, figure) in enumerate(figures):
        if figure is None:
            continue
        figure["layout"].update(template=template, margin={"t": 30, "b": 40}, height=380)
        body = _plot(figure, f"xdpcap-plot-{index}")
        sections.append(f'<h2>{html.escape(heading)}</h2>\n<div class="{PLOT_CLASS}">{body}</div>')
    return _PAGE.format(
        title=html.escape(f"xdpcap report: {title}"),
        plotly=plotly_js,
        tables=_tables_html(data),
        sections="\n".join(sections),
    )


def _plotly_files() -> tuple[str, dict]:
    """plotly.js and the plotly_white template, read from the plotly package's data: not
    imported (plotly.py's modules took 0.1 s to load, the most of a small merge's time;
    the figures are plain dicts, built here from run.json's numbers, that need none of
    its validation). ImportError when plotly is not installed."""
    spec = importlib.util.find_spec("plotly")  # finds it without running its __init__
    if spec is None or spec.origin is None:
        raise ImportError("plotly")
    data = Path(spec.origin).parent / "package_data"
    try:
        plotly_js = (data / "plotly.min.js").read_text(encoding="utf-8")
        template = json.loads((data / "templates" / "plotly_white.json").read_text())
    except FileNotFoundError as missing:
        raise ImportError(f"plotly without its {missing.filename}") from missing
    return plotly_js, template


def _plot(figure: dict, div_id: str) -> str:
    """A figure as plotly.js draws it: its div, and the call that fills it. The JSON is
    inline in a script: "<", ">" and "&" are escaped so that no string in it (a host's
    name) can end the script."""
    spec = ", ".join(_script_json(figure[key]) for key in ("data", "layout"))
    height = int(figure["layout"].get("height", 380))
    return (
        f'<div id="{div_id}" class="plotly-graph-div" style="height:{height}px; width:100%;">'
        f'</div>\n<script type="text/javascript">'
        f'Plotly.newPlot("{div_id}", {spec}, {{"responsive": true}});</script>'
    )


def _script_json(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------------------- figures
def _figure(traces: list[dict], **layout) -> dict:
    return {"data": traces, "layout": layout}


def _host_counts(data: dict):
    hosts = data.get("hosts") or []
    if not hosts:
        return None
    names = [str(h.get("name")) for h in hosts]
    traces = []
    for label, key in (("written", "written"), ("lost", "lost"), ("filtered out", "filtered_out")):
        values = [
            (h.get("summary") or {}).get(key, h.get("packets") if key == "written" else 0) or 0
            for h in hosts
        ]
        traces.append({"type": "bar", "name": label, "x": names, "y": values})
    return _figure(traces, barmode="group", yaxis={"title": {"text": "packets"}})


def _clocks(data: dict):
    alignment = data.get("clock_alignment")
    if not alignment or not alignment.get("hosts"):
        return None
    names, offsets, plus, minus = [], [], [], []
    for name, clock in alignment["hosts"].items():
        offset = clock["offset_ns"] / 1e6
        low, high = clock.get("feasible_ns") or [None, None]
        names.append(name)
        offsets.append(offset)
        plus.append(0 if high is None else high / 1e6 - offset)
        minus.append(0 if low is None else offset - low / 1e6)
    trace = {
        "type": "scatter",
        "x": names,
        "y": offsets,
        "mode": "markers",
        "name": "offset",
        "error_y": {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus},
    }
    return _figure([trace], yaxis={"title": {"text": "offset from the reference (ms)"}})


def _pairs(data: dict) -> list[dict]:
    return (data.get("journeys") or {}).get("pairs") or []


def _label(pair: dict) -> str:
    return f"{pair['sender']} → {pair['receiver']}"


def _delay_distributions(data: dict):
    pairs = [p for p in _pairs(data) if p.get("delay_series")]
    if not pairs:
        return None
    traces = [
        {
            "type": "box",
            "y": [d / 1000 for _, d in pair["delay_series"]],
            "name": _label(pair),
            "boxpoints": "outliers",
        }
        for pair in pairs
    ]
    return _figure(traces, yaxis={"title": {"text": "one-way delay (µs)"}}, showlegend=False)


def _delay_over_time(data: dict):
    pairs = [p for p in _pairs(data) if p.get("delay_series")]
    if not pairs:
        return None
    start = min(p["delay_series"][0][0] for p in pairs)
    traces = [
        {
            "type": "scatter",
            "x": [(t - start) / 1e9 for t, _ in pair["delay_series"]],
            "y": [d / 1000 for _, d in pair["delay_series"]],
            "mode": "markers",
            "name": _label(pair),
        }
        for pair in pairs
    ]
    return _figure(
        traces,
        xaxis={"title": {"text": "time since the first packet (s)"}},
        yaxis={"title": {"text": "one-way delay (µs)"}},
    )


def _loss_over_time(data: dict):
    pairs = [p for p in _pairs(data) if (p.get("timeline") or {}).get("lost")]
    if not pairs:
        return None
    start = min(p["timeline"]["start_ns"] for p in pairs)
    traces = []
    for pair in pairs:
        line = pair["timeline"]
        traces.append(
            {
                "type": "bar",
                "x": [
                    (line["start_ns"] + i * line["width_ns"] - start) / 1e9
                    for i in range(len(line["lost"]))
                ],
                "y": line["lost"],
                "width": [line["width_ns"] / 1e9] * len(line["lost"]),  # visible when few
                "offset": 0,
                "name": _label(pair),
            }
        )
    return _figure(
        traces,
        barmode="stack",
        xaxis={"title": {"text": "time (s)"}},
        yaxis={"title": {"text": "packets lost"}},
    )


# ---------------------------------------------------------------------------- tables
def _tables_html(data: dict) -> str:
    """The terminal's tables (the same sheets, tables.py), as HTML tables."""
    return "".join(tables.to_html(sheet) for sheet in tables.sheets(data)) + _lost_examples(data)


def _lost_examples(data: dict) -> str:
    rows = []
    for pair in _pairs(data):
        for example in pair.get("lost_examples") or []:
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(v))}</td>"
                    for v in (
                        _label(pair),
                        example["time_ns"],
                        example["src"],
                        example["dst"],
                        example["protocol"],
                        example.get("sport") if example.get("sport") is not None else "",
                        example.get("dport") if example.get("dport") is not None else "",
                    )
                )
                + "</tr>"
            )
    if not rows:
        return ""
    head = "".join(
        f"<th>{h}</th>" for h in ("pair", "sent (ns)", "from", "to", "protocol", "sport", "dport")
    )
    table = f"<table class=lost><tr>{head}</tr>{''.join(rows)}</table>"
    return f"<h2>Lost packets (first 20 per pair)</h2>{table}"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<script type="text/javascript">{plotly}</script>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; }}
table.sheet {{ border-collapse: collapse; font-size: 12px; margin: 12px 0; }}
table.sheet caption {{ text-align: left; font-weight: bold; padding: 4px 0; }}
table.sheet td, table.sheet th {{ border: 1px solid #ccc; padding: 2px 6px; white-space: nowrap; }}
td.r, th.r {{ text-align: right; }} td.l, th.l {{ text-align: left; }}
table.lost {{ border-collapse: collapse; font-size: 12px; }}
table.lost td, table.lost th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style>
</head>
<body>
<h1>{title}</h1>
{tables}
{sections}
</body>
</html>
"""


def write_beside(json_path: Path) -> tuple[Path | None, str | None]:
    """The page for a run.json (report.html beside it) or a merge's `<output>.json`
    (`<output>.html`), as `run`, `collect` and `merge` finish: (its path, None), or
    (None, why not) — a missing page never fails a capture."""
    from .load import load

    source = load(json_path.parent if json_path.name == "run.json" else json_path)
    try:
        return write_page(source.data, source.page_path, source.title), None
    except ImportError:
        return None, "plotly is not installed (pip install plotly): no report.html"
    except OSError as exc:
        return None, f"cannot write {source.page_path}: {exc.strerror or exc}"
