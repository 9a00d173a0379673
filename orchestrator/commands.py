"""The list of command modules; each has `register(subparsers)`."""

from __future__ import annotations

from . import capture_cli, lab_cli

MODULES: list = [capture_cli, lab_cli]
