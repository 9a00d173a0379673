"""What a capture reports: the accounting (in total, per direction and per verdict, each
sum closing), the one summary line, and `<capture>.json`, the summary beside the file
that tells `xdpcap collect` a capture finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import contract
from .hooks.owner_events import describe as describe_owner_events
from .verdicts import describe as describe_verdicts

if TYPE_CHECKING:
    from .sampler import Counters

DIRECTION_NAMES = {contract.INBOUND: "in", contract.OUTBOUND: "out"}


@dataclass
class DirectionSummary:
    """One direction's share of the accounting; the same sum closes in each."""

    seen: int = 0
    filtered_out: int = 0
    written: int = 0
    lost: int = 0
    not_sampled: int = 0
    past_count: int = 0


@dataclass
class CaptureSummary:
    iface: str
    file: str
    mode: str = ""  # the XDP mode ("" without an XDP hook)
    direction: str = "inout"
    hooks: str = ""  # what captured: "XDP ingress native (bpf_link) + tcx egress"
    # How inbound was captured: "our XDP program", "through hook PIN", "inbound after XDP
    # program NAME (id N)" ("" without inbound).
    inbound: str = ""
    filter: str | None = None
    seen: int = 0
    filtered_out: int = 0  # the capture filter did not match
    written: int = 0
    lost: int = 0
    not_sampled: int = 0
    # Sampled after --count was reached: not written, as `tcpdump -c N` writes N.
    past_count: int = 0
    os_drops: int = 0
    bytes_written: int = 0
    window_start_ns: int = 0
    window_end_ns: int = 0
    # The interface's addresses ("10.0.0.1/24"): which packets were addressed to this
    # host, for the controller's journeys (per-pair loss and delay).
    addresses: list[str] = field(default_factory=list)
    lost_detail: dict[str, int] = field(default_factory=dict)
    partial_reason: str | None = None
    stopped_by: str = ""
    out_of_order: int = 0  # batches that began before the last one ended: should stay 0
    backlog_peak_bytes: int = 0  # how far formatting fell behind draining, at worst
    file_size: int = 0  # bytes in the file, and their sha256, for the controller's check
    file_sha256: str = ""
    # "in", "out": each captured direction's figures (they add up to the totals above).
    directions: dict[str, DirectionSummary] = field(default_factory=dict)
    # With --stream: written packets sent live, and those the stream had to skip (the
    # file has them all; these are not part of the accounting above).
    streamed: int = 0
    stream_skipped: int = 0
    # Through the owner's hook: each verdict's figures ("DROP": seen, written, ...), whose
    # sums close like the totals'.
    verdicts: dict[str, dict[str, int]] = field(default_factory=dict)
    # After another XDP program (no hook): what it did with packets tc ingress never sees,
    # from its tracepoints during the window ("aborted", "exceptions", "redirected",
    # "redirect_failed"); empty, with the reason in the note, where they did not load.
    owner_events: dict[str, int] = field(default_factory=dict)
    owner_events_note: str = ""

    @property
    def unaccounted(self) -> int:
        return (
            self.seen
            - self.filtered_out
            - self.written
            - self.lost
            - self.not_sampled
            - self.past_count
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "unaccounted": self.unaccounted}

    def statistics_comment(self) -> str:
        """The interface statistics block's comment: how the sums close, and why lost."""
        return (
            f"seen = filtered out ({self.filtered_out}) + written + lost "
            f"+ not sampled ({self.not_sampled}) + after --count ({self.past_count}); "
            f"lost: {self.lost_detail}; osdrop: missed by the interface before XDP"
            + "".join(f"; {name}: {asdict(d)}" for name, d in self.directions.items())
            + "".join(f"; verdict {name}: {v}" for name, v in self.verdicts.items())
            + (f"; {self.inbound}: {self.owner_events}" if self.owner_events else "")
        )

    def line(self) -> str:
        seconds = (self.window_end_ns - self.window_start_ns) / 1e9
        text = (
            f"{self.iface}: {self.written} packets written to {self.file} in {seconds:.1f} s "
            f"({self.hooks}); seen {self.seen} = "
        )
        if self.filter is not None or self.filtered_out:  # the filter, or --pid/--comm
            text += f"filtered out {self.filtered_out} + "
        text += f"written {self.written} + lost {self.lost} + not sampled {self.not_sampled}"
        if self.past_count:
            text += f" + after --count {self.past_count}"
        if len(self.directions) > 1:
            text += (
                " ("
                + "; ".join(
                    f"{name}: seen {d.seen}, written {d.written}"
                    for name, d in self.directions.items()
                )
                + ")"
            )
        if self.verdicts:
            text += f"; verdicts: {describe_verdicts(self.verdicts)}"
        if self.owner_events:
            text += f"; {self.inbound}: {describe_owner_events(self.owner_events)}"
        if self.filter is not None:
            text += f"; filter {self.filter!r}"
        if self.mode:
            text += f"; missed by the interface before XDP {self.os_drops}"
        if self.partial_reason:
            text += f"; PARTIAL: {self.partial_reason}"
        return text


def give_to_sudo_user(fd: int) -> None:
    """Run through sudo, the file belongs to the SSH user, who fetches and deletes it."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() == 0 and uid and gid and uid.isdigit() and gid.isdigit():
        os.fchown(fd, int(uid), int(gid))


def write_summary_file(summary: CaptureSummary) -> None:
    """`<capture>.json` beside the capture: how `xdpcap collect` learns a capture finished."""
    path = Path(summary.file + ".json")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    give_to_sudo_user(fd)
    with os.fdopen(fd, "w") as f:
        json.dump(summary.to_dict(), f)
    os.replace(tmp, path)


def split_by_direction(
    by_direction: Mapping[int, Counters],
    summary: CaptureSummary,
    written_out: int,
    past_count_out: int,
) -> dict[str, DirectionSummary]:
    """Each direction's share. The kernel counts seen, filtered, not sampled and sampled
    per direction; the file's share is counted as packets are released (`written_out`,
    `past_count_out`: the outbound ones); lost is what was sampled and neither written
    nor past --count — so the sum closes in each direction as it does in total."""
    out_written = min(written_out, summary.written)  # a cut file may hold fewer
    written = {contract.OUTBOUND: out_written, contract.INBOUND: summary.written - out_written}
    past = {
        contract.OUTBOUND: past_count_out,
        contract.INBOUND: summary.past_count - past_count_out,
    }
    split = {}
    for direction, c in by_direction.items():
        sampled = c.sampled + c.output_failed
        split[DIRECTION_NAMES[direction]] = DirectionSummary(
            seen=c.seen,
            filtered_out=c.filtered_out,
            written=written[direction],
            lost=sampled - written[direction] - past[direction],
            not_sampled=c.not_sampled,
            past_count=past[direction],
        )
    return split
