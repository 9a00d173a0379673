"""The EPB comments that say which process sent or received a packet, in ptcpdump's
format (one opt_comment per group of lines, "Key: value" per line), so Wireshark's
frame.comment and `ptcpdump -r` read them; and what a cgroup path says about its
container or systemd unit."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

OPT_COMMENT = 1
ARGS_MAX = 256  # longer command lines are cut, marked with "..." as ptcpdump does


@dataclass(frozen=True)
class Container:
    """What a cgroup path names: a container runtime's scope, or a systemd unit."""

    id: str
    runtime: str  # docker, containerd, cri-o, podman, systemd


# A container's cgroup, as each runtime (and its cgroup driver) names it; the id is the
# 64 hex digits. Searched from the deepest component up: the container's own scope wins
# over the slice it sits in.
_CONTAINER_PATTERNS = (
    (re.compile(r"^docker-([0-9a-f]{64})\.scope$"), "docker"),
    (re.compile(r"^cri-containerd-([0-9a-f]{64})\.scope$"), "containerd"),
    (re.compile(r"^crio-([0-9a-f]{64})\.scope$"), "cri-o"),
    (re.compile(r"^libpod-([0-9a-f]{64})\.scope$"), "podman"),
    (re.compile(r"^([0-9a-f]{64})$"), ""),  # cgroupfs driver: /docker/<id>, /kubepods/.../<id>
)
_PARENT_RUNTIME = {"docker": "docker", "libpod_parent": "podman", "kubepods": "containerd"}


def container_of_cgroup(path: str) -> Container | None:
    """The container (or systemd service) a cgroup v2 path belongs to, else None.

    >>> container_of_cgroup("/system.slice/docker-" + "a" * 64 + ".scope").runtime
    'docker'
    """
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts) - 1, -1, -1):
        for pattern, runtime in _CONTAINER_PATTERNS:
            match = pattern.match(parts[depth])
            if match:
                parent = parts[0] if depth else ""
                return Container(match.group(1), runtime or _PARENT_RUNTIME.get(parent, "docker"))
    for part in reversed(parts):
        if part.endswith(".service"):
            return Container(part, "systemd")
    return None


def process_comment(pid: int, cmd: str, args: list[str]) -> str:
    """ptcpdump's process comment: "PID: N\\nCmd: PATH\\nArgs: ARGS"."""
    # One line per key: a newline inside an argument (`python -c "..."`) would start a
    # line readers take for another key.
    text = " ".join(args).replace("\r", " ").replace("\n", " ")
    if len(text) > ARGS_MAX:
        text = text[:ARGS_MAX] + "..."
    return f"PID: {pid}\nCmd: {cmd}\nArgs: {text}"


def container_comment(name: str, container_id: str) -> str:
    """ptcpdump's container comment (the lines it has for us: no image, no labels)."""
    return f"ContainerName: {name}\nContainerId: {container_id}"


def cgroup_comment(path: str) -> str:
    """The process's cgroup, for any cgroup but the root (readers ignore unknown keys)."""
    return f"Cgroup: {path}"


def comment_options(comments: list[str]) -> bytes:
    """The opt_comment options of an EPB, encoded and padded (no end-of-options)."""
    out = []
    for text in comments:
        value = text.encode("utf-8", "replace")[:65535]
        out.append(struct.pack("<HH", OPT_COMMENT, len(value)) + value + b"\0" * (-len(value) % 4))
    return b"".join(out)
