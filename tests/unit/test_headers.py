"""Finding kernel headers: the running kernel's, another version's (Debian's split
packages joined in a private tree), or one line naming the package to install."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from xdpcap.agent import headers
from xdpcap.agent.errors import AgentError


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    modules, src = tmp_path / "modules", tmp_path / "src"
    modules.mkdir()
    src.mkdir()
    monkeypatch.setattr(headers, "MODULES_DIR", modules)
    monkeypatch.setattr(headers, "SRC_DIR", src)
    monkeypatch.setattr(platform, "release", lambda: "6.18.0-test")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    return modules, src


def _debian_pair(src: Path, version: str) -> None:
    common = src / f"linux-headers-{version}-common"
    flavour = src / f"linux-headers-{version}-amd64"
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "kconfig.h").write_text("")
    (common / "arch" / "x86" / "include" / "uapi").mkdir(parents=True)
    (flavour / "include" / "generated").mkdir(parents=True)
    (flavour / "include" / "config").mkdir(parents=True)
    (flavour / "arch" / "x86" / "include" / "generated").mkdir(parents=True)


def test_running_kernel_headers_are_used_as_they_are(roots) -> None:
    modules, _ = roots
    (modules / "6.18.0-test" / "build" / "include").mkdir(parents=True)
    found = headers.find_kernel_headers()
    assert found.exact and found.bcc_kernel_source is None


def test_other_version_split_packages_are_joined(roots, tmp_path: Path) -> None:
    _, src = roots
    _debian_pair(src, "6.1.0-5")
    _debian_pair(src, "6.1.0-9")
    found = headers.find_kernel_headers(tmp_path / "work")
    assert not found.exact and found.headers_version == "6.1.0-9"  # the newest
    farm = Path(found.bcc_kernel_source)
    assert (farm / "include" / "linux" / "kconfig.h").exists()
    assert (farm / "include" / "generated").is_dir()
    assert (farm / "arch" / "x86" / "include" / "generated").is_dir()
    assert (farm / "arch" / "x86" / "include" / "uapi").is_dir()
    assert "stable UAPI" in found.describe()


def test_without_the_farm_the_same_headers_are_named_and_nothing_is_built(
    roots, tmp_path: Path
) -> None:
    """What the cache key needs (a cached program is loaded without any header tree)."""
    _, src = roots
    _debian_pair(src, "6.1.0-9")
    named = headers.find_kernel_headers(tmp_path / "work", build_farm=False)
    assert named.bcc_kernel_source is None and not (tmp_path / "work").exists()
    built = headers.find_kernel_headers(tmp_path / "work")
    assert named.describe() == built.describe()  # the same key either way


def test_no_headers_is_one_line_naming_the_package(roots) -> None:
    with pytest.raises(AgentError) as caught:
        headers.find_kernel_headers()
    message = str(caught.value)
    assert "\n" not in message
    assert "linux-headers-6.18.0-test" in message and "kernel-devel" in message
