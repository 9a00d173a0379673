"""The live stream's parts without hosts: the controller's online merge (watermark,
late packets, silent hosts, the memory bound, a reader gone), the agent's outbox and
frame sender, and the channel's split of lines and frames."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import time

import pcapng
import pytest
from xdpcap.agent.filter import spec
from xdpcap.agent.outbox import Outbox
from xdpcap.agent.pcapng import enhanced_packet
from xdpcap.agent.protocol import FRAME_HEAD, FRAME_PREFIX, stream_frame
from xdpcap.agent.stream import MARK_EVERY_NS, StreamSender
from xdpcap.orchestrator.merge.live import LiveMerge
from xdpcap.orchestrator.remote.channel import RemoteProcess
from xdpcap.orchestrator.remote.filters import without_connection

IFACE = {"name": "eth0", "linktype": 1, "snaplen": 262144, "description": "test capture"}


def _payload(until: int, stamps: list[int], skipped: int = 0) -> bytes:
    """A stream frame's body as an agent sends it: the head, then interface-0 EPBs."""
    blocks = b"".join(enhanced_packet(0, ts, ts.to_bytes(8, "little"), 8) for ts in stamps)
    return FRAME_HEAD.pack(until, len(stamps), skipped) + blocks


class _Reader:
    """The other end of the stream's pipe, read to its end in a thread."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.data = b""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := os.read(self.read_fd, 1 << 16):
            self.data += chunk
        os.close(self.read_fd)

    def blocks(self) -> list:
        self._thread.join(10)
        return list(pcapng.FileScanner(io.BytesIO(self.data)))


def _packets(blocks: list) -> list[tuple[str, int]]:
    names = [
        b.options["if_name"] for b in blocks if isinstance(b, pcapng.blocks.InterfaceDescription)
    ]
    return [
        (names[b.interface_id], b.timestamp_high << 32 | b.timestamp_low)
        for b in blocks
        if isinstance(b, pcapng.blocks.EnhancedPacket)
    ]


def _merge(reader: _Reader, **kwargs) -> tuple[LiveMerge, list[str]]:
    notes: list[str] = []
    return LiveMerge(reader.write_fd, note=notes.append, **kwargs), notes


def _wait(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_packets_wait_for_every_host_and_come_out_in_time_order() -> None:
    reader = _Reader()
    merge, _ = _merge(reader)
    a, b = merge.add_host("a", "10.0.0.1"), merge.add_host("b", "10.0.0.2")
    for host in (a, b):
        host.started()
        host.describe(IFACE)
    a.frame(_payload(1000, [100, 300, 500]))
    time.sleep(0.1)
    # b has not reported: nothing may be written yet (it could still send 200).
    assert merge.packets == 0
    b.frame(_payload(400, [200, 350]))
    _wait(lambda: merge.packets == 4)  # up to b's 400: 100 200 300 350
    b.frame(_payload(2000, [600]))
    a.done({"seen": 3, "written": 3, "lost": 0})
    b.done({"seen": 3, "written": 3, "lost": 0})
    merge.finish()
    blocks = reader.blocks()
    assert _packets(blocks) == [
        ("a:eth0", 100),
        ("b:eth0", 200),
        ("a:eth0", 300),
        ("b:eth0", 350),
        ("a:eth0", 500),
        ("b:eth0", 600),
    ]
    stats = [blk for blk in blocks if isinstance(blk, pcapng.blocks.InterfaceStatistics)]
    assert len(stats) == 2
    assert merge.counts()["a"]["written"] == 3


def test_equal_timestamps_go_to_the_host_listed_first() -> None:
    reader = _Reader()
    merge, _ = _merge(reader)
    a, b = merge.add_host("a", "x"), merge.add_host("b", "y")
    for host in (b, a):
        host.started()
        host.describe(IFACE)
    b.frame(_payload(1000, [100, 100]))
    a.frame(_payload(1000, [100]))
    merge.finish()
    assert [name for name, _ in _packets(reader.blocks())] == ["a:eth0", "b:eth0", "b:eth0"]


def test_a_silent_host_is_left_out_and_what_it_sends_late_is_counted() -> None:
    reader = _Reader()
    merge, notes = _merge(reader, idle_s=0.3)
    a, b = merge.add_host("a", "x"), merge.add_host("b", "y")
    for host in (a, b):
        host.started()
        host.describe(IFACE)
    b.frame(_payload(50, [10]))
    # b falls silent; a goes on: after the idle time its packets flow without b.
    for step in range(1, 8):
        a.frame(_payload(step * 1000, [step * 1000 - 1]))
        time.sleep(0.1)
    _wait(lambda: merge.packets >= 6)
    assert any("b: nothing heard" in note for note in notes)
    # b is back with packets from while it was silent: behind the stream, counted late.
    b.frame(_payload(8000, [500, 7500]))
    a.frame(_payload(9000, []))
    a.done(None)
    b.done(None)
    merge.finish()
    stamps = [ts for _, ts in _packets(reader.blocks())]
    assert stamps == sorted(stamps)
    assert 500 not in stamps and 7500 in stamps
    assert merge.counts()["b"]["late"] == 1
    assert any("b is back" in note for note in notes)


def test_a_host_not_yet_reporting_holds_the_stream_until_it_is_idle() -> None:
    reader = _Reader()
    merge, _ = _merge(reader, idle_s=0.5)
    a, b = merge.add_host("a", "x"), merge.add_host("b", "y")
    a.started()
    b.started()
    a.frame(_payload(1000, [100]))
    time.sleep(0.2)
    assert merge.packets == 0
    _wait(lambda: merge.packets == 1, timeout=3)  # b left out after 0.5 s
    merge.finish()


def test_frames_beyond_the_budget_are_skipped_and_counted() -> None:
    reader = _Reader()
    frame = _payload(10, [1, 2, 3])
    merge, _ = _merge(reader, budget=len(frame) + 10)
    a, b = merge.add_host("a", "x"), merge.add_host("b", "y")
    a.started()
    b.started()  # b never reports: a's frames wait in memory, up to the budget
    a.frame(frame)
    a.frame(_payload(20, [11, 12]))
    counts = merge.counts()["a"]
    assert counts["received"] == 5 and counts["skipped_controller"] == 2
    a.done(None)
    b.done(None)
    merge.finish()
    assert [ts for _, ts in _packets(reader.blocks())] == [1, 2, 3]


def test_the_clock_shift_from_the_start_exchange_moves_a_skewed_host() -> None:
    reader = _Reader()
    merge, _ = _merge(reader)
    a = merge.add_host("a", "x")
    a.started()
    # The window opened at 5_000_000 on a's clock, between 1_000_000 and 1_000_400 on
    # ours: a runs ~4 ms ahead, far beyond the 200 ns error.
    a.capturing(5_000_000, 1_000_000, 1_000_400)
    a.frame(_payload(6_000_000, [5_500_000]))
    a.done(None)
    merge.finish()
    assert _packets(reader.blocks()) == [("a:?", 1_500_200)]


def test_a_shift_within_its_error_is_left_alone() -> None:
    reader = _Reader()
    merge, _ = _merge(reader)
    a = merge.add_host("a", "x")
    a.capturing(1_000_100, 1_000_000, 1_000_400)
    assert a.shift_ns == 0
    merge.finish()


def test_a_reader_that_stops_reading_is_cut_off_at_the_end(monkeypatch) -> None:
    monkeypatch.setattr("xdpcap.orchestrator.merge.live.DRAIN_S", 0.5)
    read_fd, write_fd = os.pipe()  # nobody reads: the pipe holds 64 KiB
    merge = LiveMerge(write_fd)
    a = merge.add_host("a", "x")
    a.describe(IFACE)
    a.frame(_payload(10_000, list(range(1, 3001))))  # some 140 KB of packets
    a.done(None)
    merge.finish()
    counts = merge.counts()["a"]
    assert merge.cut_off and not merge.reader_gone.is_set()
    assert 0 < counts["written"] < 3000 and counts["written"] + counts["unsent"] == 3000
    # The packets counted as written are in the pipe, whole; nothing else is.
    os.set_blocking(read_fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_fd, 1 << 16):
            data += chunk
    os.close(read_fd)
    whole = pos = 0
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<II", data, pos)
        if pos + length > len(data):
            break
        whole += kind == 6
        pos += length
    assert whole == counts["written"]


def test_the_reader_gone_is_noticed() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    merge = LiveMerge(write_fd)
    a = merge.add_host("a", "x")
    a.frame(_payload(10, [1]))
    a.done(None)
    merge.finish()
    assert merge.reader_gone.is_set()


# -- the agent's side --------------------------------------------------------------------
def test_the_outbox_refuses_frames_over_its_budget_but_never_events() -> None:
    read_fd, write_fd = os.pipe()
    outbox = Outbox(write_fd, frame_budget=100)
    assert outbox.put_frame(b"a" * 90) is True  # written at once: the pipe has room
    # An event larger than the pipe (64 KiB): nobody reads, so the writer blocks in it.
    outbox.put_line(b"e" * 70_000)
    time.sleep(0.2)
    assert outbox.put_frame(b"b" * 60) is True  # queued behind the event: 60 of 100
    assert outbox.put_frame(b"c" * 60) is False  # 120 would exceed the budget
    outbox.put_line(b"f" * 10)  # events are never refused
    data = b""
    while len(data) < 90 + 70_000 + 60 + 10:
        data += os.read(read_fd, 1 << 16)
    assert data == b"a" * 90 + b"e" * 70_000 + b"b" * 60 + b"f" * 10
    assert outbox.flush(5)
    outbox.close(5)
    os.close(read_fd)
    os.close(write_fd)


def test_the_outbox_notes_a_closed_channel() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    outbox = Outbox(write_fd)
    outbox.put_line(b"line\n")
    _wait(lambda: outbox.gone)
    assert outbox.put_frame(b"frame") is False
    outbox.close(1)
    os.close(write_fd)


class _Collect:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def put_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


def _heads(collect: _Collect) -> list[tuple[int, int, int]]:
    heads = []
    for frame in collect.frames:
        body = frame[frame.index(b"\n") + 1 :]
        heads.append(FRAME_HEAD.unpack_from(body))
    return heads


def test_the_sender_marks_idle_time_and_sends_packets_promptly() -> None:
    collect = _Collect()
    sender = StreamSender(collect, lambda mono: mono + 1_000)  # type: ignore[arg-type]
    sender.add([], 100, MARK_EVERY_NS)  # idle: a mark
    sender.add([], 200, MARK_EVERY_NS + 1)  # too soon for another
    sender.add([b"block"], 300, 2 * MARK_EVERY_NS)  # packets: at once
    sender.finish([b"last"], 9_999)
    assert _heads(collect) == [(1_100, 0, 0), (1_300, 1, 0), (9_999, 1, 0)]
    assert sender.streamed == 2


def test_the_sender_counts_what_the_outbox_refused() -> None:
    class Full(_Collect):
        def put_frame(self, frame: bytes) -> bool:
            super().put_frame(frame)
            return len(self.frames) > 1

    full = Full()
    sender = StreamSender(full, lambda mono: mono)  # type: ignore[arg-type]
    sender.add([b"a", b"b"], 10, MARK_EVERY_NS)  # refused
    sender.finish([b"c"], 20)
    assert (sender.streamed, sender.skipped) == (1, 2)
    assert _heads(full)[-1] == (20, 1, 2)  # the next frame says what was skipped


# -- the channel ---------------------------------------------------------------------------
@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_the_channel_splits_lines_and_frames_however_they_arrive(piece: int) -> None:
    lines: list[str] = []
    frames: list[bytes] = []
    process = RemoteProcess.__new__(RemoteProcess)
    process._on_line = lines.append
    process._on_frame = frames.append
    body = b"binary\nwith newlines\n" + bytes(range(256))
    stream = (
        b'{"event": "ready"}\n'
        + stream_frame(5, 0, 0, b"")
        + b"plain line\n"
        + stream_frame(7, 1, 0, body)
        + FRAME_PREFIX
        + b"oops\n"  # not a length: taken as a line
    )
    buffer = bytearray()
    for start in range(0, len(stream), piece):
        buffer += stream[start : start + piece]
        process._split(buffer)
    assert lines == ['{"event": "ready"}', "plain line", "xdpcap-frame oops"]
    assert frames == [FRAME_HEAD.pack(5, 0, 0), FRAME_HEAD.pack(7, 1, 0) + body]
    assert not buffer


# -- the stream's own connection -------------------------------------------------------------
class _Sock:
    def getsockname(self) -> tuple[str, int]:
        return ("198.18.1.254", 40022)

    def getpeername(self) -> tuple[str, int]:
        return ("198.18.1.2", 22)


def test_the_stream_leaves_its_own_ssh_connection_out() -> None:
    alone = without_connection(None, _Sock())
    assert alone is not None and alone.expression == (
        "not (host 198.18.1.254 and tcp port 40022 and host 198.18.1.2 and tcp port 22)"
    )
    combined = without_connection(spec.compile_filter("udp"), _Sock())
    assert combined is not None and combined.expression.startswith("(udp) and not (host ")
    assert set(combined.programs) == {"ether", "raw"}


def test_a_proxied_connection_adds_nothing() -> None:
    udp = spec.compile_filter("udp")
    assert without_connection(udp, object()) is udp
    assert without_connection(None, object()) is None
