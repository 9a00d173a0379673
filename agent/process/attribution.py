"""The one object a capture uses for process attribution: start it once the sampler is
compiled, ask it for each new socket cookie's EPB comments, close it with the capture."""

from __future__ import annotations

import struct
import sys
import time

from .. import contract, libbpf
from ..errors import AgentError
from . import btf, existing
from .comments import (
    cgroup_comment,
    comment_options,
    container_comment,
    container_of_cgroup,
    process_comment,
)
from .hooks import AttachError, ProcessHooks
from .procinfo import (
    ProcInfo,
    cgroup_id,
    clean_stale_mounts,
    read_comm,
    read_proc,
    release_private_mount,
)
from .selection import Selection, container_cgroup_ids, container_name

_COOKIES_CACHED = 65536  # comments kept per cookie; cleared beyond (a new cookie is rare)
UNKNOWN_RETRY_NS = 100_000_000
REFRESH_NS = 1_000_000_000


class ProcessAttribution:
    """Attribution for one capture (see the package docstring). `active` tells whether it
    loaded; where it did not, `note` says why and the capture goes on without it, unless
    a selection needs it (then start() raises AgentError: capturing everything instead
    of what was asked would be wrong)."""

    def __init__(self, selection: Selection | None = None) -> None:
        self.selection = selection or Selection()
        self.active = False
        self.note = ""
        self.existing = 0  # sockets attributed from /proc at the start
        self._hooks = ProcessHooks()
        self._sampler = None
        self._comments: dict[int, bytes] = {}
        self._unknown: dict[int, int] = {}  # cookie -> when it was last looked up in vain
        self._refreshed = 0  # when /proc was last scanned (monotonic ns)
        self._procs: dict[int, ProcInfo] = {}

    def start(self, sampler) -> None:
        """Configure the sampler's programs, attach the hooks, fill in existing sockets."""
        clean_stale_mounts()
        try:
            offsets = btf.member_offsets({"sock_common": "skc_cookie", "linux_binprm": "filename"})
            self._hooks.attach(sampler.bytecode, sampler.license())
        except (AttachError, btf.BtfError, OSError) as exc:
            self.note = f"process attribution off: {exc}"
            if self.selection:
                raise AgentError(
                    f"cannot select by {self.selection.describe()}: {self.note}"
                ) from exc
            print(f"xdpcap: {self.note}", file=sys.stderr)
            return
        self._sampler = sampler
        if self.selection.container:
            fd = sampler.map_fd("select_cgroups")
            for cgroup in container_cgroup_ids(self.selection.container):
                libbpf.map_update(fd, struct.pack("<Q", cgroup), b"\x01")
        sampler.process_config = (
            contract.PROCESS_ON | self.selection.flags(),
            self.selection.pid or 0,
            offsets["sock_common"],
            offsets["linux_binprm"],
            self.selection.comm_bytes(),
        )
        sampler.write_config()
        self.existing = self._fill_existing(sampler.map_fd("procs"))
        self.active = True
        for reason in self._hooks.missing:
            print(f"xdpcap: process attribution: {reason}", file=sys.stderr)

    def _fill_existing(self, procs_fd: int) -> int:
        """Puts every socket older than the hooks into `procs`; returns how many.
        Also the slow path for a socket no hook saw (an accepted connection where the
        accept probe could not attach), at most every REFRESH_NS."""
        self._refreshed = time.monotonic_ns()
        try:
            cookies = existing.socket_cookies()
        except OSError as exc:
            print(f"xdpcap: existing sockets not attributed: {exc}", file=sys.stderr)
            return 0
        filled = 0
        for inode, pid in existing.socket_owners():
            cookie = cookies.get(inode)
            if cookie is None:
                continue  # another namespace's socket, or not TCP/UDP
            value = contract.PROC.pack(pid, cgroup_id(read_proc(pid).cgroup), read_comm(pid))
            try:
                libbpf.map_update(procs_fd, struct.pack("<Q", cookie), value)
            except OSError:
                continue
            filled += 1
        return filled

    def describe(self) -> str:
        """For the interface description."""
        if not self.active:
            return self.note
        text = "process attribution on"
        if self._hooks.missing:
            text += " (accepted connections from /proc: no accept probe)"
        if self.selection:
            text += f", selecting {self.selection.describe()}"
        return text

    # -- per cookie ------------------------------------------------------------------
    def comments(self, cookie: int) -> bytes:
        """The EPB comment options for a socket cookie (b"": not known)."""
        options = self._comments.get(cookie)
        if options is not None:
            return options
        # A socket not (yet) in the table — an accepted connection before its accept()
        # returned — is looked up again, at most every UNKNOWN_RETRY_NS.
        now = time.monotonic_ns()
        if now - self._unknown.get(cookie, -UNKNOWN_RETRY_NS) < UNKNOWN_RETRY_NS:
            return b""
        options = self._resolve(cookie)
        if not options:
            if len(self._unknown) >= _COOKIES_CACHED:
                self._unknown.clear()
            self._unknown[cookie] = now
            return b""
        if len(self._comments) >= _COOKIES_CACHED:
            self._comments.clear()
        self._comments[cookie] = options
        self._unknown.pop(cookie, None)
        return options

    def _resolve(self, cookie: int) -> bytes:
        if self._sampler is None:
            return b""
        try:
            raw = libbpf.map_lookup(
                self._sampler.map_fd("procs"), struct.pack("<Q", cookie), contract.PROC.size
            )
        except OSError:
            raw = self._refresh_and_lookup(cookie)
            if raw is None:
                return b""  # not known: another namespace's, or gone already
        pid, _cgroup, comm = contract.PROC.unpack(raw)
        info = self._procs.get(pid)
        if info is None:
            info = self._procs[pid] = read_proc(pid)
        cmd = info.cmd or self._exec_path(pid) or comm.rstrip(b"\0").decode("utf-8", "replace")
        args = info.args or [comm.rstrip(b"\0").decode("utf-8", "replace")]
        texts = [process_comment(pid, cmd, args)]
        container = container_of_cgroup(info.cgroup) if info.cgroup else None
        if container is not None:
            texts.append(
                container_comment(container_name(container.id, container.runtime), container.id)
            )
        if info.cgroup and info.cgroup != "/":
            texts.append(cgroup_comment(info.cgroup))
        return comment_options(texts)

    def _refresh_and_lookup(self, cookie: int) -> bytes | None:
        """Looks for sockets the hooks did not see in /proc again (at most every
        REFRESH_NS: a scan of every process's fds), then `cookie` in `procs`."""
        if time.monotonic_ns() - self._refreshed < REFRESH_NS:
            return None
        procs_fd = self._sampler.map_fd("procs")
        self._fill_existing(procs_fd)
        try:
            return libbpf.map_lookup(procs_fd, struct.pack("<Q", cookie), contract.PROC.size)
        except OSError:
            return None

    def _exec_path(self, pid: int) -> str:
        """What the exec tracepoint saw the process run (it may have exited since)."""
        try:
            raw = libbpf.map_lookup(
                self._sampler.map_fd("execs"), struct.pack("<I", pid), contract.EXEC_PATH_LEN
            )
        except OSError:
            return ""
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def close(self) -> None:
        self._hooks.close()
        release_private_mount()

    def __enter__(self) -> ProcessAttribution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
