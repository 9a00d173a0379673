"""Import bcc from wherever the host's packages put it.

bcc's Python module comes from the distribution (Debian python3-bpfcc, Fedora
python3-bcc) and is pure Python over libbcc.so, so any CPython 3 can use it — but a
pyenv or venv interpreter does not see the distribution's folder. We add those folders
at the end of sys.path (never in front: they must not shadow anything else).
"""

from __future__ import annotations

import glob
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from .errors import AgentError

DIST_FOLDERS = (
    "/usr/lib/python3/dist-packages",  # Debian, Ubuntu
    *sorted(glob.glob("/usr/lib/python3*/site-packages")),  # Fedora, RHEL, Arch
    *sorted(glob.glob("/usr/lib64/python3*/site-packages")),
)

INSTALL_HINT = "install python3-bpfcc (Debian/Ubuntu) or python3-bcc (Fedora/RHEL)"


def _add_dist_folders() -> None:
    for folder in DIST_FOLDERS:
        if folder not in sys.path:
            sys.path.append(folder)


def import_bcc() -> ModuleType:
    try:
        import bcc
    except ImportError:
        pass
    else:
        return bcc
    _add_dist_folders()
    try:
        import bcc
    except ImportError as exc:
        raise AgentError(
            f"bcc is not available to {sys.executable}: {INSTALL_HINT} ({exc})"
        ) from exc
    except OSError as exc:  # the module is there, libbcc.so is not
        raise AgentError(f"bcc's library cannot be loaded: {INSTALL_HINT} ({exc})") from exc
    return bcc


def bcc_version() -> str | None:
    try:
        bcc = import_bcc()
    except AgentError:
        return None
    return str(getattr(bcc, "__version__", "unknown"))


def bcc_version_unloaded() -> str | None:
    """bcc's version from its version.py, without importing bcc.

    Importing bcc loads libbcc.so (LLVM and clang inside): tens of MB of memory and a
    tenth of a second that an agent loading its sampler from the cache does not need.
    """
    _add_dist_folders()
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(folder) / "version.py").read_text()
        except OSError:
            continue
        match = re.search(r"""__version__\s*=\s*['"]([^'"]+)['"]""", text)
        if match:
            return match.group(1)
    return None
