"""Import bcc from wherever the host's packages put it.

bcc's Python module comes from the distribution (Debian python3-bpfcc, Fedora
python3-bcc) and is pure Python over libbcc.so, so any CPython 3 can use it — but a
pyenv or venv interpreter does not see the distribution's folder. We add those folders
at the end of sys.path (never in front: they must not shadow anything else).
"""

from __future__ import annotations

import glob
import sys
from types import ModuleType

from .errors import AgentError

DIST_FOLDERS = (
    "/usr/lib/python3/dist-packages",  # Debian, Ubuntu
    *sorted(glob.glob("/usr/lib/python3*/site-packages")),  # Fedora, RHEL, Arch
    *sorted(glob.glob("/usr/lib64/python3*/site-packages")),
)

INSTALL_HINT = "install python3-bpfcc (Debian/Ubuntu) or python3-bcc (Fedora/RHEL)"


def import_bcc() -> ModuleType:
    try:
        import bcc
    except ImportError:
        pass
    else:
        return bcc
    for folder in DIST_FOLDERS:
        if folder not in sys.path:
            sys.path.append(folder)
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
