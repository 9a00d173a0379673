"""--pid, --comm and --container: which processes' packets a capture keeps, decided in
the kernel before the copy (a packet of another process counts as filtered out).

PIDs are the host's: the initial PID namespace's numbers, as `ps` on the host shows them
(bpf_get_current_pid_tgid() reports those whatever namespace the process is in). A
process inside a container is selected by its host PID, or by --container.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import contract
from ..errors import UsageError
from ..validate import COMM_LEN
from .procinfo import cgroup2_mount

DOCKER_CONTAINERS = Path("/var/lib/docker/containers")
PODMAN_CONTAINERS = Path("/var/lib/containers/storage/overlay-containers/containers.json")
MAX_CGROUPS = 1024  # select_cgroups' size


@dataclass(frozen=True)
class Selection:
    pid: int | None = None
    comm: str | None = None
    container: str | None = None  # a container id (or its prefix), name, unit or cgroup path

    def __bool__(self) -> bool:
        return self.pid is not None or bool(self.comm) or bool(self.container)

    def flags(self) -> int:
        return (
            (contract.SELECT_PID if self.pid is not None else 0)
            | (contract.SELECT_COMM if self.comm else 0)
            | (contract.SELECT_CGROUP if self.container else 0)
        )

    def comm_bytes(self) -> bytes:
        """The name as the kernel compares it: 15 bytes at most, NUL-padded to 16."""
        return (self.comm or "").encode()[:COMM_LEN].ljust(16, b"\0")

    def describe(self) -> str:
        parts = []
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.comm:
            parts.append(f"comm {self.comm!r}")
        if self.container:
            parts.append(f"container {self.container!r}")
        return ", ".join(parts)


def container_cgroup_ids(container: str, root: Path | None = None) -> list[int]:
    """The cgroup ids of `container` and every cgroup below it.

    `container`: a cgroup path ("/my.slice/x"), a systemd unit ("nginx.service"), a
    container id or its prefix (12+ hex digits), or a docker/podman container name (read
    from the runtime's state files: no runtime API is needed). UsageError if none match.
    """
    root = root or cgroup2_mount()
    if root is None:
        raise UsageError(f"--container {container!r}: this host has no cgroup v2 hierarchy")
    wanted = _container_ids(container)
    ids: list[int] = []
    if container.startswith("/"):
        tops = [root / container.lstrip("/")] if (root / container.lstrip("/")).is_dir() else []
    else:
        tops = []
        for folder, subfolders, _files in os.walk(root):
            for name in subfolders:
                if name == container or any(w in name for w in wanted):
                    tops.append(Path(folder) / name)
    for top in tops:
        for folder, _subfolders, _files in os.walk(top):
            ids.append(os.stat(folder).st_ino)
    if not ids:
        raise UsageError(f"--container {container!r}: no cgroup under {root} matches")
    return ids[:MAX_CGROUPS]


def _container_ids(container: str) -> set[str]:
    """Ids `container` may stand for: itself if it looks like an id, and any docker or
    podman container of that name."""
    ids = set()
    if len(container) >= 12 and all(c in "0123456789abcdef" for c in container):
        ids.add(container)
    ids.update(_docker_ids_named(container))
    ids.update(_podman_ids_named(container))
    return ids


def _docker_ids_named(name: str) -> set[str]:
    found = set()
    try:
        entries = list(DOCKER_CONTAINERS.iterdir())
    except OSError:
        return found
    for entry in entries:
        try:
            config = json.loads((entry / "config.v2.json").read_text())
        except (OSError, ValueError):
            continue
        if config.get("Name", "").lstrip("/") == name:
            found.add(entry.name)
    return found


def _podman_ids_named(name: str) -> set[str]:
    try:
        containers = json.loads(PODMAN_CONTAINERS.read_text())
    except (OSError, ValueError):
        return set()
    return {c["id"] for c in containers if name in c.get("names", []) and "id" in c}


def container_name(container_id: str, runtime: str) -> str:
    """A container's name from its runtime's state files, else its short id."""
    if runtime == "docker":
        try:
            config = json.loads((DOCKER_CONTAINERS / container_id / "config.v2.json").read_text())
            return str(config.get("Name", "")).lstrip("/") or container_id[:12]
        except (OSError, ValueError):
            pass
    if runtime == "podman":
        try:
            for c in json.loads(PODMAN_CONTAINERS.read_text()):
                if c.get("id") == container_id and c.get("names"):
                    return str(c["names"][0])
        except (OSError, ValueError):
            pass
    if runtime == "systemd":
        return container_id
    return container_id[:12]
