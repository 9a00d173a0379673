"""The Vagrant lab's box, built here from Debian packages (Vagrant Cloud may be out of reach).

`build_box()` makes a libvirt-provider box of Debian 12 with its own 6.1 kernel, the
matching headers, python3-bpfcc, openssh-server and sudo, and a `vagrant` user that logs
in with Vagrant's insecure key (Vagrant swaps it for a fresh key on the first `up`).

The box boots its kernel directly (vagrant-libvirt's kernel/initrd options): no
bootloader to install into a partitioned image. QEMU runs as `libvirt-qemu`, which cannot
read ~/.vagrant.d under root's 0700 home, so the kernel and initrd stay in the cache
directory (world-readable) and the box's Vagrantfile names them there.

Idempotent: the cache holds the built box under a name derived from the recipe; the box is
added to Vagrant again only if Vagrant lacks it, and rebuilt only if the recipe changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import libvirt
from .system import LabError, run, write_file

BOX_NAME = "xdpcap/bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path("/var/cache/xdpcap/vagrant-box")

# Why each package (beyond debootstrap's minbase):
#   linux-image-amd64 linux-headers-amd64  Debian 12's 6.1 kernel and headers of the same
#       version, so bcc in the VM compiles the sampler against the kernel it runs
#   initramfs-tools      the initrd that finds the virtio root disk
#   systemd-sysv dbus    an init, and hostnamectl (Vagrant sets each VM's hostname)
#   ifupdown isc-dhcp-client   eth0 by DHCP; Vagrant writes eth1's static address there
#   openssh-server sudo  Vagrant's and xdpcap's way in, and root through sudo
#   python3 python3-bpfcc iproute2   the agent and what it runs
#   iputils-ping         traffic between the VMs for the tests
PACKAGES = (
    "linux-image-amd64",
    "linux-headers-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "dbus",
    "ifupdown",
    "isc-dhcp-client",
    "openssh-server",
    "sudo",
    "python3",
    "python3-bpfcc",
    "iproute2",
    "iputils-ping",
)
DISK_GIB = 4
# The recipe's version: bump it when the files written into the image change.
RECIPE = 2

DEBOOTSTRAP_TIMEOUT = 1800.0
VAGRANT_TIMEOUT = 600.0
# quiet: every console line is a slow emulated serial write under QEMU without KVM.
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet mitigations=off"
# Jobs a throw-away lab VM never needs, each seconds of emulated CPU at boot or later.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    "getty@tty1.service",
)

# The public half of Vagrant's well-known insecure key pair, from the installed Vagrant.
_VAGRANT_KEYS = ("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",)


@dataclass(frozen=True)
class BoxPlan:
    """What to build, and where it goes."""

    cache: Path = DEFAULT_CACHE
    mirror: str = DEFAULT_MIRROR
    name: str = BOX_NAME
    packages: tuple[str, ...] = PACKAGES

    @property
    def key(self) -> str:
        """A short digest of the recipe: a changed recipe is a new cache entry."""
        # Not the mirror: any mirror of the suite gives the same box.
        text = json.dumps([RECIPE, SUITE, list(self.packages), DISK_GIB, KERNEL_CMDLINE])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def dir(self) -> Path:
        return self.cache / self.key

    @property
    def box_file(self) -> Path:
        return self.dir / "xdpcap-bookworm.box"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses (the CI's or a local one), else deb.debian.org."""
    candidates: list[str] = []
    files = sorted(sources.glob("sources.list.d/*.sources")) + sorted(
        sources.glob("sources.list.d/*.list")
    )
    files.append(sources / "sources.list")
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        candidates += re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE)
        candidates += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.MULTILINE)
    for uri in candidates:
        # The main archive, not -security (it has no full suite) nor a third-party repo.
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def vagrant_public_key() -> str:
    for pattern in _VAGRANT_KEYS:
        for path in sorted(Path("/").glob(pattern.lstrip("/"))):
            return path.read_text().strip()
    raise LabError(
        "Vagrant's insecure public key not found: is Debian's vagrant package installed?"
    )


