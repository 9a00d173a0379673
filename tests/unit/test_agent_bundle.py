"""The agent zipapp: deterministic, self-contained, and importing its precompiled modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

from xdpcap.orchestrator.remote.bundle import build_agent_bundle


def _run(pyz: Path, code: str) -> str:
    # -I: no site-packages, no user paths: the bundle must bring its own code.
    argv = [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(pyz)!r}); {code}"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def test_same_content_same_bytes() -> None:
    assert build_agent_bundle().sha256 == build_agent_bundle().sha256


def test_every_module_ships_with_its_bytecode() -> None:
    names = set(zipfile.ZipFile(BytesIO(build_agent_bundle().data)).namelist())
    sources = {n for n in names if n.endswith(".py") and n != "__main__.py"}
    assert "xdpcap/agent/capture.py" in sources and "xdpcap/bpf/sampler.c" in names
    assert "xdpcap/agent/filter/to_c.py" in sources  # sub-packages travel too
    assert {s[:-3] + ".pyc" for s in sources} <= names


def test_the_precompiled_modules_are_the_ones_imported(tmp_path: Path) -> None:
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(build_agent_bundle().data)
    out = _run(pyz, "import xdpcap.agent.capture as m; print(m.__file__)")
    assert out.strip() == f"{pyz}/xdpcap/agent/capture.pyc"


def test_a_pyc_that_does_not_match_its_source_is_not_used(tmp_path: Path) -> None:
    """The .pyc is checked against the source's hash: a stale one falls back to the .py."""
    original = zipfile.ZipFile(BytesIO(build_agent_bundle().data))
    pyz = tmp_path / "agent.pyz"
    with zipfile.ZipFile(pyz, "w") as out:
        for info in original.infolist():
            data = original.read(info)
            if info.filename == "xdpcap/agent/validate.py":
                data += b"\nEDITED = True\n"
            out.writestr(info, data)
    assert _run(pyz, "import xdpcap.agent.validate as m; print(m.EDITED)").strip() == "True"


def test_the_built_bundle_is_kept_and_read_back(tmp_path: Path) -> None:
    first = build_agent_bundle(tmp_path)
    (kept,) = tmp_path.glob("agent-*.pyz")
    assert kept.read_bytes() == first.data and kept.stat().st_mode & 0o777 == 0o600
    assert build_agent_bundle(tmp_path) == first


def test_a_kept_bundle_whose_sources_differ_is_rebuilt(tmp_path: Path) -> None:
    first = build_agent_bundle(tmp_path)
    (kept,) = tmp_path.glob("agent-*.pyz")
    original = zipfile.ZipFile(BytesIO(kept.read_bytes()))
    tampered = BytesIO()
    with zipfile.ZipFile(tampered, "w") as out:
        for info in original.infolist():
            data = original.read(info)
            out.writestr(info, data + b"\nimport os\n" if info.filename.endswith("e.py") else data)
    kept.write_bytes(tampered.getvalue())
    assert build_agent_bundle(tmp_path) == first  # built again from the real sources


def test_an_unwritable_cache_only_costs_time(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert build_agent_bundle(blocked / "cache") == build_agent_bundle(tmp_path / "ok")
