"""Find kernel headers for bcc, which compiles the sampler at run time.

On a normal host the running kernel's headers sit at /lib/modules/$(uname -r)/build.
When they don't (this project's CI runs kernel 6.18, Debian offers 6.1 headers), another
installed version is used: an XDP program needs only the stable UAPI. Debian splits
headers into an arch package (generated files) and a -common package (the rest), and
bcc's BCC_KERNEL_SOURCE takes one tree, so we join the two with a private symlink farm
instead of changing anything under /lib/modules on the host.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import AgentError

MODULES_DIR = Path("/lib/modules")
SRC_DIR = Path("/usr/src")

# uname machine -> the kernel's arch folder name.
_KERNEL_ARCH = {
    "x86_64": "x86",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "powerpc",
    "s390x": "s390",
    "riscv64": "riscv",
}


@dataclass(frozen=True)
class KernelHeaders:
    """Which headers bcc will use, and how."""

    kernel_release: str
    headers_version: str
    path: str
    exact: bool  # headers of the running kernel
    bcc_kernel_source: str | None  # value for BCC_KERNEL_SOURCE, None: bcc finds them itself

    def describe(self) -> str:
        if self.exact:
            return f"{self.path} (running kernel {self.kernel_release})"
        return (
            f"{self.path} (version {self.headers_version}; the running kernel "
            f"{self.kernel_release} has none installed: the sampler needs only the stable UAPI)"
        )


def _has_tree(path: Path) -> bool:
    return (path / "include").is_dir()


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def _debian_pairs(src: Path, arch: str) -> list[tuple[str, Path, Path]]:
    """(version, arch-specific dir, -common dir) for each split Debian header set."""
    pairs = []
    for common in src.glob("linux-headers-*-common"):
        version = common.name[len("linux-headers-") : -len("-common")]
        for flavour in sorted(src.glob(f"linux-headers-{version}-*")):
            if (
                flavour == common
                or not (flavour / "arch" / arch / "include" / "generated").is_dir()
            ):
                continue
            pairs.append((version, flavour, common))
    return pairs


def _whole_trees(src: Path, arch: str) -> list[tuple[str, Path]]:
    """Header trees that hold everything in one folder (Fedora's kernels/, vanilla builds)."""
    trees = []
    for path in list(src.glob("linux-headers-*")) + list(src.glob("kernels/*")):
        # Debian's arch-only half also has include/generated; a whole tree has include/linux.
        if (path / "include" / "generated").is_dir() and (path / "include" / "linux").is_dir():
            trees.append((path.name.replace("linux-headers-", ""), path))
    return trees


def _symlink_farm(flavour: Path, common: Path, arch: str, into: Path) -> Path:
    """Join Debian's split header packages into one tree bcc can take as BCC_KERNEL_SOURCE."""
    root = into / "kernel-source"
    for rel in ("include", f"arch/{arch}/include"):
        (root / rel).mkdir(parents=True)
        for entry in (common / rel).iterdir():
            (root / rel / entry.name).symlink_to(entry)
    (root / f"arch/{arch}/include/generated").symlink_to(flavour / f"arch/{arch}/include/generated")
    for name in ("generated", "config"):
        if (flavour / "include" / name).exists():
            (root / "include" / name).symlink_to(flavour / "include" / name)
    return root


def missing_headers_message(release: str) -> str:
    return (
        f"no kernel headers found for kernel {release} (looked in {MODULES_DIR}/{release}/build "
        f"and {SRC_DIR}): install linux-headers-{release} (Debian/Ubuntu; or "
        f"linux-headers-amd64 for any version) or kernel-devel-{release} (Fedora/RHEL)"
    )


def find_kernel_headers(workdir: Path | None = None, *, build_farm: bool = True) -> KernelHeaders:
    """Locate headers, preferring the running kernel's; build a farm in `workdir` if needed
    (not with build_farm=False: which headers, for a cache key, without the compiler's tree).

    Raises AgentError naming the package to install when there are none at all.
    """
    release = platform.release()
    arch = _KERNEL_ARCH.get(platform.machine(), platform.machine())
    build = MODULES_DIR / release / "build"
    if _has_tree(build):
        return KernelHeaders(release, release, str(build), True, None)

    candidates: list[tuple[tuple[int, ...], str, str, object]] = []
    for version, tree in _whole_trees(SRC_DIR, arch):
        candidates.append((_version_key(version), version, "tree", tree))
    for version, flavour, common in _debian_pairs(SRC_DIR, arch):
        candidates.append((_version_key(version), version, "pair", (flavour, common)))
    if not candidates:
        raise AgentError(missing_headers_message(release))

    # Exact match first, then the newest version installed.
    candidates.sort(key=lambda c: (c[1].startswith(release), c[0]), reverse=True)
    _, version, kind, where = candidates[0]
    exact = version.startswith(release)
    if kind == "tree":
        path = Path(str(where))
        return KernelHeaders(release, version, str(path), exact, str(path))
    flavour, common = where  # type: ignore[misc]
    where_text = f"{flavour} + {common.name}"
    if not build_farm:
        return KernelHeaders(release, version, where_text, exact, None)
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="xdpcap-headers-"))
    farm = _symlink_farm(flavour, common, arch, workdir)
    return KernelHeaders(release, version, where_text, exact, str(farm))


def remove_farm(headers: KernelHeaders) -> None:
    """Remove a symlink farm we made (never a real header tree)."""
    if headers.bcc_kernel_source and headers.bcc_kernel_source.endswith("/kernel-source"):
        farm_parent = Path(headers.bcc_kernel_source).parent
        if farm_parent.name.startswith("xdpcap-"):
            shutil.rmtree(farm_parent, ignore_errors=True)


def apply_environment(headers: KernelHeaders) -> None:
    if headers.bcc_kernel_source:
        os.environ["BCC_KERNEL_SOURCE"] = headers.bcc_kernel_source