def box_in_vagrant(name: str) -> bool:
    """True if Vagrant lists NAME for the libvirt provider."""
    out = run(["vagrant", "box", "list", "--machine-readable"], timeout=120).stdout
    # Lines: TIME,,box-name,NAME then TIME,,box-provider,PROVIDER (one pair per box).
    current = None
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) >= 4 and parts[2] == "box-name":
            current = parts[3]
        elif parts[2:4] == ["box-provider", "libvirt"] and current == name:
            return True
    return False


def build_box(plan: BoxPlan, progress: Callable[[str], None]) -> Path:
    """Build (unless cached) and add the box to Vagrant (unless there); return the box file."""
    if plan.box_file.exists():
        progress(f"box cached: {plan.box_file}")
    else:
        _build(plan, progress)
        _prune_cache(plan, progress)
    # Vagrant knows a box by name only: the stamp says which recipe it was added from.
    stamp = plan.cache / "in-vagrant"
    if box_in_vagrant(plan.name) and _read(stamp) == plan.key:
        progress(f"box {plan.name} already in Vagrant")
    else:
        progress(f"adding {plan.name} to Vagrant")
        run(
            ["vagrant", "box", "add", "--force", "--name", plan.name, str(plan.box_file)],
            timeout=VAGRANT_TIMEOUT,
        )
        write_file(stamp, plan.key)
        # vagrant-libvirt uploads a box to libvirt's pool on the next `up`, and keeps it
        # there after the box is replaced: the old upload is dead weight.
        for volume in libvirt.remove_unused_volumes(box_volume_prefix(plan.name)):
            progress(f"removed {volume}, the replaced box's disk in libvirt's pool")
    return plan.box_file


def box_volume_prefix(name: str) -> str:
    """How vagrant-libvirt names the pool volume it uploads box NAME to."""
    return name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _prune_cache(plan: BoxPlan, progress: Callable[[str], None]) -> None:
    """Boxes of earlier recipes: a gigabyte each, never used again."""
    for entry in plan.cache.iterdir():
        if entry.is_dir() and entry != plan.dir and re.fullmatch(r"[0-9a-f]{12}", entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            progress(f"removed {entry}, a box of an earlier recipe")


def _build(plan: BoxPlan, progress: Callable[[str], None]) -> None:
    for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "chroot"):
        if shutil.which(tool) is None:
            raise LabError(f"building the box needs {tool} (scripts/setup.sh installs it)")
    plan.dir.mkdir(parents=True, exist_ok=True)
    # The cache must be readable by libvirt-qemu all the way down (the kernel is read there).
    for path in (plan.dir, *plan.dir.parents):
        if path == Path("/"):
            break
        path.chmod(path.stat().st_mode | 0o055)
    work = Path(tempfile.mkdtemp(prefix="xdpcap-box-", dir=plan.dir))
    try:
        root = work / "root"
        progress(f"debootstrap {SUITE} from {plan.mirror} (a few minutes)")
        _debootstrap(root, plan)
        progress("configuring the image")
        configure_root(root, vagrant_public_key())
        _copy_boot_files(root, plan)
        progress("making the disk image")
        image = _disk_image(root, work)
        shutil.rmtree(root)  # half the disk: gone before the tar is written
        _write_box(plan, image, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"box built: {plan.box_file}")


def _debootstrap(root: Path, plan: BoxPlan) -> None:
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(plan.packages)}",
        SUITE,
        str(root),
        plan.mirror,
    ]
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEBOOTSTRAP_TIMEOUT,
        check=False,
        # No daemon may start inside the chroot while packages are configured.
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if proc.returncode != 0:
        log = root / "debootstrap" / "debootstrap.log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else proc.stderr[-2000:]
        raise LabError(f"debootstrap failed (exit {proc.returncode}):\n{detail}")


