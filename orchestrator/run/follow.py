"""The pass that aligns the clocks also follows the packets (journeys.py), and the merge
after it: one place that runs them for `run`, `collect` and `merge` (`follow_and_merge`),
and what each knows of its hosts beforehand.

Two cores are put to work. While the pass reads every file, a merge starts with the clocks
the pass would leave if the hosts shared no traffic; when the pass ends finding none
(nothing bounded, nothing seen twice) that merge is the answer, written meanwhile. Else it
is called off the moment the pass finds shared traffic, and the merge runs after the pass
with the solved clocks and the packet ids, the journeys' results computed beside it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import signal
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..follow.join import join_captures
from ..follow.journeys import HostView, Journeys, parse_address
from ..merge.captures import MergeReport, MergeSource, merge_captures
from ..merge.packet_ids import PacketMarks, left_by_dead_processes

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
    marks_folder: str | os.PathLike[str] | None = None,
    shared: threading.Event | None = None,
    journeys_wanted: bool = True,
) -> tuple[Alignment | None, Journeys]:
    """One streaming pass over the hosts' files: the clock alignment (when asked for and
    there are several hosts) and the journeys. Without an alignment the pass still runs
    for the journeys, with the priors as the clocks. `journeys.marks` holds the merge's
    packet ids, in a folder made in `marks_folder` (beside the output: the caller
    closes them once merged). `shared` is set once the hosts are seen sharing traffic.
    Without `journeys_wanted` the pass aligns the clocks only (no marks: `journeys` stays
    empty), and does not run at all without an alignment to find."""
    from ..clock.align import align

    journeys = Journeys(hosts, priors)
    if not journeys_wanted:
        if not (clock_correction and len(paths) > 1):
            return None, journeys
        alignment = align(paths, names, priors, shared=shared)
        journeys.packets = alignment.packets_read
        return alignment, journeys
    marks = journeys.marks = PacketMarks(paths, marks_folder)
    try:
        if clock_correction and len(paths) > 1:
            alignment = align(paths, names, priors, on_match=journeys, marks=marks, shared=shared)
            journeys.add_interfaces(alignment.interfaces)
            journeys.packets = alignment.packets_read
            return alignment, journeys
        joined = join_captures(paths, priors, on_match=journeys, marks=marks, shared=shared)
    except BaseException:
        marks.close()
        raise
    journeys.add_interfaces(joined.interfaces)
    journeys.packets = joined.packets
    return None, journeys


SWITCH_INTERVAL_S = 0.0001
SourcesFor = Callable[["Alignment | None"], list[MergeSource]]
# What else can be done while the merge writes, given the pass's results and journeys'.
Meanwhile = Callable[["Alignment | None", Journeys, "dict | None"], object]


def follow_and_merge(
    paths: Sequence[str | os.PathLike[str]],
    names: Sequence[str],
    priors: Sequence[int],
    hosts: Sequence[HostView],
    out: str | os.PathLike[str],
    sources_for: SourcesFor,
    *,
    clock_correction: bool,
    meanwhile: Meanwhile | None = None,
    journeys_wanted: bool = True,
) -> tuple[MergeReport, Journeys]:
    """The pass, then the merge into `out` of `sources_for(alignment)` (no side effects:
    it is called for the clocks guessed at the start too); see the module's text.
    `meanwhile(alignment, journeys, their result)` runs while the merge writes."""
    out = Path(out)
    replaceable = _replaceable(out)
    run_pass = functools.partial(
        follow,
        paths,
        names,
        priors,
        hosts,
        clock_correction=clock_correction,
        # Beside the output, unless it is a device or a pipe (/dev is nobody's scratch).
        marks_folder=out.parent if replaceable else None,
        journeys_wanted=journeys_wanted,
    )
    early: _EarlyMerge | None = None
    if replaceable:
        alignment, journeys, early = _pass_beside_early_merge(
            run_pass, out, names, priors, sources_for, clock_correction=clock_correction
        )
    else:
        # A device, a pipe or a symbolic link is written into, never renamed over (an
        # early merge would replace it): the merge waits for the pass.
        alignment, journeys = run_pass()
    if early is not None:
        # The pass's results while the early merge ends (should it fail, the merge after
        # the pass calls `meanwhile` again: it only writes files from them).
        try:
            followed = journeys.result(alignment) if journeys_wanted else None
            aside = meanwhile(alignment, journeys, followed) if meanwhile is not None else None
        except BaseException:
            early.discard()
            if journeys.marks is not None:
                journeys.marks.close()
            raise
        report = early.finish(out)
        if report is not None:
            if journeys.marks is not None:
                journeys.marks.close()
            report.during_pass = True
            report.alignment = alignment
            report.journeys = followed
            report.aside = aside
            return report, journeys
    report = merge_followed(
        sources_for(alignment),
        out,
        alignment,
        journeys,
        clock_correction=clock_correction,
        meanwhile=meanwhile,
        journeys_wanted=journeys_wanted,
    )
    return report, journeys


def _replaceable(out: Path) -> bool:
    """Whether `out` is a regular file (not through a link) or nothing yet."""
    try:
        return stat.S_ISREG(os.lstat(out).st_mode)
    except FileNotFoundError:
        return True


def is_file_output(out: str | os.PathLike[str]) -> bool:
    """Whether files may be written beside `out` (its summary, its page): a regular file
    or a new name, possibly through a link; not a pipe or a device (`-w -`)."""
    try:
        return stat.S_ISREG(os.stat(out).st_mode)
    except FileNotFoundError:
        return True


def _pass_beside_early_merge(
    run_pass: Callable[..., tuple[Alignment | None, Journeys]],
    out: Path,
    names: Sequence[str],
    priors: Sequence[int],
    sources_for: SourcesFor,
    *,
    clock_correction: bool,
) -> tuple[Alignment | None, Journeys, _EarlyMerge | None]:
    """The pass, and beside it the merge with the clocks it would leave if the hosts
    shared nothing: that merge, still running, when the pass found nothing shared, else
    None (the early merge called off, its file gone)."""
    from ..clock.align import without_traffic

    guess = without_traffic(names, priors) if clock_correction and len(names) > 1 else None
    guess_sources = sources_for(guess)
    guess_summary = guess.summary() if guess else None
    early_out = out.with_name(f".{out.name}.{os.getpid()}{EARLY_SUFFIX}")
    _remove_stale_early(out)

    def merge(cancel: threading.Event | None) -> MergeReport:
        # The old output is replaced either way. Dropping it here, beside the pass, takes
        # the release of its pages (0.2 s for a fresh 450 MB file still being written
        # back, measured) off the path the answer waits for.
        out.unlink(missing_ok=True)
        return merge_captures(
            guess_sources,
            early_out,
            clock_correction=clock_correction,
            clock_summary=guess_summary,
            cancel=cancel,
        )

    early = _EarlyMerge(merge, early_out)
    try:
        alignment, journeys = run_pass(shared=early.shared)
    except BaseException:
        early.discard()
        raise
    summary = alignment.summary() if alignment else None
    # The early merge is the merge when nothing it assumed changed: the same sources
    # (offsets, drifts, notes), the same section comment, no packet ids to write.
    same = (sources_for(alignment), summary) == (guess_sources, guess_summary)
    if early.shared.is_set() or not same:
        early.discard()
        return alignment, journeys, None
    return alignment, journeys, early


def _may_fork() -> bool:
    """A fork copies only the calling thread: safe while this process has no other."""
    return threading.active_count() == 1 and hasattr(os, "fork")


class _Forked:
    """`work()` in a forked child, its result pickled back to this process through a
    pipe (the early merge's report; the journeys' results beside the merge)."""

    def __init__(self, work: Callable[[], object]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no return from here
            status = 1
            try:
                os.close(read_end)
                with os.fdopen(write_end, "wb") as pipe:
                    pickle.dump(work(), pipe, protocol=pickle.HIGHEST_PROTOCOL)
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self.pid, self._pipe = pid, read_end

    def result(self) -> tuple[bool, object]:
        """(True, what `work` returned) once the child ends; (False, None) when it
        failed or was killed."""
        with os.fdopen(self._pipe, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        return (True, pickle.loads(data)) if status == 0 and data else (False, None)

    def abandon(self) -> None:
        """Not wanted: its pipe closed, the child ended and reaped."""
        os.close(self._pipe)
        os.kill(self.pid, signal.SIGTERM)
        os.waitpid(self.pid, 0)


class _CallsOff(threading.Event):
    """The pass's `shared` for an early merge in a child: setting it ends the child."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def set(self) -> None:
        if not self.is_set():
            # Not reaped before result(): the pid is still the child's.
            os.kill(self.pid, signal.SIGKILL)
        super().set()


