"""The pass that aligns the clocks also follows the packets (journeys.py): one place that
runs it for `run`, `collect` and `merge`, and what each knows of its hosts beforehand."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..follow.join import join_captures
from ..follow.journeys import HostView, Journeys, parse_address

if TYPE_CHECKING:
    from ..clock.align import Alignment
    from ..remote.state import HostState


def follow(
    paths: Sequence[str | os.PathLike[str]],
    names: Sequence[str],
    priors: Sequence[int],
    hosts: Sequence[HostView],
    *,
    clock_correction: bool,
) -> tuple[Alignment | None, Journeys]:
    """One streaming pass over the hosts' files: the clock alignment (when asked for and
    there are several hosts) and the journeys. Without an alignment the pass still runs
    for the journeys, with the priors as the clocks."""
    from ..clock.align import align

    journeys = Journeys(hosts, priors)
    if clock_correction and len(paths) > 1:
        alignment = align(paths, names, priors, on_match=journeys)
        journeys.add_interfaces(alignment.interfaces)
        return alignment, journeys
    joined = join_captures(paths, priors, on_match=journeys)
    journeys.add_interfaces(joined.interfaces)
    return None, journeys


def host_view(state: HostState) -> HostView:
    """What a run knows of a host: the addresses its agent reported, its filter (compiled
    here again for the links a packet may have), its direction and window."""
    summary = state.summary or {}
    addresses = set()
    for text in summary.get("addresses") or []:
        try:
            addresses.add(parse_address(text))
        except ValueError:
            continue  # an address this controller cannot read is no address of a pair
    window = None
    start, end = summary.get("window_start_ns"), summary.get("window_end_ns")
    if start and end:
        window = (int(start), int(end))
    return HostView(
        name=state.name,
        addresses=addresses,
        filters=_programs(state.filter),
        captures_inbound=state.direction in ("in", "inout"),
        window_ns=window,
    )


def _programs(expression: str | None) -> dict | None:
    if not expression:
        return None
    from ...agent.filter import spec
    from ...agent.filter.cbpf import FilterError

    try:
        return dict(spec.compile_filter(expression).programs)
    except (FilterError, OSError):
        # No libpcap here: the filter cannot be judged; every packet counts as selected.
        return None


def write_merge_summary(report, names: Sequence[str], paths: Sequence[str]) -> Path:
    """`xdpcap merge`'s run.json: beside the output, `<output>.json` (what `xdpcap report`
    reads, as a run folder's run.json), with report.html beside it as `<output>.html`."""
    out = Path(report.out_path)
    data = {
        "merged": str(out),
        "clock_alignment": report.alignment.to_dict() if report.alignment else None,
        "journeys": report.journeys,
        "hosts": [
            {"name": name, "local_file": str(path), "packets": source.packets}
            for name, path, source in zip(names, paths, report.sources)
        ],
    }
    target = out.with_name(out.name + ".json")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(readable_json(data))
    tmp.replace(target)
    return target


def readable_json(data, *, default=None, depth: int = 3) -> str:
    """JSON indented for its first `depth` levels, compact below: json.dumps(indent=2)
    runs the pure-Python encoder, seconds for a fleet's journeys (600 pairs' series);
    compact values go through the C one."""

    def encode(value, level: int) -> str:
        if level >= depth or not isinstance(value, (dict, list)) or not value:
            return json.dumps(value, default=default)
        pad, end = "  " * (level + 1), "  " * level
        if isinstance(value, dict):
            items = [
                f"{pad}{json.dumps(k if isinstance(k, str) else str(k))}: {encode(v, level + 1)}"
                for k, v in value.items()
            ]
            return "{\n" + ",\n".join(items) + "\n" + end + "}"
        items = [pad + encode(v, level + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"

    return encode(data, 0)
