"""The list of command modules; each has `register(subparsers)`."""

from __future__ import annotations

MODULES: list = []
