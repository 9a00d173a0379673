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

The lab's plan (names, subnets, hosts) is in plan.py, each host's sshd in sshd.py, its
traffic in traffic.py, the helpers it shares with them in system.py.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import sshd
from .plan import (
    BRIDGE_HOST_NUMBER,
    DEFAULT_HOSTS,
    DEFAULT_NAME,
    MAX_LAB_INDEX,
    LabHost,
    bridge_name,
    default_state_dir,
    lab_networks,
    link_pattern,
    namespace_pattern,
    plan_hosts,
    validate_name,
)
from .system import (
    CMD_TIMEOUT,
    LabError,
    ip_json,
    kill_pids,
    last_line,
    machine_lock,
    render_yaml,
    run,
    write_file,
)
from .traffic import run_traffic

# The lab's hosts are this machine, whose bcc is the distribution's: name its python3
# rather than whatever `python3` a login shell finds first (a pyenv shim costs ~0.2 s
# at every start of the agent and of the clock probe).
SYSTEM_PYTHON = "/usr/bin/python3"
FAIL_AFTER_ENV = "XDPCAP_LAB_FAIL_AFTER"  # test hook: raise after the named step of `up`

STATE_FILES = ("lab_key", "lab_key.pub", "known_hosts", "inventory.yml", "state.json")
HOST_FILES = (
    "sshd_config",
    "ssh_host_ed25519_key",
    "ssh_host_ed25519_key.pub",
    "sshd.pid",
    "sshd.log",
)

Progress = Callable[[str], None]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veths, sshd)")
    for tool in ("ip", "ssh-keygen", sshd.SSHD):
        if shutil.which(tool) is None:
            raise LabError(f"the lab needs {tool} (Debian packages iproute2, openssh-server)")


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
        write_file(self.state_dir / "state.json", json.dumps(state, indent=2) + "\n")

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
        with machine_lock():
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
        sshd.keygen(self.key_path, f"xdpcap-lab {self.name}")
        self._create_bridge(index)
        self._checkpoint("bridge")
        hosts = plan_hosts(self.name, self.host_count, index)
        for number, host in enumerate(hosts, start=1):
            self._create_host(host)
            self._start_sshd(host)
            self._checkpoint(f"host{number}")
        deadline = time.monotonic() + sshd.SSHD_READY_TIMEOUT
        for host in hosts:
            self._wait_sshd(host, deadline)
        self._checkpoint("sshd")
        lines = [sshd.known_hosts_line(host, self.host_dir(host)) for host in hosts]
        write_file(self.known_hosts_path, "".join(lines))
        write_file(self.inventory_path, render_yaml(self.inventory(hosts)))
        self._write_state(index, complete=True)

    def _checkpoint(self, step: str) -> None:
        if os.environ.get(FAIL_AFTER_ENV) == step:
            raise LabError(f"lab {self.name}: {FAIL_AFTER_ENV} hook: failing after step {step}")

    def _free_index(self) -> int:
        """The smallest lab index whose subnets no root-namespace address uses yet."""
        used = [
            ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
            for link in ip_json("addr", "show")
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
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{v4[BRIDGE_HOST_NUMBER]}/24", "dev", self.bridge])
        # nodad: usable at once instead of after ~1 s of duplicate address detection.
        run(
            ["ip", "-6", "addr", "add", f"{v6[BRIDGE_HOST_NUMBER]}/64", "dev", self.bridge, "nodad"]
        )
        run(["ip", "link", "set", self.bridge, "up"])

    def _create_host(self, host: LabHost) -> None:
        ns = ["ip", "-n", host.namespace]
        run(["ip", "netns", "add", host.namespace])
        run(
            [
                *("ip", "link", "add", host.veth_root, "type", "veth"),
                *("peer", "name", "eth0", "netns", host.namespace),
            ]
        )
        run(["ip", "link", "set", host.veth_root, "master", self.bridge, "up"])
        run([*ns, "link", "set", "lo", "up"])
        run([*ns, "addr", "add", f"{host.ipv4}/24", "dev", "eth0"])
        run([*ns, "-6", "addr", "add", f"{host.ipv6}/64", "dev", "eth0", "nodad"])
        run([*ns, "link", "set", "eth0", "up"])

    def _start_sshd(self, host: LabHost) -> None:
        sshd.start(self.name, host, self.host_dir(host), self.key_path)

    def _wait_sshd(self, host: LabHost, deadline: float) -> None:
        """Poll until sshd sends its banner on the host's IPv4 address, bounded by DEADLINE."""
        sshd.wait_ready(self.name, host, self.host_dir(host), deadline)

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
        ns_re, link_re = namespace_pattern(self.name), link_pattern(self.name)
        found = [n["name"] for n in ip_json("netns", "list") if ns_re.fullmatch(n["name"])]
        found += [ln["ifname"] for ln in ip_json("link", "show") if link_re.fullmatch(ln["ifname"])]
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
        return sshd.running_pid(self.host_dir(host))

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
        with machine_lock():
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
                failures += [f"sshd pid {p}" for p in kill_pids([pid])]
        ns_re, link_re = namespace_pattern(self.name), link_pattern(self.name)
        namespaces = {h.namespace for h in planned}
        namespaces |= {n["name"] for n in ip_json("netns", "list") if ns_re.fullmatch(n["name"])}
        for ns in sorted(namespaces):
            failures += self._empty_namespace(ns)
        # Root-side links before the namespaces: deleting a namespace frees its veths
        # asynchronously, deleting the root end removes both ends at once.
        links = [ln["ifname"] for ln in ip_json("link", "show") if link_re.fullmatch(ln["ifname"])]
        for link in sorted(links, key=lambda name: name.endswith("-br")):  # bridge last
            if run(["ip", "link", "del", link], check=False).returncode != 0:
                failures.append(link)
        for ns in sorted(namespaces):
            if Path("/run/netns", ns).exists():
                proc = run(["ip", "netns", "del", ns], check=False)
                if proc.returncode != 0:
                    failures.append(f"{ns} ({last_line(proc.stderr)})")
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
        proc = run(["ip", "netns", "pids", ns], check=False)
        pids = [int(p) for p in proc.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        return [f"pid {pid} in {ns}" for pid in kill_pids(pids)]

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
        return run(["ip", "netns", "exec", target.namespace, *argv], timeout=timeout, check=False)

    def traffic(self, seconds: float = 3.0) -> dict[str, Any]:
        """Ping (IPv4 and IPv6) and exchange TCP and UDP between every pair of hosts.

        Runs for about SECONDS (at least one round). Returns counts per pair; raises LabError
        naming the pairs where a kind of traffic never got through.
        """
        return run_traffic(self, seconds)
