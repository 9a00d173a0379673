"""The exception hierarchy shared by the agent and the controller.

Every error the user can cause or meet carries a one-line message; `main()` turns them
into exit codes without a traceback.
"""


class XdpcapError(Exception):
    """Base of every error xdpcap reports as one line."""

    exit_code = 1


class UsageError(XdpcapError):
    """A bad flag or argument value."""

    exit_code = 2


class AgentError(XdpcapError):
    """The agent cannot capture on this host (headers, privileges, interface, attached program)."""


class PcapngError(XdpcapError):
    """A pcapng or pcap file is truncated, corrupt or not a capture at all."""


def os_error_line(exc: OSError) -> str:
    """A file or folder the system refused, as the one line a CLI prints for it."""
    where = f": {exc.filename}" if exc.filename else ""
    return f"xdpcap: {exc.strerror or exc}{where}"
