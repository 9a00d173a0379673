"""Which module registers which command; each module has `register(subparsers)`.

Modules are imported by name, so `xdpcap run` loads what `run` needs and not the lab,
the demo or the local capture: the controller's start-up is part of every run's
time-to-capture.
"""

from __future__ import annotations

import gc
import importlib
from types import ModuleType

# command -> the module (in this package) that registers it, in the order of --help.
COMMANDS: dict[str, str] = {
    "run": "run",
    "check": "run",
    "collect": "collect",
    "capture": "capture",
    "build-agent": "capture",
    "merge": "merge",
    "report": "report",
    "extcap": "extcap",
    "lab": "lab",
    "demo": "demo",
}


def modules_for(command: str | None) -> list[ModuleType]:
    """The module of `command`, or every module (for --help and unknown words).

    Loading them (fabric, paramiko, rich) creates some 40,000 objects that live until
    the exit. The cyclic garbage collector would walk them again and again while they
    load, and in every full collection after: paused during the load, and the result
    frozen (gc.freeze), it never does. Objects made later are collected as before.
    """
    names = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    enabled = gc.isenabled()
    gc.disable()
    try:
        modules = [importlib.import_module(f".{name}", __package__) for name in names]
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    return modules
