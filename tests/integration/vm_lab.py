"""The Vagrant lab for the integration tests: real VMs (Debian 12, kernel 6.1) under
vagrant-libvirt, from the box `xdpcap lab vagrant-box` builds.

`vm_lab()` starts libvirt's daemons if no init runs them, builds or reuses the box, brings
the VMs up under a private domain prefix and Vagrant state directory, and always destroys
them again, checks that nothing is left (no domain, network or disk beyond the box's
cache) and stops the daemons it started, by pid.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from xdpcap.orchestrator.lab import box, libvirt

REPO = Path(__file__).resolve().parents[2]
# What the VM tests need beyond the other integration tests (scripts/setup.sh installs it).
TOOLS = ("vagrant", "virsh", "qemu-system-x86_64", "qemu-img", "debootstrap", "/usr/sbin/libvirtd")
PRIVATE_NETWORK_WAIT_S = 180.0
UP_TIMEOUT = 1800.0  # three VMs under QEMU without KVM on two busy cores: ~10 min measured
# vagrant-libvirt keeps each box's disk in libvirt's pool after `vagrant box remove`: the
# box's cache, not the lab's.
BOX_VOLUME_PREFIX = box.box_volume_prefix(box.BOX_NAME)


def nodes_wanted() -> int:
    return int(os.environ.get("XDPCAP_VM_NODES", "3"))


def missing_prerequisite() -> str | None:
    for tool in TOOLS:
        if shutil.which(tool) is None and not os.path.exists(tool):
            return f"the VM lab needs {tool} (scripts/setup.sh installs it)"
    plugins = subprocess.run(
        ["vagrant", "plugin", "list"], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    if "vagrant-libvirt" not in plugins:
        return "the VM lab needs the vagrant-libvirt plugin (Debian package vagrant-libvirt)"
    return None


@dataclass
class Node:
    name: str
    address: str  # management address (eth0), where SSH goes
    private_ip: str  # eth1: the lab's private network, where the capture is
    user: str
    key: str


@dataclass
class VmLab:
    nodes: list[Node]
    inventory: Path
    env: dict[str, str]
    prefix: str

    def vagrant(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return vagrant(self.env, *args, timeout=timeout)

    def ssh_argv(self, node: Node, command: str) -> list[str]:
        return [
            "ssh", "-i", node.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
            f"{node.user}@{node.address}", command,
        ]  # fmt: skip

    def ssh(self, node: Node, command: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            self.ssh_argv(node, command),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert proc.returncode == 0, f"{node.name}: `{command}` failed: {proc.stderr}"
        return proc.stdout


def vagrant(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["vagrant", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _progress(message: str) -> None:
    print(f"vm lab: {message}", file=sys.stderr)


@contextlib.contextmanager
def vm_lab(tmp_path: Path, nodes: int) -> Iterator[VmLab]:
    prefix = f"xdpcap-t{os.getpid()}-"
    env = {
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "vagrant"),
        "XDPCAP_VAGRANT_NODES": str(nodes),
        "XDPCAP_VAGRANT_PREFIX": prefix,
    }
    started = libvirt.start()
    try:
        before = libvirt.holdings()
        try:
            box.build_box(box.BoxPlan(mirror=box.apt_mirror()), _progress)
            t0 = time.monotonic()
            up = vagrant(env, "up", "--provider", "libvirt", timeout=UP_TIMEOUT)
            assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
            _progress(f"vagrant up of {nodes} VMs took {time.monotonic() - t0:.0f} s")
            lab = _describe(env, prefix, nodes, tmp_path)
            wait_for_private_network(lab)
            yield lab
        finally:
            destroy(env)
            assert_nothing_left(before, prefix)
    finally:
        libvirt.stop(started)
        _progress(f"stopped the libvirt daemons this test started: {sorted(started)}")


def destroy(env: dict[str, str]) -> None:
    t0 = time.monotonic()
    gone = vagrant(env, "destroy", "-f", timeout=600)
    assert gone.returncode == 0, gone.stderr
    _progress(f"vagrant destroy -f took {time.monotonic() - t0:.0f} s")


def assert_nothing_left(before: libvirt.Holdings, prefix: str) -> None:
    """No domain of the lab, no network or volume that was not there before, but the box's
    disk (vagrant-libvirt's cache of the box)."""
    after = libvirt.holdings()
    assert not [d for d in after.domains if d.startswith(prefix)], after.domains
    assert set(after.networks) <= set(before.networks), (before.networks, after.networks)
    new = set(after.volumes) - set(before.volumes)
    assert all(v.split("/", 1)[1].startswith(BOX_VOLUME_PREFIX) for v in new), new


def _describe(env: dict[str, str], prefix: str, nodes: int, tmp_path: Path) -> VmLab:
    """The inventory `xdpcap lab vagrant-inventory` gives, with a known_hosts of its own
    (the VMs' keys are learnt with --accept-new-host-keys, then checked)."""
    proc = subprocess.run(
        [sys.executable, "-m", "xdpcap.orchestrator", "lab", "vagrant-inventory",
         "--vagrant-dir", str(REPO)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    inventory = yaml.safe_load(proc.stdout)
    known = tmp_path / "known_hosts"
    known.touch()
    found = []
    for i, (name, host) in enumerate(inventory["vagrant"]["hosts"].items(), start=1):
        common = host.get("ansible_ssh_common_args", "")
        host["ansible_ssh_common_args"] = (
            f"{common} -o UserKnownHostsFile={shlex.quote(str(known))}"
        )
        found.append(
            Node(
                name,
                host["ansible_host"],
                f"192.168.56.{10 + i}",  # the Vagrantfile's private_network addresses
                host["ansible_user"],
                host["ansible_ssh_private_key_file"],
            )
        )
    assert [n.name for n in found] == [f"node{i}" for i in range(1, nodes + 1)]
    path = tmp_path / "vagrant.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return VmLab(found, path, env, prefix)


def wait_for_private_network(lab: VmLab, timeout: float = PRIVATE_NETWORK_WAIT_S) -> None:
    """Until every VM reaches every other over the private network. `vagrant up` returns
    once SSH answers on the management NIC; under QEMU without KVM the private NIC may be
    configured later, and a ping started before that exits at once (unreachable)."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    for node in lab.nodes:
        for other in lab.nodes:
            if other is node:
                continue
            while True:
                try:
                    lab.ssh(node, f"ping -q -c 1 -W 1 {other.private_ip} >/dev/null", timeout=30)
                    break
                except (AssertionError, subprocess.SubprocessError) as exc:
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"{node.name} cannot reach {other.name} ({other.private_ip}) "
                            f"over the private network within {timeout:.0f} s"
                        ) from exc
                    time.sleep(2)
    _progress(f"private network up in {time.monotonic() - t0:.0f} s")


@contextlib.contextmanager
def pings_between_all(lab: VmLab, seconds: float) -> Iterator[None]:
    """Every VM pings every other VM's private address, 5 per second, in the background,
    for at most `seconds`: until the block ends, which stops them. Give a run room: under
    QEMU without KVM a first compile takes a minute or more on each VM."""
    count = int(seconds * 5)
    procs = []
    for node in lab.nodes:
        targets = " ".join(n.private_ip for n in lab.nodes if n is not node)
        command = (
            f"for ip in {targets}; do sudo ping -q -c {count} -i 0.2 $ip >/dev/null & done; wait"
        )
        procs.append(
            subprocess.Popen(
                lab.ssh_argv(node, command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
        for node in lab.nodes:  # the pings outlive their SSH session: stop them there too
            with contextlib.suppress(AssertionError, subprocess.SubprocessError):
                lab.ssh(node, "sudo pkill -x ping; true", timeout=30)
