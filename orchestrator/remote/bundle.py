"""Build the agent zipapp: the agent's code and the C program, nothing else.

The bundle runs with the host's `python3` and bcc only. It is built once per content
(its name carries a hash of what is inside), so an unchanged agent is never uploaded twice.

Each module also goes in compiled, as a checked hash-based .pyc (PEP 552): Python does
not cache bytecode for modules imported from a zip, so without it every agent start
compiles the whole agent again (about 0.1 s of CPU on the host, before the capture
window). A host whose Python has another bytecode version ignores the .pyc and
compiles the .py beside it; a .pyc whose source hash does not match is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import marshal
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ... import agent as agent_package
from ... import bpf as bpf_package

# A fixed timestamp makes the archive's bytes depend on the content only.
_FIXED_DATE = (2020, 1, 1, 0, 0, 0)
_MAIN = "import sys\nfrom xdpcap.agent.__main__ import main\nsys.exit(main())\n"


@dataclass(frozen=True)
class AgentBundle:
    data: bytes
    sha256: str

    @property
    def filename(self) -> str:
        return f"xdpcap-agent-{self.sha256[:16]}.pyz"


def _package_files(package: object, patterns: tuple[str, ...]) -> list[Path]:
    folder = Path(package.__file__).parent  # type: ignore[attr-defined]
    return sorted(p for pattern in patterns for p in folder.glob(pattern))


_PYC_CHECKED_HASH = 0b11  # hash-based, check the source: PEP 552 flags


def _pyc(name: str, source: bytes) -> bytes:
    """What py_compile writes with PycInvalidationMode.CHECKED_HASH, for a member of the zip."""
    code = compile(source, name, "exec", dont_inherit=True)
    return (
        importlib.util.MAGIC_NUMBER
        + struct.pack("<I", _PYC_CHECKED_HASH)
        + importlib.util.source_hash(source)
        + marshal.dumps(code)
    )


def _sources() -> list[tuple[str, bytes]]:
    members: list[tuple[str, bytes]] = [
        ("__main__.py", _MAIN.encode()),
        ("xdpcap/__init__.py", b""),
    ]
    agent_dir = Path(agent_package.__file__).parent
    for path in _package_files(agent_package, ("*.py", "*/*.py")):  # with sub-packages
        members.append((f"xdpcap/agent/{path.relative_to(agent_dir)}", path.read_bytes()))
    for path in _package_files(bpf_package, ("*.py", "*.c", "*.h")):
        members.append((f"xdpcap/bpf/{path.name}", path.read_bytes()))
    return members


def build_agent_bundle(cache_dir: Path | None = None) -> AgentBundle:
    """The bundle of this version; built once per source and Python, then read back.

    Compiling the modules takes a tenth of a second, on every run's way to the capture
    window: the result is kept in `cache_dir` (default ~/.cache/xdpcap-controller), and
    used only if the sources inside it are exactly this version's.
    """
    sources = _sources()
    folder = cache_dir or _default_cache_dir()
    key = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    for name, content in sources:
        key.update(f"{name}\0{len(content)}\0".encode() + content)
    path = folder / f"agent-{key.hexdigest()[:32]}.pyz"
    data = _read_cached(path, sources)
    if data is None:
        data = _zip(sources)
        _write_cached(path, data)
    return AgentBundle(data, hashlib.sha256(data).hexdigest())


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xdpcap-controller"


def _read_cached(path: Path, sources: list[tuple[str, bytes]]) -> bytes | None:
    try:
        data = path.read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if all(archive.read(name) == content for name, content in sources):
                return data
    except (OSError, zipfile.BadZipFile, KeyError):
        pass
    return None


def _write_cached(path: Path, data: bytes) -> None:
    """Best effort: a read-only home only costs the next run the same tenth of a second."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o600)
        tmp.replace(path)
        for old in sorted(path.parent.glob("agent-*.pyz"), key=lambda p: p.stat().st_mtime)[:-4]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    # zipimport looks for NAME.pyc beside NAME.py (not in __pycache__).
    members = members + [
        (name[:-3] + ".pyc", _pyc(name, content))
        for name, content in members
        if name.endswith(".py") and name != "__main__.py"
    ]
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            info = zipfile.ZipInfo(name, _FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def write_agent_bundle(path: Path) -> AgentBundle:
    bundle = build_agent_bundle()
    path.write_bytes(bundle.data)
    path.chmod(0o700)
    return bundle
