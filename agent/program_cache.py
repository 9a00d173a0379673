"""A cache of the compiled sampler: a host compiles it once, not on every run.

Why: bcc runs clang on every start — about half a second of CPU and a hundred MB of
memory on the host — before the capture window can open, and a synchronised window
waits for the slowest host. The bytecode depends only on the source, the compile
flags, the headers, bcc's version and the kernel; under a key made of all of them we
keep the instructions and the shapes of the maps. A later run creates maps of the same
shapes, points the instructions' map references (ld_imm64 with BPF_PSEUDO_MAP_FD) at
them and loads the program: the kernel's verifier checks it exactly as it checked bcc's
load, in about a millisecond.

Trust: a cached program is loaded with the agent's privileges, so an entry is used only
from a folder owned by the agent's user with no access for anyone else, from a file
owned by that user and writable by no one else. Anything else — and anything that does
not parse or load — is ignored and the sampler is compiled as usual.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import libbpf

FORMAT = 2  # 2: several programs (one per capture point) sharing their maps
KEEP_ENTRIES = 8  # one per source/kernel/bcc combination a host has seen recently
ENV_VAR = "XDPCAP_BPF_CACHE"  # a folder, or "off"

_INSN = struct.Struct("<BBhi")  # code, dst:4|src:4, offset, imm
_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two slots
_PSEUDO_MAP_FD = 1


@dataclass(frozen=True)
class CachedMap:
    spec: libbpf.MapSpec
    fd: int  # the fd the instructions refer to (bcc's, in the compiling process)


@dataclass(frozen=True)
class CachedFunction:
    """One program of the compiled file: its name, BPF program type and bytecode."""

    name: str
    prog_type: int
    insns: bytes


@dataclass(frozen=True)
class CompiledProgram:
    """What one compile made: its programs and the maps they share."""

    license: str
    functions: tuple[CachedFunction, ...]
    maps: tuple[CachedMap, ...]


@dataclass
class LoadedProgram:
    """Programs and their maps loaded from the cache; we own every fd."""

    prog_fds: dict[str, int]
    map_fds: dict[str, int]
    license: str = ""
    # Every function's bytecode pointing at these maps, loaded or not: the xdp hook
    # loads its slot programs itself, with the attributes the owner needs.
    insns: dict[str, bytes] = field(default_factory=dict)

    def close(self) -> None:
        for fd in (*self.prog_fds.values(), *self.map_fds.values()):
            os.close(fd)
        self.prog_fds = {}
        self.map_fds = {}


def default_dir() -> Path | None:
    """XDPCAP_BPF_CACHE, else a root-only system folder for root, else the user's cache."""
    value = os.environ.get(ENV_VAR)
    if value == "off":
        return None
    if value:
        return Path(value)
    if os.geteuid() == 0:
        return Path("/var/cache/xdpcap/bpf")
    return Path.home() / ".cache/xdpcap/bpf"


def cache_key(*parts: str) -> str:
    """One key for everything the bytecode depends on (plus our own format)."""
    return hashlib.sha256(json.dumps([FORMAT, *parts]).encode()).hexdigest()


def relocate(insns: bytes, fd_map: dict[int, int]) -> bytes:
    """Point every map reference at the new fds; ValueError if one is unknown."""
    out = bytearray(insns)
    i = 0
    while i + _INSN.size <= len(out):
        code, regs, offset, imm = _INSN.unpack_from(out, i)
        if code == _LD_IMM64:
            src = regs >> 4
            if src == _PSEUDO_MAP_FD:
                if imm not in fd_map:
                    raise ValueError(f"instruction {i // 8} refers to unknown map fd {imm}")
                _INSN.pack_into(out, i, code, regs, offset, fd_map[imm])
            elif src != 0:
                raise ValueError(f"instruction {i // 8}: unsupported ld_imm64 source {src}")
            i += 2 * _INSN.size
        else:
            i += _INSN.size
    return bytes(out)


def instantiate(program: CompiledProgram, names: Iterable[str]) -> LoadedProgram:
    """Create the maps, relocate and load the programs called `names` (only those a
    capture attaches). Raises OSError or ValueError; leaks no fd."""
    wanted = set(names)
    loaded = LoadedProgram({}, {}, program.license)
    try:
        for cached in program.maps:
            loaded.map_fds[cached.spec.name] = libbpf.map_create(cached.spec)
        fd_map = {m.fd: loaded.map_fds[m.spec.name] for m in program.maps}
        for function in program.functions:
            insns = loaded.insns[function.name] = relocate(function.insns, fd_map)
            if function.name in wanted:
                loaded.prog_fds[function.name] = libbpf.prog_load(
                    function.prog_type, function.name, program.license, insns
                )
        if missing := wanted - set(loaded.prog_fds):
            raise ValueError(f"no program {sorted(missing)} in the cached entry")
    except BaseException:
        loaded.close()
        raise
    return loaded


def _private_dir(folder: Path) -> bool:
    try:
        info = folder.stat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    )


def load(folder: Path, key: str) -> CompiledProgram | None:
    """The entry under `key`, or None: missing, untrusted or damaged (never raises)."""
    if not _private_dir(folder):
        return None
    path = folder / f"{key}.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = json.loads(f.read())
        if data.get("format") != FORMAT or data.get("key") != key:
            return None
        return CompiledProgram(
            license=str(data["license"]),
            functions=tuple(
                CachedFunction(str(f["name"]), int(f["prog_type"]), base64.b64decode(f["insns"]))
                for f in data["functions"]
            ),
            maps=tuple(CachedMap(libbpf.MapSpec(**m["spec"]), int(m["fd"])) for m in data["maps"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        os.close(fd)


def store(folder: Path, key: str, program: CompiledProgram) -> None:
    """Keep `program` under `key` (atomically); drop the oldest entries beyond a few.

    Raises OSError or ValueError; the caller goes on without a cache.
    """
    for function in program.functions:  # refuse what we could not load
        relocate(function.insns, {m.fd: m.fd for m in program.maps})
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _private_dir(folder):
        raise OSError(f"{folder} is not a private folder of this user")
    data = {
        "format": FORMAT,
        "key": key,
        "license": program.license,
        "functions": [
            {"name": f.name, "prog_type": f.prog_type, "insns": base64.b64encode(f.insns).decode()}
            for f in program.functions
        ],
        "maps": [{"spec": m.spec.__dict__, "fd": m.fd} for m in program.maps],
    }
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, folder / f"{key}.json")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _prune(folder)


def _prune(folder: Path) -> None:
    entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP_ENTRIES:]:
        old.unlink(missing_ok=True)
