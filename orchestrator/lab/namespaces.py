"""A lab of Linux "hosts" made of network namespaces on this machine, each with its own sshd.

Layout of a lab called NAME with N hosts and lab index X (chosen at `up`, kept in state.json):

    root namespace: bridge xcNAME-br  198.18.X.254/24  fc00:dead:cafe:X::fe/64
        veth xcNAME-1 ... xcNAME-N (bridge ports)
    namespace xdpcap-NAMEi: eth0 (peer of xcNAME-i)  198.18.X.i/24  fc00:dead:cafe:X::i/64
        sshd on port 22 of those two addresses only, key-only root login

Every kernel object name derives from NAME, so several labs coexist and `down` finds the
leftovers of a crashed `up` by name even without state.json. The addresses are in the
benchmarking range 198.18.0.0/15 (RFC 2544) and the ULA range used by xdp-tutorial's testenv.

State dir (default /var/tmp/xdpcap-lab/NAME; $XDPCAP_LAB_DIR replaces /var/tmp/xdpcap-lab):
    lab_key, lab_key.pub, known_hosts, inventory.yml, state.json,
    hosts/<host>/{sshd_config, ssh_host_ed25519_key(.pub), sshd.pid, sshd.log}

Also: `vagrant ssh-config` → Ansible inventory for the VMs of the repository's Vagrantfile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import XdpcapError


class LabError(XdpcapError):
    """The lab cannot be built, reached or removed; the message names the lab and the object."""


DEFAULT_NAME = "lab"
DEFAULT_HOSTS = 3
MAX_HOSTS = 200  # host i gets .i in a /24 whose .254 is the bridge
IFNAMSIZ = 15  # longest Linux interface name, in bytes
STATE_BASE = Path("/var/tmp/xdpcap-lab")
# The lab's hosts are this machine, whose bcc is the distribution's: name its python3
# rather than whatever `python3` a login shell finds first (a pyenv shim costs ~0.2 s
# at every start of the agent and of the clock probe).
SYSTEM_PYTHON = "/usr/bin/python3"
LOCK_PATH = Path("/run/lock/xdpcap-lab.lock")
SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
BRIDGE_HOST_NUMBER = 254
MAX_LAB_INDEX = 255
FAIL_AFTER_ENV = "XDPCAP_LAB_FAIL_AFTER"  # test hook: raise after the named step of `up`

CMD_TIMEOUT = 10.0
LOCK_TIMEOUT = 60.0
SSHD_READY_TIMEOUT = 15.0
KILL_GRACE = 3.0

STATE_FILES = ("lab_key", "lab_key.pub", "known_hosts", "inventory.yml", "state.json")
HOST_FILES = (
    "sshd_config",
    "ssh_host_ed25519_key",
    "ssh_host_ed25519_key.pub",
    "sshd.pid",
    "sshd.log",
)

# A name is lowercase letters and digits, starting and ending with a letter: since host
# numbers are appended, "lab1" + "1" and "lab" + "11" would otherwise both be "lab11".
_NAME_RE = re.compile(r"[a-z](?:[a-z0-9]*[a-z])?")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LabHost:
    """One namespace host: inventory name, namespace, addresses, root-side veth."""

    name: str
    namespace: str
    ipv4: str
    ipv6: str
    veth_root: str


# --------------------------------------------------------------------------- naming


def validate_name(name: str, hosts: int = DEFAULT_HOSTS) -> None:
    """Raise LabError unless NAME and the host count give valid, unambiguous kernel names."""
    if not _NAME_RE.fullmatch(name):
        raise LabError(
            f"lab name {name!r}: use lowercase letters and digits, "
            "starting and ending with a letter"
        )
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"lab {name}: --hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
    for ifname in (bridge_name(name), veth_name(name, hosts)):
        if len(ifname.encode()) > IFNAMSIZ:
            raise LabError(
                f"lab name {name!r} is too long: interface {ifname!r} exceeds {IFNAMSIZ} bytes"
            )


def namespace_name(name: str, number: int) -> str:
    return f"xdpcap-{name}{number}"


def bridge_name(name: str) -> str:
    return f"xc{name}-br"


def veth_name(name: str, number: int) -> str:
    return f"xc{name}-{number}"


def _namespace_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"xdpcap-{re.escape(name)}\d+")


def _link_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"xc{re.escape(name)}-(?:\d+|br)")


def lab_networks(index: int) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """The IPv4 /24 and IPv6 /64 of lab index INDEX (1..255)."""
    return (
        ipaddress.IPv4Network(f"198.18.{index}.0/24"),
        # The index is written in decimal digits so that lab 10 reads as ...:cafe:10:: and
        # 198.18.10.x alike; every value up to 255 is also a valid hex group.
        ipaddress.IPv6Network(f"fc00:dead:cafe:{index}::/64"),
    )


def plan_hosts(name: str, hosts: int, index: int) -> list[LabHost]:
    v4, v6 = lab_networks(index)
    return [
        LabHost(
            name=f"{name}{i}",
            namespace=namespace_name(name, i),
            ipv4=str(v4[i]),
            ipv6=str(v6[i]),
            veth_root=veth_name(name, i),
        )
        for i in range(1, hosts + 1)
    ]


def default_state_dir(name: str) -> Path:
    base = os.environ.get("XDPCAP_LAB_DIR")
    return (Path(base) if base else STATE_BASE) / name


# --------------------------------------------------------------------------- processes


def _run(
    argv: Sequence[str], timeout: float = CMD_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ARGV (never through a shell) with a timeout; failures become one-line LabErrors."""
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{shlex.join(argv)}` timed out after {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found") from exc
    if check and proc.returncode != 0:
        detail = _last_line(proc.stderr) or f"exit status {proc.returncode}"
        raise LabError(f"`{shlex.join(argv)}` failed: {detail}")
    return proc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _run(["ip", "-j", *args]).stdout.strip()
    # `ip -j netns list` prints nothing at all when there is no namespace.
    return json.loads(out) if out else []


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie counts as gone (it holds no namespace or port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _kill_pids(pids: Sequence[int], grace: float = KILL_GRACE) -> list[int]:
    """SIGTERM, wait up to GRACE, SIGKILL, wait again; return the pids that survived."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [pid for pid in pids if _pid_alive(pid)]
            if not pids:
                return []
            time.sleep(0.05)
    return [pid for pid in pids if _pid_alive(pid)]


@contextlib.contextmanager
def _machine_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Serialise up/down of all labs: choosing a free lab index must not race another `up`."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another lab up/down holds {LOCK_PATH}") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veths, sshd)")
    for tool in ("ip", "ssh-keygen", SSHD):
        if shutil.which(tool) is None:
            raise LabError(f"the lab needs {tool} (Debian packages iproute2, openssh-server)")


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically, so a crash never leaves half a state.json or inventory."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _keygen(path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


# --------------------------------------------------------------------------- the lab


class Lab:
    """A named lab of network-namespace hosts; `with Lab(...) as lab:` ups and always downs."""

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        hosts: int = DEFAULT_HOSTS,
        state_dir: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        validate_name(name, hosts)
        self.name = name
        self.host_count = hosts
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir(name)
        self._progress = progress or (lambda _message: None)

    # ---- paths and state

    @property
    def inventory_path(self) -> Path:
        return self.state_dir / "inventory.yml"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "lab_key"

    @property
    def known_hosts_path(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def bridge(self) -> str:
        return bridge_name(self.name)

    def host_dir(self, host: LabHost) -> Path:
        return self.state_dir / "hosts" / host.name

    @property
    def hosts(self) -> list[LabHost]:
        """The hosts of the lab as built (addresses depend on the index chosen at `up`)."""
        state = self._read_state()
        if state is None:
            raise LabError(f"lab {self.name} is not up (no {self.state_dir / 'state.json'})")
        return plan_hosts(self.name, state["hosts"], state["index"])

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"lab {self.name} has no host {name!r}")

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.state_dir / "state.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"lab {self.name}: unreadable state.json: {exc}") from exc
        if state.get("name") != self.name:
            raise LabError(f"{self.state_dir} holds lab {state.get('name')!r}, not {self.name!r}")
        return state

    def _write_state(self, index: int, complete: bool) -> None:
        state = {
            "name": self.name,
            "hosts": self.host_count,
            "index": index,
            "bridge": self.bridge,
            "namespaces": [h.namespace for h in plan_hosts(self.name, self.host_count, index)],
            "complete": complete,
        }
        _write_file(self.state_dir / "state.json", json.dumps(state, indent=2) + "\n")

    # ---- context manager

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            # __exit__ does not run when __enter__ raises: clean the half-made lab here.
            self.down()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # ---- up

    def up(self) -> Path:
        """Build the lab (or find it already up, or rebuild a broken one); return the inventory."""
        _require_root()
        with _machine_lock():
            state = self._read_state()
            problems = self._problems(state) if state is not None else []
            if state is not None and not problems:
                if state["hosts"] != self.host_count:
                    raise LabError(
                        f"lab {self.name} is up with {state['hosts']} hosts; "
                        f"run `xdpcap lab down --name {self.name}` first"
                    )
                self._progress(f"lab {self.name} is already up")
                return self.inventory_path
            if problems:
                self._progress(f"lab {self.name} is broken ({problems[0]}); rebuilding")
            if state is not None or self._leftovers():
                self._teardown()
            try:
                self._build()
            except LabError as exc:
                # What was made stays for inspection; `down` finds it by name.
                raise LabError(f"{exc} (`xdpcap lab down --name {self.name}` cleans up)") from exc
        self._progress(f"lab {self.name} is up: {self.host_count} hosts")
        return self.inventory_path

    def _build(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        index = self._free_index()
        # Written before any kernel object exists, so a crash leaves a record for `down`.
        self._write_state(index, complete=False)
        self._checkpoint("state")
        _keygen(self.key_path, f"xdpcap-lab {self.name}")
        self._create_bridge(index)
        self._checkpoint("bridge")
        hosts = plan_hosts(self.name, self.host_count, index)
        for number, host in enumerate(hosts, start=1):
            self._create_host(host)
            self._start_sshd(host)
            self._checkpoint(f"host{number}")
        deadline = time.monotonic() + SSHD_READY_TIMEOUT
        for host in hosts:
            self._wait_sshd(host, deadline)
        self._checkpoint("sshd")
        self._write_known_hosts(hosts)
        _write_file(self.inventory_path, render_yaml(self.inventory(hosts)))
        self._write_state(index, complete=True)

    def _checkpoint(self, step: str) -> None:
        if os.environ.get(FAIL_AFTER_ENV) == step:
            raise LabError(f"lab {self.name}: {FAIL_AFTER_ENV} hook: failing after step {step}")

    def _free_index(self) -> int:
        """The smallest lab index whose subnets no root-namespace address uses yet."""
        used = [
            ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
            for link in _ip_json("addr", "show")
            for a in link.get("addr_info", [])
        ]
        for index in range(1, MAX_LAB_INDEX + 1):
            nets = lab_networks(index)
            if not any(
                addr.network.version == net.version and addr.network.overlaps(net)
                for addr in used
                for net in nets
            ):
                return index
        raise LabError("no free lab index: 255 subnets of 198.18.0.0/16 are in use")

    def _create_bridge(self, index: int) -> None:
        v4, v6 = lab_networks(index)
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{v4[BRIDGE_HOST_NUMBER]}/24", "dev", self.bridge])
        # nodad: usable at once instead of after ~1 s of duplicate address detection.
        _run(
            ["ip", "-6", "addr", "add", f"{v6[BRIDGE_HOST_NUMBER]}/64", "dev", self.bridge, "nodad"]
        )
        _run(["ip", "link", "set", self.bridge, "up"])

    def _create_host(self, host: LabHost) -> None:
        ns = ["ip", "-n", host.namespace]
        _run(["ip", "netns", "add", host.namespace])
        _run(
            [
                *("ip", "link", "add", host.veth_root, "type", "veth"),
                *("peer", "name", "eth0", "netns", host.namespace),
            ]
        )
        _run(["ip", "link", "set", host.veth_root, "master", self.bridge, "up"])
        _run([*ns, "link", "set", "lo", "up"])
        _run([*ns, "addr", "add", f"{host.ipv4}/24", "dev", "eth0"])
        _run([*ns, "-6", "addr", "add", f"{host.ipv6}/64", "dev", "eth0", "nodad"])
        _run([*ns, "link", "set", "eth0", "up"])

    def _sshd_config(self, host: LabHost) -> str:
        hdir = self.host_dir(host)
        return "\n".join(
            [
                f"# xdpcap lab {self.name}, host {host.name}: written by `xdpcap lab up`",
                f"ListenAddress {host.ipv4}:{SSH_PORT}",
                f"ListenAddress [{host.ipv6}]:{SSH_PORT}",
                f"HostKey {hdir / 'ssh_host_ed25519_key'}",
                f"PidFile {hdir / 'sshd.pid'}",
                # The lab key for root; a user's own file too (the sudo tests log in as one).
                f"AuthorizedKeysFile {self.key_path}.pub .ssh/authorized_keys",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # The key lives under /var/tmp or /tmp, world-writable parents that StrictModes
                # rejects; the state dir itself is 0700.
                "StrictModes no",
                "UseDNS no",
                # Fabric uploads and fetches through SFTP; internal-sftp needs no helper path.
                "Subsystem sftp internal-sftp",
                "",
            ]
        )

    def _start_sshd(self, host: LabHost) -> None:
        hdir = self.host_dir(host)
        hdir.mkdir(parents=True, exist_ok=True)
        if not (hdir / "ssh_host_ed25519_key").exists():  # a restart keeps the host's key
            _keygen(hdir / "ssh_host_ed25519_key", f"xdpcap-lab {host.name}")
        config = hdir / "sshd_config"
        _write_file(config, self._sshd_config(host))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        # sshd daemonises (its parent exits once the ports are bound) and detaches from our pipes.
        _run(
            [
                *("ip", "netns", "exec", host.namespace, SSHD),
                *("-f", str(config), "-E", str(hdir / "sshd.log")),
            ]
        )

    def _wait_sshd(self, host: LabHost, deadline: float) -> None:
        """Poll until sshd sends its banner on the host's IPv4 address, bounded by DEADLINE."""
        while True:
            try:
                with socket.create_connection((host.ipv4, SSH_PORT), timeout=0.5) as sock:
                    sock.settimeout(0.5)
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                log = _last_line(_read_text(self.host_dir(host) / "sshd.log"))
                raise LabError(
                    f"lab {self.name}: sshd on {host.name} ({host.ipv4}) not answering"
                    + (f": {log}" if log else "")
                )
            time.sleep(0.05)

    def _write_known_hosts(self, hosts: Sequence[LabHost]) -> None:
        lines = []
        for host in hosts:
            pub = (self.host_dir(host) / "ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"{host.ipv4},{host.ipv6} {pub[0]} {pub[1]}\n")
        _write_file(self.known_hosts_path, "".join(lines))

    def inventory(self, hosts: Sequence[LabHost] | None = None) -> dict[str, Any]:
        """The lab as an Ansible YAML inventory (a dict ready for yaml.safe_dump)."""
        hosts = self.hosts if hosts is None else hosts
        common_args = shlex.join(
            [
                "-o",
                f"UserKnownHostsFile={self.known_hosts_path}",
                "-o",
                "StrictHostKeyChecking=yes",
            ]
        )
        return {
            "lab": {
                "hosts": {
                    host.name: {
                        "ansible_host": host.ipv4,
                        "ansible_user": "root",
                        "ansible_ssh_private_key_file": str(self.key_path),
                        "ansible_ssh_common_args": common_args,
                        "ansible_python_interpreter": SYSTEM_PYTHON,
                        "xdpcap_iface": "eth0",
                    }
                    for host in hosts
                }
            }
        }

    # ---- state of the kernel objects

    def _leftovers(self) -> list[str]:
        """Namespaces and links of this lab that exist now, found by name."""
        ns_re, link_re = _namespace_re(self.name), _link_re(self.name)
        found = [n["name"] for n in _ip_json("netns", "list") if ns_re.fullmatch(n["name"])]
        found += [
            ln["ifname"] for ln in _ip_json("link", "show") if link_re.fullmatch(ln["ifname"])
        ]
        return found

    def start_sshd(self, name: str, timeout: float = 15.0) -> None:
        """Start host NAME's sshd again (fault tests stop it) and wait until it answers."""
        host = self.host(name)
        if self._sshd_pid(host) is None:
            self._start_sshd(host)
        self._wait_sshd(host, time.monotonic() + timeout)

    def sshd_pid(self, name: str) -> int | None:
        """The pid of host NAME's sshd, if it runs (tests stop it to make a host unreachable)."""
        return self._sshd_pid(self.host(name))

    def _sshd_pid(self, host: LabHost) -> int | None:
        """The pid in the host's PidFile if that process is alive and is our sshd."""
        hdir = self.host_dir(host)
        try:
            pid = int((hdir / "sshd.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") + b" "
        except (OSError, ValueError):
            return None
        # A recycled pid belongs to some other program: only ours names our config file.
        # (sshd rewrites its argv into one title string, so search the text, not the words.)
        if f"-f {hdir / 'sshd_config'} ".encode() not in cmdline or not _pid_alive(pid):
            return None
        return pid

    def _problems(self, state: dict[str, Any]) -> list[str]:
        if not state.get("complete"):
            return ["a previous `up` did not finish"]
        hosts = plan_hosts(self.name, state["hosts"], state["index"])
        present = set(self._leftovers())
        problems = [f"{obj} missing" for obj in [self.bridge] if obj not in present]
        for host in hosts:
            problems += [
                f"{obj} missing" for obj in (host.namespace, host.veth_root) if obj not in present
            ]
            if self._sshd_pid(host) is None:
                problems.append(f"sshd of {host.name} not running")
        for path in (self.key_path, self.known_hosts_path, self.inventory_path):
            if not path.exists():
                problems.append(f"{path} missing")
        return problems

    def status(self) -> dict[str, Any]:
        """What exists now: up or not, each host's namespace, sshd and addresses, leftovers."""
        state = self._read_state()
        present = set(self._leftovers()) if os.geteuid() == 0 else set()
        report: dict[str, Any] = {
            "name": self.name,
            "state_dir": str(self.state_dir),
            "up": False,
            "inventory": None,
            "bridge": {"name": self.bridge, "exists": self.bridge in present},
            "hosts": [],
            "leftovers": sorted(present),
            "problems": [],
        }
        if state is None:
            report["problems"] = ["not up"] if not present else ["leftovers of an unfinished up"]
            return report
        hosts = plan_hosts(self.name, state["hosts"], state["index"])
        for host in hosts:
            pid = self._sshd_pid(host)
            report["hosts"].append(
                {
                    "name": host.name,
                    "namespace": host.namespace,
                    "exists": host.namespace in present,
                    "ipv4": host.ipv4,
                    "ipv6": host.ipv6,
                    "veth_root": host.veth_root,
                    "sshd_pid": pid,
                    "sshd_alive": pid is not None,
                }
            )
        known = {self.bridge} | {h.namespace for h in hosts} | {h.veth_root for h in hosts}
        report["leftovers"] = sorted(present - known)
        report["index"] = state["index"]
        report["problems"] = self._problems(state)
        report["up"] = not report["problems"]
        report["inventory"] = str(self.inventory_path) if report["up"] else None
        return report

    def require_up(self) -> list[LabHost]:
        state = self._read_state()
        if state is None:
            raise LabError(f"lab {self.name} is not up; run `xdpcap lab up --name {self.name}`")
        problems = self._problems(state)
        if problems:
            raise LabError(
                f"lab {self.name} is broken ({problems[0]}); "
                f"`xdpcap lab up --name {self.name}` rebuilds it"
            )
        return self.hosts

    # ---- down

    def down(self) -> None:
        """Remove everything `up` made, also after a crash: objects are found by name too."""
        _require_root()
        with _machine_lock():
            self._teardown()
        self._progress(f"lab {self.name} is down")

    def _teardown(self) -> None:
        failures: list[str] = []
        state = None
        with contextlib.suppress(LabError):
            state = self._read_state()
        planned = plan_hosts(self.name, state["hosts"], state["index"]) if state else []
        # sshd first by its PidFile: it may outlive its namespace's name (e.g. `ip netns del`).
        for host in self._state_host_dirs(planned):
            pid = self._sshd_pid(host)
            if pid is not None:
                failures += [f"sshd pid {p}" for p in _kill_pids([pid])]
        ns_re, link_re = _namespace_re(self.name), _link_re(self.name)
        namespaces = {h.namespace for h in planned}
        namespaces |= {n["name"] for n in _ip_json("netns", "list") if ns_re.fullmatch(n["name"])}
        for ns in sorted(namespaces):
            failures += self._empty_namespace(ns)
        # Root-side links before the namespaces: deleting a namespace frees its veths
        # asynchronously, deleting the root end removes both ends at once.
        links = [ln["ifname"] for ln in _ip_json("link", "show") if link_re.fullmatch(ln["ifname"])]
        for link in sorted(links, key=lambda name: name.endswith("-br")):  # bridge last
            if _run(["ip", "link", "del", link], check=False).returncode != 0:
                failures.append(link)
        for ns in sorted(namespaces):
            if Path("/run/netns", ns).exists():
                proc = _run(["ip", "netns", "del", ns], check=False)
                if proc.returncode != 0:
                    failures.append(f"{ns} ({_last_line(proc.stderr)})")
        failures += self._remove_files()
        if failures:
            raise LabError(f"lab {self.name}: could not remove {', '.join(failures)}")

    def _state_host_dirs(self, planned: Sequence[LabHost]) -> list[LabHost]:
        """Planned hosts plus any host dir on disk (a state.json may be missing or stale)."""
        hosts = {h.name: h for h in planned}
        hosts_dir = self.state_dir / "hosts"
        if hosts_dir.is_dir():
            for path in hosts_dir.iterdir():
                hosts.setdefault(path.name, LabHost(path.name, "", "", "", ""))
        return list(hosts.values())

    def _empty_namespace(self, ns: str) -> list[str]:
        """Kill every process inside namespace NS; return what could not be killed."""
        proc = _run(["ip", "netns", "pids", ns], check=False)
        pids = [int(p) for p in proc.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        return [f"pid {pid} in {ns}" for pid in _kill_pids(pids)]

    def _remove_files(self) -> list[str]:
        """Remove the files `up` writes (by their known names, never a whole tree)."""
        failures: list[str] = []
        candidates = [self.state_dir / f for f in STATE_FILES]
        candidates += [self.state_dir / (f + ".tmp") for f in STATE_FILES]
        hosts_dir = self.state_dir / "hosts"
        host_dirs = sorted(hosts_dir.iterdir()) if hosts_dir.is_dir() else []
        for hdir in host_dirs:
            candidates += [hdir / f for f in HOST_FILES]
            candidates += [hdir / (f + ".tmp") for f in HOST_FILES]
        for path in candidates:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                failures.append(f"{path} ({exc.strerror})")
        for directory in [*host_dirs, hosts_dir, self.state_dir]:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                # A file we did not write stays, and so does its folder: say so, delete nothing.
                if exc.errno == errno.ENOTEMPTY:
                    self._progress(f"kept {directory}: it holds files the lab did not write")
                else:
                    failures.append(f"{directory} ({exc.strerror})")
        return failures

    # ---- running things inside the hosts

    def run_in(
        self, host: LabHost | str, argv: Sequence[str], timeout: float = CMD_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run ARGV inside HOST's namespace; returns the result whatever the exit status."""
        target = self.host(host) if isinstance(host, str) else host
        return _run(["ip", "netns", "exec", target.namespace, *argv], timeout=timeout, check=False)

    def traffic(self, seconds: float = 3.0) -> dict[str, Any]:
        """Ping (IPv4 and IPv6) and exchange TCP and UDP between every pair of hosts.

        Runs for about SECONDS (at least one round). Returns counts per pair; raises LabError
        naming the pairs where a kind of traffic never got through.
        """
        hosts = self.require_up()
        if shutil.which("ping") is None:
            raise LabError("lab traffic needs ping (Debian package iputils-ping)")
        seconds = max(0.0, float(seconds))
        with _Processes() as procs:
            ports = {h.name: self._start_echo_server(procs, h, seconds + 10.0) for h in hosts}
            clients = {}
            pings = {}
            for src in hosts:
                peers = [p for p in hosts if p.name != src.name]
                if not peers:
                    continue
                targets = [f"{addr},{ports[p.name]}" for p in peers for addr in (p.ipv4, p.ipv6)]
                clients[src.name] = procs.start(
                    src, [sys.executable, "-I", "-c", _ECHO_CLIENT, f"{seconds:g}", *targets]
                )
                for peer in peers:
                    for addr in (peer.ipv4, peer.ipv6):
                        pings[(src.name, peer.name, addr)] = procs.start(
                            src, _ping_argv(addr, seconds)
                        )
            deadline = time.monotonic() + seconds + 15.0
            return self._traffic_report(procs, clients, pings, deadline)

    def _start_echo_server(self, procs: _Processes, host: LabHost, lifetime: float) -> int:
        proc = procs.start(host, [sys.executable, "-I", "-c", _ECHO_SERVER, f"{lifetime:g}"])
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], CMD_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise LabError(f"lab {self.name}: echo server on {host.name} did not start")
        return int(line)

    def _traffic_report(
        self,
        procs: _Processes,
        clients: dict[str, subprocess.Popen[str]],
        pings: dict[tuple[str, str, str], subprocess.Popen[str]],
        deadline: float,
    ) -> dict[str, Any]:
        report: dict[str, Any] = {"ping": {}, "tcp": {}, "udp": {}}
        failed: list[str] = []
        for (src, dst, addr), proc in pings.items():
            ok = procs.wait(proc, deadline) == 0
            report["ping"][f"{src}->{dst} {addr}"] = ok
            if not ok:
                failed.append(f"ping {src}->{addr}")
        for src, proc in clients.items():
            procs.wait(proc, deadline)
            assert proc.stdout is not None
            try:
                counts = json.loads(proc.stdout.read() or "{}")
            except ValueError:
                counts = {}
            for kind in ("tcp", "udp"):
                for addr, n in counts.get(kind, {}).items():
                    report[kind][f"{src}->{addr}"] = n
                    if n == 0:
                        failed.append(f"{kind} {src}->{addr}")
            if not counts:
                failed.append(f"tcp/udp client on {src}")
        if failed:
            raise LabError(f"lab {self.name}: no traffic got through: {', '.join(failed)}")
        return report


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _ping_argv(addr: str, seconds: float) -> list[str]:
    count = max(1, int(seconds / 0.2))
    deadline = math.ceil(seconds) + 2  # ping's own bound: it exits after this many seconds
    return ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-w", str(deadline), addr]


class _Processes:
    """Processes started inside namespaces; every one is killed and reaped on exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> _Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_GRACE)
            if proc.stdout is not None:
                proc.stdout.close()

    def start(self, host: LabHost, argv: Sequence[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._procs.append(proc)
        return proc

    @staticmethod
    def wait(proc: subprocess.Popen[str], deadline: float) -> int | None:
        try:
            return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            return None


# Echo server run inside a host: TCP and UDP on one port, IPv4 and IPv6 on one dual-stack
# socket each; prints the port, then serves until its own deadline (argv[1] seconds).
_ECHO_SERVER = """
import select, socket, sys, time
end = time.monotonic() + float(sys.argv[1])
def sock(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return s
tcp = sock(socket.SOCK_STREAM)
tcp.bind(("::", 0))
tcp.listen(64)
port = tcp.getsockname()[1]
udp = sock(socket.SOCK_DGRAM)
udp.bind(("::", port))
print(port, flush=True)
while time.monotonic() < end:
    ready, _, _ = select.select([tcp, udp], [], [], 0.2)
    if udp in ready:
        data, peer = udp.recvfrom(2048)
        udp.sendto(data, peer)
    if tcp in ready:
        conn, _ = tcp.accept()
        with conn:
            conn.settimeout(1)
            try:
                conn.sendall(conn.recv(2048))
            except OSError:
                pass
"""

# Echo client: one TCP connection and one UDP datagram to each "addr,port" per round, rounds
# until argv[1] seconds have passed (at least one); prints {"tcp": {addr: n}, "udp": {...}}.
_ECHO_CLIENT = """
import json, socket, sys, time
end = time.monotonic() + float(sys.argv[1])
targets = [(a, int(p)) for a, p in (t.rsplit(",", 1) for t in sys.argv[2:])]
counts = {"tcp": {a: 0 for a, _ in targets}, "udp": {a: 0 for a, _ in targets}}
payload = b"xdpcap lab traffic"
while True:
    for addr, port in targets:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            with socket.create_connection((addr, port), timeout=1) as s:
                s.sendall(payload)
                counts["tcp"][addr] += s.recv(2048) == payload
        except OSError:
            pass
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(1)
                s.sendto(payload, (addr, port))
                counts["udp"][addr] += s.recv(2048) == payload
        except OSError:
            pass
    if time.monotonic() >= end:
        break
    time.sleep(0.2)
print(json.dumps(counts))
"""


# --------------------------------------------------------------------------- vagrant


# "Keyword value", "Keyword=value" or "Keyword = value", as ssh_config(5) allows.
_SSH_CONFIG_LINE = re.compile(r"([A-Za-z]+)\s*(?:=|\s)\s*(.*)")


def parse_ssh_config(text: str) -> list[dict[str, list[str]]]:
    """Parse `ssh -G`-style / `vagrant ssh-config` text into one dict per Host block.

    Keys are lower-cased (ssh keywords are case-insensitive); values keep every occurrence
    in order (IdentityFile may repeat). "Host" holds the host's patterns.
    """
    blocks: list[dict[str, list[str]]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SSH_CONFIG_LINE.fullmatch(line)
        if match is None:
            raise LabError(f"ssh-config line {lineno}: cannot read {line!r}")
        key, value = match.group(1).lower(), match.group(2)
        try:
            words = shlex.split(value)  # vagrant quotes paths with spaces: "/a b/private_key"
        except ValueError as exc:
            raise LabError(f"ssh-config line {lineno}: {exc}") from exc
        if key == "host":
            blocks.append({"host": words})
        elif key == "match":
            blocks.append({"host": []})  # a Match block names no host: ignored below
        elif not blocks:
            raise LabError(f"ssh-config line {lineno}: {key!r} before any Host line")
        else:
            blocks[-1].setdefault(key, []).append(" ".join(words))
    return blocks


def vagrant_inventory(ssh_config: str) -> dict[str, Any]:
    """An Ansible YAML inventory (group `vagrant`) equivalent to `vagrant ssh-config` output."""
    hosts: dict[str, dict[str, Any]] = {}
    for block in parse_ssh_config(ssh_config):
        names = [n for n in block["host"] if not any(c in n for c in "*?!")]
        if not names:
            continue
        host_vars: dict[str, Any] = {"ansible_host": _first(block, "hostname", names[0])}
        if "port" in block:
            try:
                host_vars["ansible_port"] = int(block["port"][0])
            except ValueError:
                raise LabError(
                    f"ssh-config host {names[0]}: bad Port {block['port'][0]!r}"
                ) from None
        if "user" in block:
            host_vars["ansible_user"] = block["user"][0]
        if "identityfile" in block:
            host_vars["ansible_ssh_private_key_file"] = block["identityfile"][0]
        # Vagrant writes `UserKnownHostsFile /dev/null` and `StrictHostKeyChecking no`:
        # no host key is ever checked. Those two are not carried over: the VMs' keys
        # are learnt once with --accept-new-host-keys, then checked like any host's.
        known = block.get("userknownhostsfile", [""])[0]
        options = [f"-o UserKnownHostsFile={shlex.quote(known)}"] if _is_real_file(known) else []
        if "identitiesonly" in block:
            options.append(f"-o IdentitiesOnly={shlex.quote(block['identitiesonly'][0])}")
        if options:
            host_vars["ansible_ssh_common_args"] = " ".join(options)
        for name in names:
            hosts[name] = dict(host_vars)
    if not hosts:
        raise LabError("no Host entries in the ssh-config (is any Vagrant VM running?)")
    # eth1 is the private_network interface of the Vagrantfile; eth0 is Vagrant's NAT.
    return {"vagrant": {"hosts": hosts, "vars": {"ansible_become": True, "xdpcap_iface": "eth1"}}}


def _is_real_file(known_hosts: str) -> bool:
    return bool(known_hosts) and known_hosts not in ("/dev/null", "none")


def _first(block: dict[str, list[str]], key: str, default: str) -> str:
    return block[key][0] if key in block else default


def read_vagrant_ssh_config(vagrant_dir: Path | None = None, timeout: float = 120.0) -> str:
    """Run `vagrant ssh-config` (in VAGRANT_DIR); LabError if vagrant is missing or fails."""
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        raise LabError(
            "vagrant is not installed: "
            "pass the output of `vagrant ssh-config` with --ssh-config FILE"
        )
    try:
        proc = subprocess.run(
            [vagrant, "ssh-config"],
            cwd=vagrant_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`vagrant ssh-config` timed out after {timeout:g} s") from exc
    if proc.returncode != 0:
        raise LabError(f"`vagrant ssh-config` failed: {_last_line(proc.stderr) or proc.returncode}")
    return proc.stdout


def render_yaml(inventory: dict[str, Any]) -> str:
    return yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)
