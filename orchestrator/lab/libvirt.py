"""libvirt's daemons for the Vagrant lab where no init system runs (containers, CI).

`start()` starts virtlogd and libvirtd unless a libvirtd already answers, and records the
pids it started in a state file; `stop()` ends exactly those pids and nothing else, so a
libvirtd that systemd (or a user) runs is never touched. The networks the lab uses are
libvirt's own: vagrant-libvirt creates them at `vagrant up` and removes them at
`vagrant destroy`; libvirtd starts their dnsmasq.

Where no udev runs, /dev/kvm stays root's alone (0600). libvirt's QEMU probe (as root)
then finds KVM while its cache check as user libvirt-qemu does not, so it probes QEMU
again on every call: 7 s each, and `vagrant up` of three VMs took ten minutes instead of
a few. start() gives /dev/kvm what Debian's udev rule gives it (group kvm, 0660): the two
checks agree and the cache holds. A domain of type qemu still runs without KVM.
"""

from __future__ import annotations

import grp
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .system import LabError, kill_pids, pid_alive, run, write_file

URI = "qemu:///system"
STATE = Path("/run/xdpcap-libvirt/started.json")
KVM_DEVICE = Path("/dev/kvm")
KVM_GROUP = "kvm"  # libvirt-qemu's group on Debian
START_TIMEOUT = 60.0  # libvirtd probes QEMU's capabilities before it answers
# (name, binary, pid file): virtlogd first, libvirtd hands it the guests' consoles.
DAEMONS = (
    ("virtlogd", "/usr/sbin/virtlogd", Path("/run/virtlogd.pid")),
    ("libvirtd", "/usr/sbin/libvirtd", Path("/run/libvirtd.pid")),
)


@dataclass(frozen=True)
class Holdings:
    """What libvirt holds: names of domains, networks and storage volumes."""

    domains: tuple[str, ...]
    networks: tuple[str, ...]
    volumes: tuple[str, ...]


def answers(timeout: float = 10.0) -> bool:
    """True if a libvirtd answers on the system socket."""
    try:
        proc = run(["virsh", "-c", URI, "version"], timeout=timeout, check=False)
    except LabError:  # a libvirtd still starting may not answer in time: not yet
        return False
    return proc.returncode == 0


def start(state: Path = STATE) -> dict[str, int]:
    """Start what is not running; return {daemon: pid} of those this call started."""
    if answers():
        return {}
    started: dict[str, int] = {}
    for name, binary, pid_file in DAEMONS:
        pid = _running_pid(pid_file)
        if pid is None:
            if name == "libvirtd":
                kvm_device_as_udev_leaves_it()
            run([binary, "--daemon", "--pid-file", str(pid_file)], timeout=START_TIMEOUT)
            pid = _wait_pid(name, pid_file)
            started[name] = pid
    # Keep what an earlier start() recorded: stop() must find every pid we own.
    owned = {**_recorded(state), **started}
    state.parent.mkdir(parents=True, exist_ok=True)
    write_file(state, json.dumps(owned))
    _wait_answer()
    return started


def kvm_device_as_udev_leaves_it(device: Path = KVM_DEVICE) -> bool:
    """Group kvm and mode 0660 on DEVICE if it is root's alone; True if it was changed."""
    try:
        group = grp.getgrnam(KVM_GROUP).gr_gid
        stat = device.stat()
    except (KeyError, OSError):
        return False  # no kvm group (libvirt not installed) or no device: nothing to agree on
    if stat.st_gid == group:
        return False
    os.chown(device, -1, group)
    device.chmod(0o660)
    return True


def stop(names: Iterable[str] | None = None, state: Path = STATE) -> list[str]:
    """End the daemons start() recorded (by pid, never by name), or only NAMES of them
    (what one start() returned: a test stops what it started); return their names."""
    recorded = _recorded(state)
    owned = {n: pid for n, pid in recorded.items() if names is None or n in set(names)}
    # libvirtd before virtlogd: the reverse of the start.
    names = sorted(owned, key=lambda name: name != "libvirtd")
    survivors = kill_pids([owned[name] for name in names])
    if survivors:
        raise LabError(f"libvirt daemons did not stop: pids {survivors}")
    left = {n: pid for n, pid in recorded.items() if n not in owned}
    if left:
        write_file(state, json.dumps(left))
    else:
        state.unlink(missing_ok=True)
    return names


def holdings() -> Holdings:
    """Every domain, network and volume of the default pool libvirt knows, by name."""
    domains = _names(["virsh", "-c", URI, "list", "--all", "--name"])
    networks = _names(["virsh", "-c", URI, "net-list", "--all", "--name"])
    volumes: list[str] = []
    for pool in _names(["virsh", "-c", URI, "pool-list", "--all", "--name"]):
        proc = run(["virsh", "-c", URI, "vol-list", pool, "--name"], check=False)
        volumes += [f"{pool}/{v}" for v in proc.stdout.split()] if proc.returncode == 0 else []
    return Holdings(tuple(domains), tuple(networks), tuple(volumes))


def remove_unused_volumes(prefix: str, keep: str | None = None) -> list[str]:
    """Delete the default pool's volumes named PREFIX* (a box's disks from earlier adds)
    that no other volume is backed by, except KEEP; return the names deleted."""
    if not answers():
        return []
    volumes = run(["virsh", "-c", URI, "vol-list", "default", "--name"], check=False).stdout.split()
    backing = set()
    for volume in volumes:
        xml = run(["virsh", "-c", URI, "vol-dumpxml", "--pool", "default", volume]).stdout
        backing.update(re.findall(r"<backingStore>\s*<path>([^<]+)</path>", xml))
    deleted = []
    for volume in volumes:
        if not volume.startswith(prefix) or volume == keep:
            continue
        if any(path.endswith("/" + volume) for path in backing):
            continue  # a VM still runs on it
        run(["virsh", "-c", URI, "vol-delete", "--pool", "default", volume])
        deleted.append(volume)
    return deleted


def _names(argv: list[str]) -> list[str]:
    return run(argv, timeout=30).stdout.split()


def _recorded(state: Path) -> dict[str, int]:
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return {name: int(pid) for name, pid in data.items() if pid_alive(int(pid))}


def _running_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _wait_pid(name: str, pid_file: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        pid = _running_pid(pid_file)
        if pid is not None:
            return pid
        time.sleep(0.1)
    raise LabError(f"{name} started but wrote no live pid to {pid_file}")


def _wait_answer() -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if answers(timeout=5.0):
            return
        time.sleep(0.2)
    raise LabError(f"libvirtd does not answer on {URI} after {START_TIMEOUT:g} s")
