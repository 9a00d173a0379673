"""Can this host capture on this interface? A JSON report and a verdict with the reason."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from . import __version__, libbpf, netdev
from .bcc_import import bcc_version
from .errors import AgentError
from .headers import find_kernel_headers, remove_farm
from .hooks.inbound import plan_inbound
from .hooks.tc import tcx_expected
from .hooks.xdp_hook import clear_stale_slots, open_hook_map
from .lock import InterfaceLock
from .sampler import cached_sampler_present

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39
CAP_PERFMON = 38
MIN_FREE_BYTES = 64 << 20


def effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _has(caps: int, cap: int) -> bool:
    return bool(caps >> cap & 1)


def _inbound(iface: str, attached: netdev.AttachedProgram | None) -> str:
    """How a capture would take inbound packets: "xdp", "hook PIN" or "after-xdp behind
    NAME (id N)". Slots of a hook that a killed capture left holding our programs are
    emptied, unless a capture on the interface (holding its lock) is using them."""
    plan = plan_inbound(iface, attached)
    if plan.kind == "xdp":
        return "xdp"
    assert plan.owner is not None
    if plan.kind == "after-xdp":
        return f"after-xdp behind {plan.owner.name} (id {plan.owner.prog_id})"
    assert plan.hook_pin is not None
    # Locked (AgentError): a live capture on the interface owns the slots.
    with contextlib.suppress(AgentError), InterfaceLock(iface):
        fd = open_hook_map(plan.hook_pin)
        try:
            clear_stale_slots(fd)
        finally:
            os.close(fd)
    return f"hook {plan.hook_pin}"


def preflight(iface: str, output_dir: str = ".") -> dict[str, Any]:
    problems: list[str] = []
    report: dict[str, Any] = {
        "xdpcap": __version__,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "bcc": bcc_version(),
        "iface": iface,
        # How each direction would be captured: inbound by XDP (native where the driver
        # has it), outbound by a tcx link (6.6+) or else a clsact filter.
        "hooks": {
            "in": "xdp",
            "out": "tcx" if tcx_expected(platform.release()) else "clsact",
        },
    }
    if not libbpf.available():
        problems.append(
            "libbpf.so.1 is not installed: the egress hook and the sampler cache need it "
            "(Debian/Ubuntu: libbpf1, which python3-bpfcc brings)"
        )
    if report["bcc"] is None:
        problems.append(
            "bcc is not installed: install python3-bpfcc (Debian/Ubuntu) "
            "or python3-bcc (Fedora/RHEL)"
        )
    try:
        headers = find_kernel_headers()
    except AgentError as exc:
        report["headers"] = None
        problems.append(str(exc))
    else:
        report["headers"] = headers.describe()
        report["headers_exact"] = headers.exact
        # Whether the first capture here compiles (a CPU and memory spike) or loads.
        report["sampler_cached"] = cached_sampler_present(headers) if report["bcc"] else None
        remove_farm(headers)
    try:
        info = netdev.inspect_interface(iface)
    except AgentError as exc:
        report["iface_exists"] = False
        problems.append(str(exc))
    else:
        report["iface_exists"] = True
        report["driver"] = info.driver
        report["xdp_attached"] = (
            {"id": info.attached.prog_id, "name": info.attached.name, "mode": info.attached.mode}
            if info.attached
            else None
        )
        try:
            report["hooks"]["in"] = _inbound(iface, info.attached)
        except AgentError as exc:
            problems.append(str(exc))
    caps = effective_capabilities()
    bpf_ok = _has(caps, CAP_BPF) or _has(caps, CAP_SYS_ADMIN)
    net_ok = _has(caps, CAP_NET_ADMIN)
    report["privileges"] = {"uid": os.geteuid(), "CAP_BPF": bpf_ok, "CAP_NET_ADMIN": net_ok}
    if not (bpf_ok and net_ok):
        problems.append("not enough privileges: run as root (CAP_BPF and CAP_NET_ADMIN)")
    try:
        free = shutil.disk_usage(output_dir).free
    except OSError as exc:
        report["free_bytes"] = None
        problems.append(f"output folder {output_dir}: {exc.strerror}")
    else:
        report["free_bytes"] = free
        if free < MIN_FREE_BYTES:
            problems.append(f"only {free >> 20} MiB free in {output_dir}")
    report["output_dir"] = os.path.abspath(output_dir)
    report["verdict"] = "ok" if not problems else "fail"
    report["reason"] = "ready to capture" if not problems else "; ".join(problems)
    return report
