"""`python -m xdpcap.orchestrator` is the `xdpcap` command."""

from .cli import entry

entry()
