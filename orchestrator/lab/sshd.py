"""Each lab host's own sshd: its host key, its config, its start inside the namespace, the
wait for its banner, and its pid (found through its PidFile, checked against /proc).

Its files are in the host's folder of the state dir (HDIR below): sshd_config,
ssh_host_ed25519_key(.pub), sshd.pid, sshd.log.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from .plan import LabHost
from .system import LabError, last_line, pid_alive, read_text, run, write_file

SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
SSHD_READY_TIMEOUT = 15.0


def keygen(path: Path, comment: str) -> None:
    """A new passphrase-less ed25519 key pair at PATH and PATH.pub, replacing any old one."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def config_text(lab_name: str, host: LabHost, hdir: Path, key_path: Path) -> str:
    """The sshd_config of HOST: its two addresses only, key-only root login with KEY_PATH."""
    return "\n".join(
        [
            f"# xdpcap lab {lab_name}, host {host.name}: written by `xdpcap lab up`",
            f"ListenAddress {host.ipv4}:{SSH_PORT}",
            f"ListenAddress [{host.ipv6}]:{SSH_PORT}",
            f"HostKey {hdir / 'ssh_host_ed25519_key'}",
            f"PidFile {hdir / 'sshd.pid'}",
            # The lab key for root; a user's own file too (the sudo tests log in as one).
            f"AuthorizedKeysFile {key_path}.pub .ssh/authorized_keys",
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


def start(lab_name: str, host: LabHost, hdir: Path, key_path: Path) -> None:
    """Write HOST's config (and host key, once) into HDIR and start its sshd in its namespace."""
    hdir.mkdir(parents=True, exist_ok=True)
    if not (hdir / "ssh_host_ed25519_key").exists():  # a restart keeps the host's key
        keygen(hdir / "ssh_host_ed25519_key", f"xdpcap-lab {host.name}")
    config = hdir / "sshd_config"
    write_file(config, config_text(lab_name, host, hdir, key_path))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    # sshd daemonises (its parent exits once the ports are bound) and detaches from our pipes.
    run(
        [
            *("ip", "netns", "exec", host.namespace, SSHD),
            *("-f", str(config), "-E", str(hdir / "sshd.log")),
        ]
    )


def wait_ready(lab_name: str, host: LabHost, hdir: Path, deadline: float) -> None:
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
            log = last_line(read_text(hdir / "sshd.log"))
            raise LabError(
                f"lab {lab_name}: sshd on {host.name} ({host.ipv4}) not answering"
                + (f": {log}" if log else "")
            )
        time.sleep(0.05)


def known_hosts_line(host: LabHost, hdir: Path) -> str:
    """HOST's line of the lab's known_hosts: both its addresses and its sshd's host key."""
    pub = (hdir / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{host.ipv4},{host.ipv6} {pub[0]} {pub[1]}\n"


def running_pid(hdir: Path) -> int | None:
    """The pid in the host's PidFile if that process is alive and is our sshd."""
    try:
        pid = int((hdir / "sshd.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") + b" "
    except (OSError, ValueError):
        return None
    # A recycled pid belongs to some other program: only ours names our config file.
    # (sshd rewrites its argv into one title string, so search the text, not the words.)
    if f"-f {hdir / 'sshd_config'} ".encode() not in cmdline or not pid_alive(pid):
        return None
    return pid
