"""`python -m xdpcap.orchestrator` is the `xdpcap` command."""

from .cli.main import entry

entry()
