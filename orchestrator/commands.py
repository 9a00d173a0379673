"""The list of command modules; each has `register(subparsers)`."""

from __future__ import annotations

from . import capture_cli, collect, demo, lab_cli, merge_cli, run_cli

MODULES: list = [run_cli, collect, capture_cli, merge_cli, lab_cli, demo]
