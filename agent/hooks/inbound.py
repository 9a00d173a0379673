"""How inbound packets are captured on one interface, decided before anything loads.

  xdp        our own XDP program: the interface has none
  hook       through the owner's xdpcap hook map (--xdp-hook PIN, or found pinned):
             every packet as it leaves the owner, with its verdict
  after-xdp  at tc ingress behind the owner: what it passed to the stack only

`--rx-capture` forces one; a refusal remains only for `xdp` on an interface that
already has another program, which xdpcap never replaces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import contract, libbpf, netdev
from ..errors import AgentError
from .discovery import find_hook_pin
from .xdp_hook import open_hook_map

RX_CAPTURE_CHOICES = ("auto", "xdp", "hook", "after-xdp")


@dataclass(frozen=True)
class InboundPlan:
    kind: str  # "xdp", "hook" or "after-xdp"
    owner: netdev.AttachedProgram | None = None  # the interface's foreign XDP program
    hook_pin: str | None = None
    discovered: bool = False  # the hook was found, not named by --xdp-hook

    def describe(self) -> str:
        """One phrase for the summary line, run.json and `xdpcap check`."""
        if self.kind == "hook":
            return f"through hook {self.hook_pin}"
        if self.kind == "after-xdp" and self.owner is not None:
            return f"inbound after XDP program {self.owner.name} (id {self.owner.prog_id})"
        return "our XDP program"


OWN_XDP = InboundPlan("xdp")


def _foreign(attached: netdev.AttachedProgram | None) -> netdev.AttachedProgram | None:
    """Our own program (a killed run's) is not foreign: XdpHook removes it."""
    if attached is None or attached.name == contract.PROGRAM_NAME:
        return None
    return attached


def _check_owner_uses(iface: str, pin: str, owner: netdev.AttachedProgram | None) -> None:
    """A hook map is only useful if the program on this interface tail-calls it."""
    if owner is None:
        raise AgentError(f"{iface}: --xdp-hook {pin}: no XDP program is attached to {iface}")
    fd = open_hook_map(pin)
    try:
        hook_id = libbpf.map_id(fd)
    finally:
        os.close(fd)
    try:
        prog_fd = libbpf.prog_fd_by_id(owner.prog_id)
    except OSError as exc:
        raise AgentError(f"{iface}: XDP program {owner.prog_id} went away") from exc
    try:
        uses = hook_id in libbpf.prog_info(prog_fd).map_ids
    finally:
        os.close(prog_fd)
    if not uses:
        raise AgentError(
            f"{iface}: --xdp-hook {pin}: XDP program {owner.prog_id} {owner.name!r} on {iface} "
            "does not use that map"
        )


def plan_inbound(
    iface: str,
    attached: netdev.AttachedProgram | None,
    rx_capture: str = "auto",
    xdp_hook: str | None = None,
) -> InboundPlan:
    if rx_capture not in RX_CAPTURE_CHOICES:
        raise AgentError(f"--rx-capture {rx_capture!r}: expected one of {RX_CAPTURE_CHOICES}")
    owner = _foreign(attached)
    if xdp_hook:
        if rx_capture not in ("auto", "hook"):
            raise AgentError(f"--xdp-hook cannot be used with --rx-capture {rx_capture}")
        _check_owner_uses(iface, xdp_hook, owner)
        return InboundPlan("hook", owner, xdp_hook)
    if rx_capture == "xdp" or (rx_capture == "auto" and owner is None):
        if owner is not None:
            raise AgentError(
                f"{iface}: an XDP program is already attached ({owner.describe()}); "
                "xdpcap never replaces it"
            )
        return OWN_XDP
    if owner is None:
        raise AgentError(f"{iface}: --rx-capture {rx_capture}: no XDP program is attached")
    pin = find_hook_pin(owner.prog_id) if rx_capture in ("auto", "hook") else None
    if pin is not None:
        return InboundPlan("hook", owner, pin, discovered=True)
    if rx_capture == "hook":
        raise AgentError(
            f"{iface}: XDP program {owner.prog_id} {owner.name!r} has no xdpcap hook map pinned "
            "on a mounted bpffs; name it with --xdp-hook PIN"
        )
    return InboundPlan("after-xdp", owner)
