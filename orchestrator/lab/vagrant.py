"""The Vagrant lab: `vagrant ssh-config` → an Ansible inventory for the VMs of the
repository's Vagrantfile.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from .system import LabError, run

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
    if shutil.which("vagrant") is None:
        raise LabError(
            "vagrant is not installed: "
            "pass the output of `vagrant ssh-config` with --ssh-config FILE"
        )
    return run(["vagrant", "ssh-config"], timeout=timeout, cwd=vagrant_dir).stdout
