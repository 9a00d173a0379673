"""libvirt's daemons for the Vagrant lab where no init system runs (containers, CI).

`start()` starts virtlogd and libvirtd unless a libvirtd already answers, and records the
pids it started in a state file; `stop()` ends exactly those pids and nothing else, so a
libvirtd that systemd (or a user) runs is never touched. The networks the lab uses are
libvirt's own: vagrant-libvirt creates them at `vagrant up` and removes them at
`vagrant destroy`; libvirtd starts their dnsmasq.

Where /dev/kvm exists but the CPU offers no VMX/SVM (a nested VM without it: KVM_CREATE_VM
succeeds, guests spin), libvirtd runs in a mount namespace of its own where /dev/kvm is
an unreadable plain file. Otherwise libvirt's QEMU probe finds KVM, its cache check as
user libvirt-qemu does not, and it probes QEMU again on every call: 6-8 s each, and
`vagrant up` of three VMs took ten minutes instead of two.

Also the lab's view of what libvirt holds (domains, networks, volumes), for checking that
a destroyed lab left nothing behind.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .system import LabError, kill_pids, pid_alive, run, write_file

URI = "qemu:///system"
STATE = Path("/run/xdpcap-libvirt/started.json")
KVM_DEVICE = Path("/dev/kvm")
NO_KVM = STATE.parent / "no-kvm"  # what libvirtd sees as /dev/kvm when KVM cannot work
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
            argv = [binary, "--daemon", "--pid-file", str(pid_file)]
            if name == "libvirtd" and KVM_DEVICE.exists() and not kvm_works():
                argv = _without_kvm(argv)
            run(argv, timeout=START_TIMEOUT)
            pid = _wait_pid(name, pid_file)
            started[name] = pid
    # Keep what an earlier start() recorded: stop() must find every pid we own.
    owned = {**_recorded(state), **started}
    state.parent.mkdir(parents=True, exist_ok=True)
    write_file(state, json.dumps(owned))
    _wait_answer()
    return started


def kvm_works(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU offers hardware virtualisation (the Vagrantfile asks the same question)."""
    try:
        return re.search(r"\b(vmx|svm)\b", cpuinfo.read_text()) is not None
    except OSError:
        return False


def _without_kvm(argv: list[str]) -> list[str]:
    """ARGV in a private mount namespace where /dev/kvm is a mode-0 plain file: libvirt
    sees KVM as unusable, consistently, and keeps its capability cache."""
    NO_KVM.parent.mkdir(parents=True, exist_ok=True)
    NO_KVM.touch()
    NO_KVM.chmod(0)
    script = f'mount --bind {NO_KVM} {KVM_DEVICE} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


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
