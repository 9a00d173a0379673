"""The agent's writer when the disk fills: whole blocks only, and as many as fitted."""

from __future__ import annotations

import errno
import io

from xdpcap.agent.pcapng import FLUSH_BYTES, PcapngWriter, enhanced_packet


class _SmallDisk(io.BytesIO):
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data) -> int:
        free = self.room - self.tell()
        if free <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(bytes(data)[:free])


def test_a_large_batch_keeps_what_fitted_when_the_disk_fills() -> None:
    disk = _SmallDisk(room=3 * FLUSH_BYTES)
    writer = PcapngWriter(disk)
    block = enhanced_packet(0, 1, b"x" * 1400, 1400)
    batch = [block] * (8 * FLUSH_BYTES // len(block))  # far more than the disk holds
    try:
        writer.write_blocks(batch, len(batch))
        writer.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    # Cut back to whole blocks, and those are most of what the disk could take (the
    # batch was not lost as a whole).
    data = disk.getvalue()
    assert len(data) == writer.bytes_committed
    committed = writer.packets_committed
    assert committed * len(block) > 2 * FLUSH_BYTES
    section_header = len(data) - committed * len(block)
    assert data[section_header:] == block * committed
