"""Which module registers which command; each module has `register(subparsers)`.

Modules are imported by name, so `xdpcap run` loads what `run` needs and not the lab,
the demo or the local capture: the controller's start-up is part of every run's
time-to-capture.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# command -> the module (in this package) that registers it, in the order of --help.
COMMANDS: dict[str, str] = {
    "run": "run_cli",
    "check": "run_cli",
    "collect": "collect",
    "capture": "capture_cli",
    "build-agent": "capture_cli",
    "merge": "merge_cli",
    "lab": "lab_cli",
    "demo": "demo",
}


def modules_for(command: str | None) -> list[ModuleType]:
    """The module of `command`, or every module (for --help and unknown words)."""
    names = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    return [importlib.import_module(f".{name}", __package__) for name in names]
