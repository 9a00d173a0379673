"""The host variables the controller reads for one host, each checked before any of it
reaches a remote shell: interface, Python interpreter, capture folder, and the test-only
clock hooks (refused unless XDPCAP_TEST_HOOKS=1).
"""

from __future__ import annotations

import os
import re
import time

from ...agent import validate
from ...agent.clock import TEST_EPOCH_ENV, TEST_RATE_ENV, TEST_SKEW_ENV
from ..errors import UsageError
from ..inventory.model import Host

SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]*$")
_SAFE_INTERPRETER = re.compile(r"^[A-Za-z0-9_./+-]+$")
TEST_SKEW_VAR = "xdpcap_test_clock_skew_ns"
TEST_RATE_VAR = "xdpcap_test_clock_rate_ppm"
# Where a test clock's drift starts from: one instant for every agent of this controller,
# so a host's capture and its clock probe present the same drifting clock.
TEST_EPOCH_NS = time.time_ns()
TEST_HOOKS_ENV = "XDPCAP_TEST_HOOKS"
CAPTURE_DIR_VAR = "xdpcap_capture_dir"


def interpreter_of(host: Host) -> str:
    python = host.python_interpreter or "python3"
    if not _SAFE_INTERPRETER.match(python):
        raise UsageError(f"{host.name}: ansible_python_interpreter {python!r} is not a plain path")
    return python


def capture_dir_of(host: Host) -> str | None:
    """Host var xdpcap_capture_dir: where captures are written on the host (a big disk)."""
    value = host.vars.get(CAPTURE_DIR_VAR)
    if value is None:
        return None
    path = str(value).rstrip("/")
    if not SAFE_PATH.match(path) or "/../" in path + "/":
        raise UsageError(f"{host.name}: {CAPTURE_DIR_VAR} {value!r} must be a plain absolute path")
    return path


def test_skew_of(host: Host, var: str = TEST_SKEW_VAR) -> int | None:
    """A test-only clock hook (skew in ns, or rate in ppm): it falsifies a host's
    timestamps, so a stray variable in a production inventory must not do that
    silently — only with XDPCAP_TEST_HOOKS=1."""
    value = host.vars.get(var)
    if value is None:
        return None
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        raise UsageError(
            f"{host.name}: {var} shifts the host's timestamps and is for xdpcap's "
            f"own tests only (set {TEST_HOOKS_ENV}=1 to allow it)"
        )
    try:
        return int(str(value))
    except ValueError:
        raise UsageError(f"{host.name}: {var} must be an integer") from None


def test_clock_env(host: Host) -> list[str]:
    """The agent's environment for the test-only clock hooks the host asks for (checked
    by test_skew_of): a skew, and a drift from one epoch shared by capture and probe."""
    env: list[str] = []
    skew = test_skew_of(host)
    if skew is not None:
        env.append(f"{TEST_SKEW_ENV}={skew}")
    rate = test_skew_of(host, TEST_RATE_VAR)
    if rate is not None:
        env.append(f"{TEST_RATE_ENV}={rate * 1000}")
        env.append(f"{TEST_EPOCH_ENV}={TEST_EPOCH_NS}")
    return env


def validate_iface_for(host: Host, default_iface: str | None) -> str:
    iface = host.iface or default_iface
    if not iface:
        raise UsageError(f"{host.name}: no interface: pass --iface or set xdpcap_iface")
    return validate.interface_name(iface)
