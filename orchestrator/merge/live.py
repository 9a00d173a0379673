"""The live stream: the hosts' packets merged in time order while they capture.

Each agent run with --stream sends the packets it writes as frames (agent/stream.py),
each saying how far the host's time has got: nothing earlier will follow. The merge
releases a packet once every host still in the *watermark* has reported past its time
(the watermark is the smallest of those reports, clock-corrected), so the output is in
strict time order however the hosts' frames interleave on arrival.

- A host joins the watermark when it is told to start; before its first frame it holds
  the watermark back. One that stays silent longer than `idle_s` (a stopped process, a
  cut network) is left out and said so; what it sends later that is already behind the
  stream is counted as late and never written out of order. When it speaks again it
  rejoins. A host whose agent finished or failed leaves the watermark.
- Clock offsets are estimated from the start exchange (the agent read its clock between
  the controller's "start" and its answer) and fixed for the stream; the run's
  merged file is aligned from the traffic afterwards, as always.
- Bounded memory: frames waiting to be written are bounded in bytes; past the bound a
  frame's packets are skipped and counted (the hosts' files hold every packet). One
  thread does all writing, so a slow reader never holds up the SSH channels.
- The reader gone (EPIPE: Wireshark closed): `reader_gone` is set, and the run stops
  every agent as after Ctrl-C.

The output is one pcapng section: the section header at once, an interface block per
host:interface when that host's window opens (mid-stream for a host that joins late),
then packets, and at the end a statistics block per interface.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import struct
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from operator import itemgetter
from typing import Any

from ...agent import __version__
from ...agent.clock import ntp_offset_ns
from ...agent.consumer import bisect_time
from ...agent.pcapng import IF_FILTER, PcapngWriter
from ...agent.protocol import FRAME_HEAD

# Bytes of packets received and not yet written to the stream, over all hosts, at most.
BUFFER_BUDGET_BYTES = 64 << 20
DEFAULT_IDLE_S = 2.0
PUMP_WAIT_S = 0.02  # the writing thread looks at the hosts at least this often
DRAIN_S = 10.0  # at the end, how long a slow reader may take for what is still buffered
GROUP_BYTES = 1 << 20  # packets go out in writes of about this size
WAIT_SLICE_S = 0.2  # a blocked write looks at the clock this often

_EPB_IF_TS = struct.Struct("<III")  # interface id, timestamp high, timestamp low
_BLOCK_LEN = struct.Struct("<I")
_first = itemgetter(0)


@dataclass
class StreamCounts:
    """One host's share of the stream; written + the rest = what its agent wrote."""

    received: int = 0  # packets in frames that reached the controller
    written: int = 0  # packets in the stream
    late: int = 0  # behind the stream when they came (the host had been left out)
    skipped_host: int = 0  # the agent could not send them (its outbox was full)
    skipped_controller: int = 0  # over the controller's buffer bound
    unsent: int = 0  # the reader had gone, or did not take them in time at the end


@dataclass
class LiveHost:
    """One host of the stream; its methods are called from that host's SSH reader."""

    merge: LiveMerge
    name: str
    address: str
    index: int
    counts: StreamCounts = field(default_factory=StreamCounts)
    shift_ns: int = 0  # subtracted from the host's timestamps
    until_ns: int | None = None  # the host's last report, its own clock
    in_watermark: bool = False
    left_out: bool = False
    finished: bool = False
    last_heard: float = 0.0
    interface: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    if_id: int | None = None
    frames: deque[bytes] = field(default_factory=deque)
    # (ts, block, host index), in time order: unpacked, waiting for the watermark.
    pending: list[tuple[int, bytes, int]] = field(default_factory=list)

    def started(self) -> None:
        """Told to start: from now on it holds the watermark until it reports."""
        with self.merge.lock:
            self.in_watermark = True
            self.last_heard = time.monotonic()

    def capturing(self, host_now_ns: int, sent_ns: int, received_ns: int) -> None:
        """The host read its clock (`host_now_ns`) between our "start" and its answer:
        the host clock's offset, to within half that round trip."""
        offset = ntp_offset_ns(sent_ns, host_now_ns, received_ns)
        error = (received_ns - sent_ns) // 2
        with self.merge.lock:
            # Within its own error bound an offset is noise: the host is left as it is.
            self.shift_ns = offset if abs(offset) > error else 0

    def describe(self, fields: dict[str, Any]) -> None:
        """The agent's interface block (its "interface" event)."""
        with self.merge.lock:
            self.interface = fields
            self.merge.wake.notify()

    def frame(self, payload: bytes) -> None:
        merge = self.merge
        if len(payload) < FRAME_HEAD.size:
            return
        until, packets, skipped = FRAME_HEAD.unpack_from(payload)
        with merge.lock:
            counts = self.counts
            counts.skipped_host = max(counts.skipped_host, skipped)
            self.until_ns = until if self.until_ns is None else max(self.until_ns, until)
            self.last_heard = time.monotonic()
            if self.left_out:
                self.left_out = False
                merge.note(f"{self.name} is back in the live stream")
            if packets:
                counts.received += packets
                if merge.buffered + len(payload) > merge.budget:
                    counts.skipped_controller += packets
                else:
                    merge.buffered += len(payload)
                    self.frames.append(payload)
            merge.wake.notify()

    def done(self, summary: dict[str, Any] | None) -> None:
        """The agent finished (its summary) or failed (None): it leaves the watermark."""
        with self.merge.lock:
            self.finished = True
            self.summary = summary or self.summary
            self.merge.wake.notify()


