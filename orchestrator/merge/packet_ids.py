"""epb_packetid: which packets get one, carried from the alignment's pass to the merge.

The pass (follow/join.py) sees a packet's sightings on every host; the merge, which runs
after it (it needs the solved clocks to order anything), writes them. What crosses
between the two is a *marks file* per input: the packets of that input seen at two
capture points or more, as (ordinal, id) records in the input's file order — ordinal the
packet's index among the input's packets, id its packet id (observe.key_id: the same on
every sighting). Both read every input's blocks with the same reader, so ordinals agree;
both walk an input in file order, so the merge reads its marks file once, front to back,
and never identifies a packet again. Memory: nothing per packet on either side (the C
join holds a packet's mark only until no group can claim it); disk: 16 bytes a marked
sighting, beside the output (not in /tmp, which may be memory).

A marked block gets option 5 (epb_packetid, 8 bytes) before opt_endofopt (or after its
last option); a block with damaged options, or an epb_packetid of its own, stays as it is.
_fastmerge.c's `packet_id_at` and `write_with_packet_id` do the same in the C loop
(tests/unit/test_journeys.py compares them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence

OPT_PACKETID = 5
# (ordinal, id) in this machine's byte order, as _fastmerge.c writes them (the files
# never leave the process that wrote them).
RECORD = struct.Struct("=QQ")
_U32 = struct.Struct("<I")
_OPTION = struct.Struct("<HH")
_READ_RECORDS = 4096


FOLDER_PREFIX = ".xdpcap-packet-ids-"


class PacketMarks:
    """One marks file per input, in a folder of their own that `close` removes (one a
    killed process left is removed by the next one there: `remove_stale`)."""

    def __init__(
        self, inputs: Sequence[str | os.PathLike[str]], folder: str | os.PathLike[str] | None
    ) -> None:
        remove_stale(folder if folder is not None else tempfile.gettempdir())
        self.folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=folder)
        self.paths = [os.path.join(self.folder, f"{index}.marks") for index in range(len(inputs))]
        self._by_input = {os.fspath(path): mark for path, mark in zip(inputs, self.paths)}
        self.packets = 0  # packets seen at two capture points or more (ids given)
        # Marks that came after their packet was written out (the C join's horizon was
        # too short: never seen; counted so that a test would see it).
        self.late = 0
        self.held_high_water = 0  # the most marks one host's ring held (the C join)

    def path_for(self, input_path: str | os.PathLike[str]) -> str | None:
        return self._by_input.get(os.fspath(input_path))

    def write(self, index: int, marks: Sequence[tuple[int, int]]) -> None:
        """Input `index`'s marks, (ordinal, id) in ordinal order (the Python join)."""
        with open(self.paths[index], "wb") as stream:
            stream.write(b"".join(RECORD.pack(ordinal, pid) for ordinal, pid in marks))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PacketMarks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale(folder: str | os.PathLike[str]) -> None:
    """Marks folders in `folder` whose process is gone (killed before it could remove
    them)."""
    for entry in left_by_dead_processes(folder, FOLDER_PREFIX):
        if entry.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)


def left_by_dead_processes(
    folder: str | os.PathLike[str], prefix: str, suffix: str = ""
) -> list[os.DirEntry]:
    """What lies in `folder` named `<prefix><pid>[-anything]<suffix>`, `pid` a process
    that is gone: the leftovers of a killed merge (the name carries its maker's pid)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            name = entry.name
            if not name.startswith(prefix) or not name.endswith(suffix):
                continue
            pid = name[len(prefix) : len(name) - len(suffix)].partition("-")[0]
            if pid.isdigit() and not process_alive(int(pid)):
                found.append(entry)
    return found


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (stale files name the process that made them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


class MarkCursor:
    """An input's marks read front to back by the Python merge, as it reads the input."""

    def __init__(self, path: str) -> None:
        self._stream = open(path, "rb")  # noqa: SIM115 - closed when the marks end
        self._records: Iterator[tuple[int, int]] = iter(())
        self._next: tuple[int, int] | None = None
        self._advance()
        self.ordinal = 0  # of the next block of the input

    def _advance(self) -> None:
        self._next = next(self._records, None)
        if self._next is None and not self._stream.closed:
            data = self._stream.read(RECORD.size * _READ_RECORDS)
            if len(data) < RECORD.size:
                self._stream.close()
                return
            self._records = RECORD.iter_unpack(data[: len(data) - len(data) % RECORD.size])
            self._next = next(self._records, None)

    def stamp(self, blocks: list) -> None:
        """The input's next `len(blocks)` blocks, in file order: marked ones get their id
        (in place)."""
        first, end = self.ordinal, self.ordinal + len(blocks)
        while self._next is not None and self._next[0] < end:
            ordinal, packet_id = self._next
            if ordinal >= first:
                blocks[ordinal - first] = with_packet_id(blocks[ordinal - first], packet_id)
            self._advance()
        self.ordinal = end

    def close(self) -> None:
        self._stream.close()


def with_packet_id(block: bytes | memoryview, packet_id: int) -> bytes | memoryview:
    """The enhanced packet block with epb_packetid `packet_id` (or as it is, when its
    options are damaged or already hold one)."""
    cap = _U32.unpack_from(block, 20)[0]
    blen = len(block)
    at, end = 28 + (cap + 3 & ~3), blen - 4
    while at + 4 <= end:
        code, length = _OPTION.unpack_from(block, at)
        if code == 0:
            break
        if code == OPT_PACKETID or at + 4 + length > end:
            return block
        at += 4 + (length + 3 & ~3)
    if at > end:
        return block
    new_len = at + 20
    return b"".join(
        (
            block[:4],
            _U32.pack(new_len),
            block[8:at],
            struct.pack("<HHQ", OPT_PACKETID, 8, packet_id),
            b"\0\0\0\0",  # opt_endofopt
            _U32.pack(new_len),
        )
    )
