"""Find the xdpcap hook map of the XDP program on an interface, without being told.

A cooperating program (bpf/xdpcap_hook.h, or one built for cloudflare/xdpcap) uses a
BPF_MAP_TYPE_PROG_ARRAY with 4-byte keys and values and 5 slots, pinned on a bpffs.
The program's info lists the ids of the maps it uses; every mounted bpffs (from
/proc/self/mountinfo: a bpffs can be mounted anywhere, not only on /sys/fs/bpf) is
looked through for a pin of one of those maps. Only reading: nothing is changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .. import libbpf

HOOK_SLOTS = 5  # one per XDP action: XDP_ABORTED (0) .. XDP_REDIRECT (4)
# A bpffs with very many pins (a large CNI datapath) is looked through this far at most:
# discovery must not stall a capture's start.
MAX_PINS_VISITED = 20000


def is_hook_shape(spec: libbpf.MapSpec) -> bool:
    """The hook ABI: a prog array, u32 keys and values, one slot per XDP action."""
    return (
        spec.type == libbpf.BPF_MAP_TYPE_PROG_ARRAY
        and spec.key_size == 4
        and spec.value_size == 4
        and spec.max_entries == HOOK_SLOTS
    )


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def bpffs_mounts(mountinfo: str) -> list[str]:
    """Mount points of every bpffs in a /proc/<pid>/mountinfo text."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if after and after[0] == "bpf":
            mounts.append(_unescape(fields[4]))
    return mounts


def _pins(roots: Iterable[str]) -> Iterator[str]:
    visited = 0
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                visited += 1
                if visited > MAX_PINS_VISITED:
                    return
                yield os.path.join(folder, name)


def _pinned_map_id(path: str) -> int | None:
    """The id of the map pinned at `path`; None for a pinned program or link."""
    try:
        fd = libbpf.obj_get(path)
    except OSError:
        return None
    try:
        return libbpf.map_id(fd)
    except OSError:  # not a map
        return None
    finally:
        os.close(fd)


def hook_map_ids(prog_id: int) -> list[int]:
    """Ids of the maps of program `prog_id` that have the hook's shape."""
    try:
        fd = libbpf.prog_fd_by_id(prog_id)
    except OSError:
        return []
    try:
        map_ids = libbpf.prog_info(fd).map_ids
    finally:
        os.close(fd)
    found = []
    for map_id in map_ids:
        try:
            map_fd = libbpf.map_fd_by_id(map_id)
        except OSError:
            continue
        try:
            if is_hook_shape(libbpf.map_spec(map_fd)):
                found.append(map_id)
        finally:
            os.close(map_fd)
    return found


def find_hook_pin(prog_id: int, mountinfo_path: str = "/proc/self/mountinfo") -> str | None:
    """The pin path of program `prog_id`'s hook map on any mounted bpffs, or None."""
    wanted = set(hook_map_ids(prog_id))
    if not wanted:
        return None
    try:
        mounts = bpffs_mounts(Path(mountinfo_path).read_text())
    except OSError:
        return None
    for path in _pins(mounts):
        if _pinned_map_id(path) in wanted:
            return path
    return None
