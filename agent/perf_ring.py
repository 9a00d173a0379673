"""Our own reader of the per-CPU perf rings behind the sampler's perf event array.

Why not bcc's reader: it calls a ctypes callback once per sample, which at a few
hundred thousand samples a second is most of the agent's CPU (measured in
BENCHMARKS.md: the consumer fell behind and lost 0.2 % of a flat-out run). Here each
drain copies a CPU's whole readable region in one slice and hands it back as bytes; the
records are parsed in bulk by the consumer with `struct`.

Per CPU: perf_event_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_BPF_OUTPUT, sample_type
PERF_SAMPLE_RAW, wakeup_events N), a shared mmap of 1 + 2^n pages, and the fd stored in
the BPF perf event array at that CPU's index (what bpf_perf_event_output with
BPF_F_CURRENT_CPU writes to). The first page is struct perf_event_mmap_page: the kernel
advances data_head after writing records, we advance data_tail after copying them.

Memory ordering: data_head must be read before the records it covers, and the records
copied before data_tail is moved. On x86-64 (TSO) loads are not reordered with loads,
nor stores with earlier loads, so plain loads and stores in this order are enough. On
other architectures a barrier would be needed that Python cannot issue, so there
`supported()` is False and the sampler uses bcc's reader.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import select
import struct
from collections.abc import Sequence

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER8; the kernel accepts any known version
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9

# struct perf_event_attr, up to what we set: type, size, config, sample_period,
# sample_type, read_format, flags (bit fields, all 0), wakeup_events.
_ATTR = struct.Struct("<IIQQQQQI")
# struct perf_event_mmap_page: data_head at 1024, data_tail at 1032, data_offset at
# 1040, data_size at 1048 (all u64).
_DATA_HEAD = 1024
_DATA_TAIL = 1032
_DATA_OFFSET = 1040
_DATA_SIZE = 1048
_U64 = struct.Struct("<Q")

_SYSCALL_PERF_EVENT_OPEN = {"x86_64": 298, "i686": 336, "i386": 336}

# struct perf_event_header {u32 type; u16 misc; u16 size;} then, for PERF_RECORD_SAMPLE
# with PERF_SAMPLE_RAW, {u32 size; u8 data[size]}; for PERF_RECORD_LOST {u64 id; u64 lost}.
HEADER = struct.Struct("<IHH")
RAW_SIZE = struct.Struct("<I")
SAMPLE_DATA_OFFSET = HEADER.size + RAW_SIZE.size
LOST_COUNT_OFFSET = HEADER.size + 8


def supported() -> bool:
    return platform.machine() in _SYSCALL_PERF_EVENT_OPEN


def online_cpus(path: str = "/sys/devices/system/cpu/online") -> list[int]:
    """ "0-3,5,7-8" -> [0, 1, 2, 3, 5, 7, 8]."""
    with open(path) as f:
        text = f.read().strip()
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _perf_event_open(cpu: int, wakeup_events: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(PERF_ATTR_SIZE)
    _ATTR.pack_into(
        attr,
        0,
        PERF_TYPE_SOFTWARE,
        PERF_ATTR_SIZE,
        PERF_COUNT_SW_BPF_OUTPUT,
        1,  # sample_period: every event is a sample
        PERF_SAMPLE_RAW,
        0,
        0,  # flags: enabled, no watermark (wake-ups counted in events)
        max(1, wakeup_events),
    )
    fd = libc.syscall(
        _SYSCALL_PERF_EVENT_OPEN[platform.machine()],
        attr,
        ctypes.c_int(-1),  # any process
        ctypes.c_int(cpu),
        ctypes.c_int(-1),  # no group
        ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open on CPU {cpu}: {os.strerror(err)}")
    return fd


class PerfRing:
    """One CPU's perf event and its mmap'd ring."""

    def __init__(self, cpu: int, page_count: int, wakeup_events: int) -> None:
        if page_count < 1 or page_count & (page_count - 1):
            raise ValueError(f"page_count must be a power of two, not {page_count}")
        self.cpu = cpu
        self.fd = _perf_event_open(cpu, wakeup_events)
        page = mmap.PAGESIZE
        try:
            self._map = mmap.mmap(
                self.fd, (1 + page_count) * page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError:
            os.close(self.fd)
            raise
        self._view = memoryview(self._map)
        # Kernels before 4.1 leave data_offset/data_size 0: the data follows the first page.
        self._offset = _U64.unpack_from(self._map, _DATA_OFFSET)[0] or page
        self._size = _U64.unpack_from(self._map, _DATA_SIZE)[0] or page_count * page
        self._tail = _U64.unpack_from(self._map, _DATA_TAIL)[0]

    def read(self) -> bytes:
        """Every record written since the last read, as one bytes object; frees the space."""
        head = _U64.unpack_from(self._map, _DATA_HEAD)[0]
        tail = self._tail
        if head == tail:
            return b""
        size, base, view = self._size, self._offset, self._view
        start = tail % size
        end = start + (head - tail)
        if end <= size:
            chunk = bytes(view[base + start : base + end])
        else:  # the region wraps around the end of the ring
            chunk = bytes(view[base + start : base + size]) + bytes(view[base : base + end - size])
        # Only now may the kernel overwrite what we copied.
        _U64.pack_into(self._map, _DATA_TAIL, head)
        self._tail = head
        return chunk

    def close(self) -> None:
        self._view.release()
        self._map.close()
        os.close(self.fd)


def _libbpf() -> ctypes.CDLL:
    return ctypes.CDLL("libbpf.so.1", use_errno=True)  # a dependency of bcc


class PerfRings:
    """A ring per online CPU, installed in a BPF perf event array; poll() waits on all."""

    def __init__(self, map_fd: int, cpus: Sequence[int], page_count: int, wakeup_events: int):
        self._map_fd = map_fd
        self._libbpf = _libbpf()
        self.rings: list[PerfRing] = []
        self._epoll = select.epoll()
        try:
            for cpu in cpus:
                ring = PerfRing(cpu, page_count, wakeup_events)
                self.rings.append(ring)
                self._epoll.register(ring.fd, select.EPOLLIN)
                key, value = ctypes.c_uint32(cpu), ctypes.c_uint32(ring.fd)
                if self._libbpf.bpf_map_update_elem(
                    map_fd, ctypes.byref(key), ctypes.byref(value), ctypes.c_uint64(0)
                ):
                    err = ctypes.get_errno()
                    raise OSError(err, f"perf event array, CPU {cpu}: {os.strerror(err)}")
        except BaseException:
            self.close()
            raise

    def poll(self, timeout_ms: int) -> None:
        """Waits until a ring reached its wake-up count, at most timeout_ms."""
        self._epoll.poll(max(0, timeout_ms) / 1000)

    def read(self) -> list[bytes]:
        """One chunk of records per CPU that has any."""
        return [chunk for chunk in (ring.read() for ring in self.rings) if chunk]

    def close(self) -> None:
        """Removes the rings from the map (the program then writes nowhere) and frees them."""
        for ring in self.rings:
            key = ctypes.c_uint32(ring.cpu)
            self._libbpf.bpf_map_delete_elem(self._map_fd, ctypes.byref(key))  # absent: fine
            ring.close()
        self.rings = []
        self._epoll.close()


MAX_BUFFER_PAGES = 2048  # 8 MiB per CPU with 4 KiB pages: what a 2-core host gets
MIN_BUFFER_PAGES = 256  # 1 MiB: below this a burst of full-size frames overflows at once
BUFFER_BUDGET_PAGES = 16384  # 64 MiB over all CPUs


def buffer_pages_for(cpus: int) -> int:
    """Perf buffer pages per CPU: 8 MiB each on a small host, but about 64 MiB in all.

    The buffers are locked kernel memory, one per CPU: 8 MiB on each of a 128-CPU
    production host would be a gigabyte. Samples go to the CPU that received the
    packet, so with many CPUs each one carries a share of the traffic anyway.
    """
    pages = BUFFER_BUDGET_PAGES // max(1, cpus)
    pages = 1 << (pages.bit_length() - 1) if pages else 1  # a power of two, as perf needs
    return max(MIN_BUFFER_PAGES, min(MAX_BUFFER_PAGES, pages))
