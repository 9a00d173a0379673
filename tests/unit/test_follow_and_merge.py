"""The pass and the merge on two cores (run/follow.py: follow_and_merge): a merge started
with the clocks of hosts that share nothing is the answer when the pass finds nothing
shared, and is called off (leaving no file) when it does."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdpcap.orchestrator.errors import MergeError
from xdpcap.orchestrator.follow.journeys import HostView
from xdpcap.orchestrator.merge.captures import MergeSource, merge_captures
from xdpcap.orchestrator.run.follow import follow_and_merge

from .scenarios_clock import IN, OUT, T0, US, address, capture, echo, eth, skewed_pair
from .test_journeys import _packet_ids


def _unshared(folder: Path) -> list[Path]:
    """Two hosts, each pinging a third no capture saw: nothing in common."""
    on_a, on_b = [], []
    for seq in range(500):
        t = T0 + seq * 1_000 * US
        on_a.append((t, eth(echo(8, 1, seq, ident=seq, src=address(0), dst=address(9))), OUT))
        on_b.append(
            (t + 7 * US, eth(echo(0, 2, seq, ident=seq, src=address(9), dst=address(1))), IN)
        )
    return [capture(folder / "a.pcapng", on_a), capture(folder / "b.pcapng", on_b)]


def _run(paths: list[Path], out: Path, priors: list[int]):
    def sources_for(alignment) -> list[MergeSource]:
        shifts = alignment.shifts_ns if alignment else priors
        return [
            MergeSource(
                path,
                host=path.stem,
                clock_offset_ns=shifts[i],
                clock_note=alignment.describe(i) if alignment else None,
                clock_drift_ppb=alignment.rates_ppb[i] if alignment else 0,
                clock_epoch_ns=alignment.epoch_ns if alignment else 0,
            )
            for i, path in enumerate(paths)
        ]

    report, journeys = follow_and_merge(
        paths,
        [p.stem for p in paths],
        priors,
        [HostView(p.stem) for p in paths],
        out,
        sources_for,
        clock_correction=True,
        meanwhile=lambda alignment, journeys, followed: (os.getpid(), followed),
    )
    return report, journeys, sources_for


@contextlib.contextmanager
def _another_thread(running: bool) -> Iterator[None]:
    """With `running`, a second thread for the duration: what rules out a fork."""
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    if running:
        other.start()
    try:
        yield
    finally:
        done.set()


@pytest.mark.parametrize("apart", [True, False], ids=["child", "thread"])
def test_unshared_inputs_are_merged_while_the_pass_reads_them(tmp_path: Path, apart) -> None:
    """The early merge runs in a forked child when the process has no other thread,
    else in a thread (one is kept running here); an old output is replaced."""
    paths = _unshared(tmp_path)
    out = tmp_path / "merged.pcapng"
    out.write_bytes(b"an old output")
    with _another_thread(running=not apart):
        report, journeys, sources_for = _run(paths, out, [0, 5_000])
    assert report.during_pass
    assert report.out_path == str(out) and report.packets == 1000
    assert journeys.marks.packets == 0 and report.aside == (os.getpid(), report.journeys)
    # Byte for byte what the merge after the pass would have written.
    again = merge_captures(
        sources_for(report.alignment),
        tmp_path / "after.pcapng",
        clock_summary=report.alignment.summary(),
    )
    assert again.packets == 1000
    assert out.read_bytes() == (tmp_path / "after.pcapng").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.pcapng",
        "after.pcapng",
        "b.pcapng",
        "merged.pcapng",
    ]


@pytest.mark.parametrize("apart", [True, False], ids=["child", "thread"])
def test_shared_traffic_calls_the_early_merge_off(tmp_path: Path, apart: bool) -> None:
    """The merge after the pass, its journeys' results beside it: in a forked child when
    the process has no other thread, else in a thread (one is kept running here)."""
    paths = skewed_pair(tmp_path)
    out = tmp_path / "merged.pcapng"
    with _another_thread(running=not apart):
        report, journeys, _ = _run(paths, out, [0, 0])
    assert not report.during_pass
    assert report.alignment.shifts_ns[1] == 250_000_000  # b's clock, from the traffic
    pid, followed = report.aside
    assert (pid != os.getpid()) == apart  # computed in the child, or here in a thread
    assert journeys.marks.packets == 40 and followed == report.journeys
    assert report.journeys["pairs"]
    assert sum(i is not None for i in _packet_ids(out)) == 80  # both sightings of each
    # No early file, no marks left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pcapng", "b.pcapng", "merged.pcapng"]


def test_a_pipe_or_a_link_as_the_output_is_written_into(tmp_path: Path) -> None:
    """Never renamed over (as an early merge's file would be): a named pipe stays a pipe
    and its reader gets the merge; a symbolic link stays a link to the file it names."""
    import stat

    paths = _unshared(tmp_path)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    report, _, _ = _run(paths, pipe, [0, 5_000])
    reader.join(timeout=60)  # (a pipe renamed over would leave it waiting for a writer)
    assert got, "the pipe's reader got nothing"
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    assert not report.during_pass and report.packets == 1000
    assert got[0][:4] == b"\x0a\x0d\x0d\x0a" and len(got[0]) > 1000 * 16

    target, link = tmp_path / "target.pcapng", tmp_path / "link.pcapng"
    target.write_bytes(b"old")
    link.symlink_to(target)
    _run(paths, link, [0, 5_000])
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"


def test_what_a_killed_merge_left_is_removed_by_the_next(tmp_path: Path) -> None:
    """An early merge's file and a marks folder named after a process that is gone go;
    those of a living process (this one) stay."""
    paths = skewed_pair(tmp_path)
    gone = _a_finished_pid()
    stale_early = tmp_path / f".merged.pcapng.{gone}.early"
    stale_marks = tmp_path / f".xdpcap-packet-ids-{gone}-abc"
    living_marks = tmp_path / f".xdpcap-packet-ids-{os.getpid()}-abc"
    stale_early.write_bytes(b"x")
    stale_marks.mkdir()
    living_marks.mkdir()
    _run(paths, tmp_path / "merged.pcapng", [0, 0])
    assert not stale_early.exists() and not stale_marks.exists()
    assert living_marks.exists()


def _a_finished_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize(
    ("flags", "aligned", "followed"),
    [([], True, True), (["--no-journeys"], True, False), (["--plain"], False, False)],
    ids=["default", "no-journeys", "plain"],
)
def test_merge_flags_choose_what_the_pass_does(tmp_path: Path, flags, aligned, followed) -> None:
    """`xdpcap merge`: clocks and journeys (the default), clocks only, or neither and no
    pass at all (as mergecap: no summary, no page)."""
    import json

    from xdpcap.orchestrator.cli import merge as merge_cli

    paths = skewed_pair(tmp_path)
    out = tmp_path / "merged.pcapng"
    assert merge_cli.main([*map(str, paths), "-w", str(out), *flags]) == 0
    ids = [i for i in _packet_ids(out) if i is not None]
    assert len(_packet_ids(out)) == 80
    assert len(ids) == (80 if followed else 0)
    summary = tmp_path / "merged.pcapng.json"
    assert summary.exists() == aligned
    if aligned:
        data = json.loads(summary.read_text())
        assert data["clock_alignment"]["hosts"]["b"]["offset_ns"] == 250_000_000
        assert (data["journeys"] is not None) == followed
        assert (tmp_path / "merged.pcapng.html").exists()


def _merge_cli(args: list[str], stdout) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "xdpcap.orchestrator.cli.merge", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=False,
        timeout=120,
    )


@pytest.mark.parametrize("flags", [[], ["--plain"]], ids=["default", "plain"])
def test_merge_to_standard_output(tmp_path: Path, flags) -> None:
    """`-w -` writes the merge into a pipe (what the merge to a file holds, byte for
    byte), and nothing beside it: no summary, no page, no marks folder in /dev."""
    paths = [str(p) for p in skewed_pair(tmp_path)]
    out = tmp_path / "merged.pcapng"
    assert _merge_cli([*paths, "-w", str(out), *flags], subprocess.DEVNULL).returncode == 0
    piped = _merge_cli([*paths, "-w", "-", *flags], subprocess.PIPE)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == out.read_bytes()
    if not flags:
        assert b"no summary or page beside standard output" in piped.stderr
    assert not Path("/dev/stdout.json").exists() and not Path("/dev/stdout.html").exists()
    assert not list(Path("/dev").glob(".xdpcap-packet-ids-*"))


def test_standard_output_into_a_file(tmp_path: Path) -> None:
    """`-w - > file`: the file gets the merge; the summary goes nowhere (beside
    /dev/stdout it would be a file in /dev)."""
    paths = [str(p) for p in skewed_pair(tmp_path)]
    out = tmp_path / "merged.pcapng"
    assert _merge_cli([*paths, "-w", str(out)], subprocess.DEVNULL).returncode == 0
    redirected = tmp_path / "redirected.pcapng"
    with redirected.open("wb") as stdout:
        result = _merge_cli([*paths, "-w", "-"], stdout)
    assert result.returncode == 0, result.stderr
    assert redirected.read_bytes() == out.read_bytes()
    assert not Path("/dev/stdout.json").exists() and not Path("/dev/stdout.html").exists()
    assert not (tmp_path / "redirected.pcapng.json").exists()


def test_standard_output_on_a_terminal_is_refused(tmp_path: Path) -> None:
    paths = [str(p) for p in skewed_pair(tmp_path)]
    leader, follower = os.openpty()
    try:
        result = _merge_cli([*paths, "-w", "-"], follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        "xdpcap: -w -: standard output is a terminal, not a pipe or a file"
    ]


def test_a_pipe_gets_a_disordered_merge_whole_and_is_never_removed(tmp_path: Path) -> None:
    """Out-of-order inputs send the C loop back to the start on the sorting path: into a
    pipe (which cannot be rewound) the merge goes through a temporary file, and arrives
    as the merge to a file does. A merge with no usable input leaves the pipe in place."""
    from .test_join import _mixed_traffic

    paths = _mixed_traffic(tmp_path)  # neighbours swapped: out of order
    sources = [MergeSource(p) for p in paths]
    merge_captures(sources, tmp_path / "file.pcapng", clock_correction=False)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    report = merge_captures(sources, pipe, clock_correction=False)
    reader.join(timeout=60)
    assert report.engine == "python"  # the sorting path, after the C loop met the disorder
    assert got and got[0] == (tmp_path / "file.pcapng").read_bytes()

    empty = tmp_path / "empty.pcapng"
    empty.write_bytes(b"")
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    with pytest.raises(MergeError):
        merge_captures([MergeSource(empty)], pipe)
    reader.join(timeout=60)
    assert pipe.exists() and stat.S_ISFIFO(os.lstat(pipe).st_mode)