def configure_root(root: Path, public_key: str) -> None:
    """Everything a Vagrant box of Debian needs that debootstrap does not do."""
    _write(root / "etc/hostname", "xdpcap-box\n")
    _write(root / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 xdpcap-box\n::1 localhost\n")
    _write(root / "etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    # eth0 is Vagrant's management NIC (DHCP); Vagrant appends eth1's static address.
    _write(
        root / "etc/network/interfaces",
        "auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n",
    )
    # Each VM makes its own machine-id and host key at first boot: a copied image must not
    # give three hosts one identity (or one ssh host key).
    _write(root / "etc/machine-id", "")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(root / "etc/systemd/system/xdpcap-host-key.service", _HOST_KEY_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "xdpcap-host-key.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/xdpcap-host-key.service")
    # ed25519 only: an RSA key takes seconds to make under QEMU without KVM; no DNS look-up
    # of the client on each login (the VMs have no resolver for the host's address).
    _write(
        root / "etc/ssh/sshd_config.d/xdpcap.conf",
        "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n",
    )
    _small_initrd(root)
    _chroot(root, "systemctl", "mask", "--quiet", *MASKED_UNITS)
    if not (root / "home/vagrant").exists():
        _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "vagrant")
    _chroot(root, "sh", "-c", "echo vagrant:vagrant | chpasswd")
    _write(root / "etc/sudoers.d/vagrant", "vagrant ALL=(ALL) NOPASSWD: ALL\n", mode=0o440)
    ssh_dir = root / "home/vagrant/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    _write(ssh_dir / "authorized_keys", public_key + "\n", mode=0o600)
    _chroot(root, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh")
    # The image's apt state is of no use to the lab and would take a tenth of the disk.
    for cache in (root / "var/cache/apt/archives").glob("*.deb"):
        cache.unlink()
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _small_initrd(root: Path) -> None:
    """An initrd with the few modules a virtio root disk needs: Debian's default holds
    most of the kernel's drivers (36 MB), which QEMU without KVM takes a minute to unpack."""
    _write(root / "etc/initramfs-tools/conf.d/xdpcap.conf", "MODULES=list\n")
    _write(root / "etc/initramfs-tools/modules", "virtio_pci\nvirtio_blk\nvirtio_net\next4\n")
    _chroot(root, "update-initramfs", "-u", "-k", "all", timeout=600)


_HOST_KEY_UNIT = """\
[Unit]
Description=xdpcap box: this VM's own ssh host key
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, text, mode)


def _chroot(root: Path, *argv: str, timeout: float = 60.0) -> None:
    run(["chroot", str(root), *argv], timeout=timeout)


def _copy_boot_files(root: Path, plan: BoxPlan) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise LabError(f"the image has no kernel or initrd in {root / 'boot'}")
    shutil.copyfile(kernels[-1], plan.kernel)
    shutil.copyfile(initrds[-1], plan.initrd)
    for path in (plan.kernel, plan.initrd):
        path.chmod(0o644)


def _disk_image(root: Path, work: Path) -> Path:
    raw = work / "disk.raw"
    run(["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(raw), f"{DISK_GIB}G"], timeout=300)
    image = work / "box.img"
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], timeout=300)
    raw.unlink()
    return image


def box_vagrantfile(plan: BoxPlan) -> str:
    """The box's own Vagrantfile: boot the kernel from the cache, on QEMU (KVM if it works)."""
    return f"""\
# Written by `xdpcap lab vagrant-box`: the kernel and initrd are read from its cache.
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.kernel = "{plan.kernel}"
    lv.initrd = "{plan.initrd}"
    lv.cmd_line = "{KERNEL_CMDLINE}"
  end
end
"""


def _write_box(plan: BoxPlan, image: Path, work: Path) -> None:
    metadata = {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB}
    (work / "metadata.json").write_text(json.dumps(metadata))
    (work / "Vagrantfile").write_text(box_vagrantfile(plan))
    partial = plan.box_file.with_suffix(".partial")
    # Uncompressed: the qcow2 is already sparse and gzip would cost a minute each way.
    with tarfile.open(partial, "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "box.img"):
            tar.add(work / name, arcname=name)
    partial.replace(plan.box_file)
