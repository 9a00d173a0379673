"""The exception hierarchy shared by the agent and the controller.

Every error the user can cause or meet carries a one-line message; `main()` turns them
into exit codes without a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


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


def exit_status(body: Callable[[], int], interrupted: str | None = None) -> int:
    """Run a command's body and map what it raises to the exit status, with one line on
    stderr: our errors by their exit_code, a file or folder the system refused 1,
    Ctrl-C 130 (saying `interrupted` if given). The agent and `xdpcap` both end here."""
    try:
        return body()
    except XdpcapError as exc:
        print(f"xdpcap: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a file or folder the system refused: one line, not a traceback
        print(os_error_line(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if interrupted is not None:
            print(f"xdpcap: {interrupted}", file=sys.stderr)
        return 130


def os_error_line(exc: OSError) -> str:
    """A file or folder the system refused, as the one line a CLI prints for it."""
    where = f": {exc.filename}" if exc.filename else ""
    return f"xdpcap: {exc.strerror or exc}{where}"
