"""Foreign XDP programs for the tests, set up the way their users do, and torn down.

A bpffs is mounted in a mount namespace of the test's own (no bpffs is mounted on the
machine, and `ip netns exec` hides /sys/fs/bpf): the namespace is kept alive by a bind
mount of its nsfs file, and every command that needs the pins (bpftool, xdp-filter, the
agent itself for discovery) runs through `nsenter --mount=... ip netns exec NS`. The
mount namespace is a slave of the host's, so network namespaces made later are seen in
it. Tearing it down unmounts the bpffs: the pins go with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .veth import sh

REPO = Path(__file__).resolve().parents[2]
COOP_SOURCE = Path(__file__).with_name("programs") / "coop_xdp.c"
# coop_xdp.c's verdict for each UDP destination port (XDP_ABORTED 0 ... XDP_TX 3).
COOP_PORTS = {7001: 1, 7002: 2, 7003: 3, 7004: 0}
COOP_ABORT_PORT = 7004
COOP_REDIRECT_PORT = 7006  # bpf_redirect back out of the interface: XDP_REDIRECT


@dataclass(frozen=True)
class BpffsNamespace:
    ns_file: Path  # the mount namespace, held by a bind mount
    bpffs: Path  # where the bpffs is mounted inside it (no dots: libbpf rewrites them)

    def argv(self, netns: str, *argv: str) -> list[str]:
        return ["nsenter", f"--mount={self.ns_file}", "ip", "netns", "exec", netns, *argv]

    def run(self, netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(netns, *argv), capture_output=True, text=True, timeout=60, check=check
        )


@contextmanager
def bpffs_namespace(tag: str) -> Iterator[BpffsNamespace]:
    """A mount namespace of the test's own, with a bpffs in it."""
    suffix = f"{tag}{os.getpid()}"
    holder = Path(f"/run/xdpcap_t{suffix}")
    ns_file = holder / "mnt"
    steps: list[list[str]] = []  # undo, in reverse order
    try:
        holder.mkdir()
        # The nsfs bind mount needs a private parent mount.
        sh("mount", "--bind", str(holder), str(holder))
        steps.append(["umount", str(holder)])
        sh("mount", "--make-private", str(holder))
        ns_file.touch()
        sh("unshare", f"--mount={ns_file}", "--propagation", "slave", "true")
        steps.append(["umount", str(ns_file)])
        with bpffs_in(ns_file, tag) as space:
            yield space
    finally:
        for step in reversed(steps):
            sh(*step, check=False)
        for path in (ns_file, holder):
            with contextlib.suppress(OSError):
                path.unlink() if path.is_file() else path.rmdir()


@contextmanager
def bpffs_in(ns_file: Path, tag: str) -> Iterator[BpffsNamespace]:
    """A bpffs mounted inside an existing mount namespace (ours, or a lab host's sshd's:
    `/proc/PID/ns/mnt`), unmounted at the end: its pins go with it."""
    space = BpffsNamespace(ns_file, Path(f"/tmp/xdpcap_bpffs_{tag}{os.getpid()}"))
    space.bpffs.mkdir()
    mounted = False
    try:
        sh("nsenter", f"--mount={ns_file}", "mount", "-t", "bpf", "bpf", str(space.bpffs))
        mounted = True
        yield space
    finally:
        if mounted:
            sh("nsenter", f"--mount={ns_file}", "umount", str(space.bpffs), check=False)
        with contextlib.suppress(OSError):
            space.bpffs.rmdir()


def build_coop(out_dir: Path, *defines: str) -> Path:
    """clang -target bpf with libbpf's headers and bpf/xdpcap_hook.h, as users build."""
    obj = out_dir / "coop_xdp.o"
    sh(
        "clang",
        *(f"-D{name}" for name in defines),
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-I/usr/include/x86_64-linux-gnu",  # asm/types.h on Debian
        f"-I{REPO}",
        "-c",
        str(COOP_SOURCE),
        "-o",
        str(obj),
        timeout=120,
    )
    return obj


@dataclass(frozen=True)
class CoopProgram:
    prog_id: int
    prog_pin: Path
    hook_pin: Path


def load_coop(space: BpffsNamespace, netns: str, ifname: str, obj: Path) -> CoopProgram:
    """Load with bpftool, pin the program and its maps, attach in native mode."""
    prog_pin, maps = space.bpffs / "coop", space.bpffs / "coop_maps"
    space.run(netns, "bpftool", "prog", "load", str(obj), str(prog_pin), "pinmaps", str(maps))
    space.run(netns, "bpftool", "net", "attach", "xdpdrv", "pinned", str(prog_pin), "dev", ifname)
    info = json.loads(
        space.run(netns, "bpftool", "-j", "prog", "show", "pinned", str(prog_pin)).stdout
    )
    return CoopProgram(int(info["id"]), prog_pin, maps / "xdpcap_hook")


def hook_slots(space: BpffsNamespace, netns: str, hook: Path) -> dict[int, str]:
    """Slot -> the name of the program in it, read with bpftool (not our own code)."""
    dump = json.loads(space.run(netns, "bpftool", "-j", "map", "dump", "pinned", str(hook)).stdout)
    slots = {}
    for entry in dump:
        key = int.from_bytes(bytes(int(b, 16) for b in entry["key"]), "little")
        value = entry.get("value")
        prog_id = int.from_bytes(bytes(int(b, 16) for b in value), "little")
        show = json.loads(
            space.run(netns, "bpftool", "-j", "prog", "show", "id", str(prog_id)).stdout
        )
        slots[key] = show["name"]
    return slots


@contextmanager
def coop_attached(
    space: BpffsNamespace, netns: str, ifname: str, obj: Path
) -> Iterator[CoopProgram]:
    """load_coop, and the program detached at the end (its pins go with the bpffs)."""
    try:
        yield load_coop(space, netns, ifname, obj)
    finally:
        space.run(netns, "bpftool", "net", "detach", "xdpdrv", "dev", ifname, check=False)


@contextmanager
def xdp_filter_dropping(
    space: BpffsNamespace, netns: str, ifname: str, udp_port: int
) -> Iterator[None]:
    """xdp-filter (libxdp) in native mode dropping one UDP port, unloaded at the end."""
    libxdp = f"LIBXDP_BPFFS={space.bpffs}"  # libxdp looks on /sys/fs/bpf otherwise
    try:
        space.run(netns, "env", libxdp, "xdp-filter", "load", ifname, "-m", "native")
        space.run(netns, "env", libxdp, "xdp-filter", "port", str(udp_port), "-p", "udp")
        yield
    finally:
        space.run(netns, "env", libxdp, "xdp-filter", "unload", ifname, check=False)