class _EarlyMerge:
    """`merge(cancel)` beside the pass: in a forked child when this process has no other
    thread (a thread would share the GIL with the pass at every chunk of every input:
    measured on 3 x 1 M, the pass took 1.1-1.2 s beside it, 0.7-0.9 s beside a process),
    else in a thread. `shared`, given to the pass, calls it off when set."""

    def __init__(self, merge: Callable[[threading.Event | None], MergeReport], out: Path) -> None:
        self.out = out
        self._child: _Forked | None = None
        self._outcome: MergeReport | BaseException | None = None
        if _may_fork():
            self._child = _Forked(lambda: merge(None))
            self.shared: threading.Event = _CallsOff(self._child.pid)
        else:
            self.shared = threading.Event()
            self._thread = threading.Thread(
                target=self._in_thread, args=(merge,), name="xdpcap-merge", daemon=True
            )
            self._thread.start()

    def _in_thread(self, merge: Callable[[threading.Event | None], MergeReport]) -> None:
        try:
            self._outcome = merge(self.shared)
        except BaseException as error:  # called off (MergeCancelled), or failed
            self._outcome = error

    def result(self) -> MergeReport | None:
        """Its report once it ends; None when it was called off or failed (its file
        then removed: the merge after the pass reports any failure)."""
        if self._child is None:
            self._thread.join()
            outcome = self._outcome
        else:
            _, outcome = self._child.result()
        report = outcome if isinstance(outcome, MergeReport) else None
        if report is None:
            self.out.unlink(missing_ok=True)
        return report

    def finish(self, out: Path) -> MergeReport | None:
        """Its report with its file in place at `out`; None when it failed (the merge
        after the pass says why)."""
        report = self.result()
        if report is not None:
            os.replace(self.out, out)
            report.out_path = os.fspath(out)
        return report

    def discard(self) -> None:
        """Not wanted: called off, waited for (it may have ended first), its file gone."""
        self.shared.set()
        self.result()
        self.out.unlink(missing_ok=True)


