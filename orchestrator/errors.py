"""Controller-side errors, on top of the hierarchy the agent defines."""

from ..agent.errors import AgentError, PcapngError, UsageError, XdpcapError

__all__ = [
    "AgentError",
    "InventoryError",
    "MergeError",
    "PcapngError",
    "RemoteError",
    "UsageError",
    "XdpcapError",
]


class InventoryError(XdpcapError):
    """An inventory file or --limit pattern is wrong; the message names the file and line."""

    exit_code = 2


class MergeError(XdpcapError):
    """Merging captures failed as a whole (not one damaged input, which is reported and skipped)."""


class RemoteError(XdpcapError):
    """Something failed on or on the way to one remote host."""
