"""Where a report's data is: a run folder's run.json, or `xdpcap merge`'s `<output>.json`;
and where its page goes (report.html in the run folder, `<output>.html` for a merge)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError


@dataclass(frozen=True)
class ReportSource:
    data: dict
    json_path: Path
    page_path: Path
    title: str


def load(path: Path) -> ReportSource:
    """RUN_FOLDER (its run.json) or a merge's `<output>.json`."""
    if path.is_dir():
        json_path, page_path, title = path / "run.json", path / "report.html", path.name
    else:
        json_path = path
        stem = path.name.removesuffix(".json")
        page_path, title = path.with_name(stem + ".html"), stem
    try:
        data = json.loads(json_path.read_text())
    except OSError as exc:
        raise UsageError(f"{json_path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{json_path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{json_path}: not a run's JSON")
    return ReportSource(data, json_path, page_path, title)