EARLY_SUFFIX = ".early"


def _remove_stale_early(out: Path) -> None:
    """An early merge a killed process left beside `out` (`.<name>.<pid>.early`)."""
    for entry in left_by_dead_processes(out.parent, f".{out.name}.", EARLY_SUFFIX):
        Path(entry.path).unlink(missing_ok=True)


def merge_followed(
    sources: Sequence[MergeSource],
    out: str | os.PathLike[str],
    alignment: Alignment | None,
    journeys: Journeys,
    *,
    clock_correction: bool,
    meanwhile: Meanwhile | None = None,
    journeys_wanted: bool = True,
) -> MergeReport:
    """Merge what `follow` read, with its packet ids, while its journeys' results are
    computed and `meanwhile` called on the other core: in a forked child when this
    process has no other thread (the merge's Python side, reading the inputs' chunks,
    would wait for the GIL thousands of times: measured, a fleet's merge took 2.8-3.4 s
    beside them in a thread, 1.8 s alone), else in a thread. The marks go once merged."""
    marks = journeys.marks

    def beside() -> tuple[dict | None, object]:
        followed = journeys.result(alignment) if journeys_wanted else None
        return followed, meanwhile(alignment, journeys, followed) if meanwhile else None

    def merge() -> MergeReport:
        return merge_captures(
            sources,
            out,
            clock_correction=clock_correction,
            clock_summary=alignment.summary() if alignment else None,
            packet_marks=marks,
        )

    with marks or contextlib.nullcontext():
        if _may_fork():
            report, (followed, aside) = _with_child(merge, beside)
        else:
            report, (followed, aside) = _with_thread(merge, beside)
    report.alignment = alignment
    report.journeys = followed
    report.aside = aside
    return report


def _with_thread(merge: Callable[[], MergeReport], beside: Callable[[], tuple]) -> tuple:
    with ThreadPoolExecutor(1, thread_name_prefix="xdpcap-merge") as pool:
        merging = pool.submit(merge)
        # The merge thread needs the GIL between its C runs: hand it over sooner than
        # every 5 ms while this thread computes.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            done = beside()
        finally:
            sys.setswitchinterval(interval)
            report = merging.result()  # (its exception first: the merge failed)
    return report, done


def _with_child(merge: Callable[[], MergeReport], beside: Callable[[], tuple]) -> tuple:
    """`beside()` in a forked child (its result back through a pipe, pickled) while this
    process merges; if the child fails, `beside()` here after the merge."""
    child = _Forked(beside)
    try:
        report = merge()
    except BaseException:
        child.abandon()
        raise
    ended, done = child.result()
    return report, done if ended else beside()


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


def write_merge_summary(
    out: Path,
    alignment: Alignment | None,
    followed: dict | None,
    names: Sequence[str],
    paths: Sequence[str],
    packets: Sequence[int],
) -> Path:
    """`xdpcap merge`'s run.json: beside the output, `<output>.json` (what `xdpcap report`
    reads, as a run folder's run.json), with report.html beside it as `<output>.html`.
    `packets`: per input, as the pass read them (the merge writes the same blocks)."""
    data = {
        "merged": str(out),
        "clock_alignment": alignment.to_dict() if alignment else None,
        "journeys": followed,
        "hosts": [
            {"name": name, "local_file": str(path), "packets": count}
            for name, path, count in zip(names, paths, packets)
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
