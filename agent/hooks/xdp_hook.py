"""Inbound through the owner's xdpcap hook: one program of ours in each slot of the
prog array that the interface's XDP program tail-calls at its exit (bpf/xdpcap_hook.h,
cloudflare/xdpcap's ABI).

Each slot program samples the packet as it leaves the owner (after any rewrite) and
returns that slot's action, so the owner's verdict stands and every sample carries it.
The owner, its id, its attachment and its other maps are never touched: only the
hook's slots, and of those only the ones holding our programs — ours at the end, or
ones a killed capture left (recognised by their names, cleared at the next start under
the interface lock, and by `xdpcap check`). A slot holding someone else's program
(another capture tool) is never replaced: the capture is refused instead.

A program in a prog array must match the array's owner: type, JIT state, frags support
and, since kernel 6.18, the expected attach type. Neither of the last two can be read
from the owner, so ours is loaded each way in turn until the kernel accepts it in a slot.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from .. import contract, libbpf, netdev
from ..errors import AgentError
from .discovery import is_hook_shape

# (expected attach type, prog flags), most common first: libbpf's SEC("xdp") loads with
# BPF_XDP, bcc and older loaders with 0; SEC("xdp.frags") adds frags.
LOAD_VARIANTS = (
    (libbpf.BPF_XDP_ATTACH_TYPE, 0),
    (0, 0),
    (libbpf.BPF_XDP_ATTACH_TYPE, libbpf.BPF_F_XDP_HAS_FRAGS),
    (0, libbpf.BPF_F_XDP_HAS_FRAGS),
)
_U32 = struct.Struct("<I")


def _key(slot: int) -> bytes:
    return _U32.pack(slot)


def slot_prog_id(map_fd: int, slot: int) -> int | None:
    """The id of the program in `slot` (a prog array's lookup gives ids), or None."""
    try:
        return _U32.unpack(libbpf.map_lookup(map_fd, _key(slot), 4))[0]
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def clear_stale_slots(map_fd: int) -> list[int]:
    """Empty every slot holding a program of ours (a killed capture's); returns them.
    Call with the interface lock held, so no live capture on it owns them."""
    cleared = []
    for slot in range(len(contract.SLOT_PROGRAM_NAMES)):
        prog_id = slot_prog_id(map_fd, slot)
        ours = prog_id is not None and libbpf.prog_name(prog_id) in contract.SLOT_PROGRAM_NAMES
        # Looked up again just before: never delete what replaced ours meanwhile.
        if ours and slot_prog_id(map_fd, slot) == prog_id:
            libbpf.map_delete(map_fd, _key(slot))
            cleared.append(slot)
    return cleared


def open_hook_map(pin: str) -> int:
    """An fd for the hook map pinned at `pin`, checked to have the hook's shape."""
    try:
        fd = libbpf.obj_get(pin)
    except OSError as exc:
        raise AgentError(f"xdp hook {pin}: cannot open it: {exc.strerror or exc}") from exc
    try:
        spec = libbpf.map_spec(fd)
    except OSError as exc:
        os.close(fd)
        raise AgentError(f"xdp hook {pin}: not a BPF map") from exc
    if not is_hook_shape(spec):
        os.close(fd)
        raise AgentError(
            f"xdp hook {pin}: not an xdpcap hook map (a prog array with 4-byte keys and "
            f"values and 5 slots); it has type {spec.type}, key {spec.key_size}, value "
            f"{spec.value_size}, {spec.max_entries} entries"
        )
    return fd


class XdpHookSlots:
    direction = contract.INBOUND
    program = None  # loads its own programs: see attach_slots

    def __init__(self, iface: str, pin: str, owner: netdev.AttachedProgram) -> None:
        self.iface = iface
        self.pin = pin
        self.owner = owner
        self.cleared_stale: list[int] = []
        self._map_fd: int | None = None
        self._progs: dict[int, tuple[int, int]] = {}  # slot -> (prog fd, prog id)

    def attach_slots(self, bytecode: Callable[[str], bytes], license: str) -> None:
        """Put one of our programs in every slot; refuse if a slot holds someone else's."""
        self._map_fd = open_hook_map(self.pin)
        self.cleared_stale = clear_stale_slots(self._map_fd)
        for slot in range(len(contract.SLOT_PROGRAM_NAMES)):
            prog_id = slot_prog_id(self._map_fd, slot)
            if prog_id is not None:
                raise AgentError(
                    f"{self.iface}: slot {slot} of xdp hook {self.pin} holds program {prog_id} "
                    f"{libbpf.prog_name(prog_id)!r} (another capture?); xdpcap never replaces it"
                )
        variant = self._first_slot(bytecode, license)
        for slot in range(1, len(contract.SLOT_PROGRAM_NAMES)):
            self._load(slot, bytecode, license, variant)
            self._insert(slot)

    def _first_slot(self, bytecode: Callable[[str], bytes], license: str) -> tuple[int, int]:
        """Slot 0 with each load variant in turn: the kernel says which the owner has."""
        for variant in LOAD_VARIANTS:
            try:
                self._load(0, bytecode, license, variant)
            except OSError:
                continue  # e.g. frags on a kernel without them
            try:
                self._insert(0)
                return variant
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise AgentError(
                        f"{self.iface}: cannot use xdp hook {self.pin}: {exc.strerror}"
                    ) from exc
                self._unload(0)
        raise AgentError(
            f"{self.iface}: xdp hook {self.pin}: the kernel accepts no program of ours in it "
            f"(none matches XDP program {self.owner.prog_id} {self.owner.name!r} in attach "
            "type, frags support and JIT)"
        )

    def _load(
        self, slot: int, bytecode: Callable[[str], bytes], license: str, variant: tuple[int, int]
    ) -> None:
        name = contract.SLOT_PROGRAM_NAMES[slot]
        fd = libbpf.prog_load_xdp(name, license, bytecode(name), *variant)
        try:
            self._progs[slot] = (fd, libbpf.prog_info(fd).id)
        except BaseException:
            os.close(fd)
            raise

    def _unload(self, slot: int) -> None:
        fd, _ = self._progs.pop(slot)
        os.close(fd)

    def _insert(self, slot: int) -> None:
        assert self._map_fd is not None
        libbpf.map_update(self._map_fd, _key(slot), _U32.pack(self._progs[slot][0]))

    def detach(self) -> None:
        """Empty the slots that still hold our programs; safe to call more than once."""
        if self._map_fd is None:
            return
        try:
            for slot, (fd, prog_id) in sorted(self._progs.items()):
                try:
                    if slot_prog_id(self._map_fd, slot) == prog_id:
                        libbpf.map_delete(self._map_fd, _key(slot))
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # emptied meanwhile: nothing of ours
                        raise
                finally:
                    os.close(fd)
        finally:
            self._progs = {}
            os.close(self._map_fd)
            self._map_fd = None

    def describe(self) -> str:
        return (
            f"through hook {self.pin} of XDP program {self.owner.prog_id} {self.owner.name!r} "
            "(at its exit: each packet as it leaves the program, after any rewrite, "
            "with its verdict)"
        )