class LiveMerge:
    def __init__(
        self,
        fd: int,
        *,
        idle_s: float = DEFAULT_IDLE_S,
        budget: int = BUFFER_BUDGET_BYTES,
        note: Callable[[str], None] = lambda _text: None,
        comment: str | None = None,
    ) -> None:
        self._fd = fd
        self.idle_s = idle_s
        self.budget = budget
        self.note = note  # one line for the user (stderr); called under the lock
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.buffered = 0
        self.hosts: list[LiveHost] = []
        self.reader_gone = threading.Event()
        self.packets = 0
        self.emitted_ns = -1  # everything before this is out: later packets are late
        self._finishing = False
        self._output = _Output(fd, self.reader_gone)
        self._writer = PcapngWriter(self._output, userappl=f"xdpcap {__version__}", comment=comment)
        self._writer.flush()  # the section header at once: a reader waits for it
        self._thread = threading.Thread(target=self._pump, name="live-merge", daemon=True)
        self._thread.start()

    def add_host(self, name: str, address: str) -> LiveHost:
        with self.lock:
            host = LiveHost(self, name, address, len(self.hosts))
            self.hosts.append(host)
        return host

    def finish(self) -> None:
        """Write what is left and the statistics, then close the output. A reader that
        does not take the rest within DRAIN_S is cut off (what it missed is counted)."""
        with self.lock:
            self._finishing = True
            self._output.give_up_at = time.monotonic() + DRAIN_S
            self.wake.notify()
        self._thread.join(DRAIN_S + 5.0)

    @property
    def cut_off(self) -> bool:
        """The reader was still too slow DRAIN_S after the end: the rest was not sent."""
        return self._output.cut_off

    def counts(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {host.name: dict(host.counts.__dict__) for host in self.hosts}

    # -- the writing thread ------------------------------------------------------------
    def _pump(self) -> None:
        try:
            while True:
                with self.lock:
                    self.wake.wait(PUMP_WAIT_S)
                    finishing = self._finishing
                    self._leave_out_silent(time.monotonic())
                    work = [(host, host.frames) for host in self.hosts if host.frames]
                    for host, _ in work:
                        host.frames = deque()
                    horizon = self._watermark()
                    described = [h for h in self.hosts if h.interface and h.if_id is None]
                for host in described:
                    self._add_interface(host)
                for host, frames in work:
                    self._unpack(host, frames)
                if finishing:
                    self._release(None)
                    self._statistics()
                    return
                if horizon is not None:
                    self._release(horizon)
        finally:
            self._output.close()

    def _leave_out_silent(self, now: float) -> None:
        for host in self._holding():
            if now - host.last_heard > self.idle_s:
                host.left_out = True
                self.note(
                    f"{host.name}: nothing heard for {now - host.last_heard:.1f} s; the "
                    "live stream goes on without it (its capture file is complete)"
                )

    def _holding(self) -> list[LiveHost]:
        """The hosts the watermark waits for."""
        return [h for h in self.hosts if h.in_watermark and not h.finished and not h.left_out]

    def _watermark(self) -> int | None:
        """Where the stream may go up to now (None: nowhere new)."""
        holding = self._holding()
        if any(h.until_ns is None for h in holding):
            return None
        if holding:
            return min(h.until_ns - h.shift_ns for h in holding)  # type: ignore[operator]
        # Nobody holds it back: what every host has reported is final.
        reported = [h.until_ns - h.shift_ns for h in self.hosts if h.until_ns is not None]
        return max(reported) if reported else None

    def _add_interface(self, host: LiveHost) -> None:
        fields = host.interface or {}
        name = f"{host.name}:{fields.get('name', '?')}"
        description = f"host {host.name} ({host.address})"
        if fields.get("description"):
            description += f", {fields['description']}"
        if host.shift_ns:
            description += f", live clock shift {host.shift_ns / 1e6:+.3f} ms"
        expression = fields.get("filter")
        host.if_id = self._writer.add_interface(
            name,
            linktype=int(fields.get("linktype", 1)),
            snaplen=int(fields.get("snaplen", 0)),
            description=description,
            hardware=fields.get("hardware"),
            os_name=fields.get("os_name"),
            extra_options=[(IF_FILTER, b"\x00" + expression.encode())] if expression else (),
        )

    def _unpack(self, host: LiveHost, frames: deque[bytes]) -> None:
        """The frames' packets, with this stream's interface id and clock, into `pending`;
        what is already behind the stream is counted late."""
        if host.if_id is None:
            self._add_interface(host)  # no "interface" event came: a plain one
        if_id, shift, emitted = host.if_id, host.shift_ns, self.emitted_ns
        pending = host.pending
        late = dropped = 0
        for payload in frames:
            kept = 0
            view = memoryview(payload)
            pos, end = FRAME_HEAD.size, len(payload)
            while pos + 28 <= end:
                block_len = _BLOCK_LEN.unpack_from(payload, pos + 4)[0]
                if block_len < 28 or pos + block_len > end:
                    break  # a damaged frame: the rest of it is dropped
                _, high, low = _EPB_IF_TS.unpack_from(payload, pos + 8)
                ts = (high << 32 | low) - shift
                if ts < emitted:
                    late += 1
                else:
                    kept += block_len
                    block = (
                        view[pos : pos + 8].tobytes()
                        + _EPB_IF_TS.pack(if_id, ts >> 32, ts & 0xFFFFFFFF)
                        + view[pos + 20 : pos + block_len].tobytes()
                    )
                    pending.append((ts, block, host.index))
                pos += block_len
            dropped += len(payload) - kept  # what stays counts until it is written
        with self.lock:
            host.counts.late += late
            self.buffered -= dropped

    def _release(self, horizon: int | None) -> None:
        """Writes every pending packet before `horizon` (all for None), in time order."""
        if horizon is not None and horizon <= self.emitted_ns:
            return
        runs = []
        for host in self.hosts:
            pending = host.pending
            if not pending:
                continue
            if horizon is None or pending[-1][0] < horizon:
                cut = len(pending)
            else:
                cut = bisect_time(pending, horizon)
            if cut:
                runs.append(pending[:cut])
                del pending[:cut]
        if runs:
            # Ties go to the host listed first, then to its own order (heapq.merge's key).
            merged = runs[0] if len(runs) == 1 else list(heapq.merge(*runs, key=_first))
            self._writer.flush()  # interface blocks go before the packets
            start = 0
            while start < len(merged):
                end, size = start, 0
                while end < len(merged) and size < GROUP_BYTES:
                    size += len(merged[end][1])
                    end += 1
                self._send(merged[start:end])
                start = end
        if horizon is not None:
            self.emitted_ns = horizon

    def _send(self, items: list[tuple[int, bytes, int]]) -> None:
        """One write of released packets; counts, per host, those the reader got whole.

        The write blocks while the reader is slow (frames meanwhile wait, bounded by the
        budget), except at the end, when a reader gets DRAIN_S for the rest.
        """
        blocks = [item[1] for item in items]
        sent = self._output.send(b"".join(blocks))
        whole = bisect_right(list(accumulate(map(len, blocks))), sent)
        hosts = self.hosts
        for _, _, index in items[:whole]:
            hosts[index].counts.written += 1
        for _, _, index in items[whole:]:
            hosts[index].counts.unsent += 1
        self.packets += whole
        with self.lock:
            self.buffered -= sum(map(len, blocks))

    def _statistics(self) -> None:
        """Per interface, what its agent counted, and what the stream carried of it."""
        end = time.time_ns()
        for host in self.hosts:
            if host.if_id is None:
                continue
            summary = host.summary or {}
            c = host.counts
            self._writer.write_statistics(
                host.if_id,
                end,
                ifrecv=summary.get("seen"),
                ifdrop=summary.get("lost"),
                osdrop=summary.get("os_drops"),
                usrdeliv=c.written,
                comment=f"live stream: {c.written} packets of the {summary.get('written', '?')} "
                f"in the host's file; late {c.late}, skipped on the host {c.skipped_host}, "
                f"at the controller {c.skipped_controller}, not taken by the reader {c.unsent}",
            )
        self._writer.flush()


class _Output:
    """Where the stream goes. `send` waits for a slow reader (until `give_up_at`, once
    set); a reader gone (EPIPE) or too slow at the end ends the output quietly and sets
    `reader_gone`. Also PcapngWriter's file object, for the other blocks."""

    def __init__(self, fd: int, reader_gone: threading.Event) -> None:
        self._fd = fd
        self._gone = reader_gone
        self.give_up_at: float | None = None
        self.cut_off = False  # the reader did not take the rest in time at the end
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)  # so a wait can end at give_up_at

    def send(self, data: bytes) -> int:
        """Bytes of `data` the reader got (all of it, unless it went away)."""
        view = memoryview(data)
        sent = 0
        while sent < len(data) and not self._gone.is_set() and not self.cut_off:
            try:
                sent += os.write(self._fd, view[sent:])
            except BlockingIOError:
                if self.give_up_at is not None and time.monotonic() > self.give_up_at:
                    self.cut_off = True  # at the end, too slow
                    break
                select.select([], [self._fd], [], WAIT_SLICE_S)
            except OSError:
                # EPIPE, mostly: the reader closed (Wireshark stopped). Any other failure
                # ends the stream the same way; the run's files are unaffected.
                self._gone.set()
        view.release()
        return sent

    def write(self, data: bytes | memoryview) -> int:
        self.send(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
