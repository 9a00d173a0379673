"""Capture filters on the controller: each host's expression, compiled before any connect.

A host's filter is its `xdpcap_filter` variable, else the command line's (the host wins,
as with `xdpcap_iface`). Every distinct expression is compiled once, with this
machine's libpcap, for every link type; a bad one stops the run with libpcap's message
before any host is contacted. Agents receive the checked programs and need no libpcap.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...agent.filter import spec
from ...agent.filter.cbpf import FilterError
from ..errors import UsageError
from ..inventory.model import Host


def host_expression(host: Host, default: str | None) -> str | None:
    """The host's own filter (xdpcap_filter), else the command line's."""
    if host.filter is None:
        return default
    try:
        return spec.expression_text(host.filter) or None
    except FilterError as exc:
        raise UsageError(f"{host.name}: xdpcap_filter: {exc}") from exc


def compile_for_hosts(
    hosts: Iterable[Host], default: str | None
) -> dict[str, spec.CompiledFilter | None]:
    """Host name → its compiled filter (None: captures everything)."""
    compiled: dict[str, spec.CompiledFilter] = {}
    result: dict[str, spec.CompiledFilter | None] = {}
    for host in hosts:
        expression = host_expression(host, default)
        if expression is not None and expression not in compiled:
            try:
                compiled[expression] = spec.compile_filter(expression)
            except FilterError as exc:
                where = f"{host.name}: xdpcap_filter: " if host.filter is not None else ""
                raise UsageError(f"{where}{exc}") from exc
        result[host.name] = compiled.get(expression) if expression else None
    return result


def without_connection(
    capture_filter: spec.CompiledFilter | None, sock: object
) -> spec.CompiledFilter | None:
    """The host's filter, leaving out the controller's own SSH connection to it.

    A live stream carries every captured packet over that connection: captured too, its
    segments would be streamed again, and so on (sshdump leaves its own session out for
    the same reason). Filtered out, they are counted as such. Through a proxy or jump
    host the socket is not the host's connection and nothing is added.
    """
    try:
        local = sock.getsockname()  # type: ignore[attr-defined]
        peer = sock.getpeername()  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return capture_filter
    if not (isinstance(local, tuple) and isinstance(peer, tuple)):
        return capture_filter
    own = (
        f"not (host {local[0]} and tcp port {int(local[1])} "
        f"and host {peer[0]} and tcp port {int(peer[1])})"
    )
    expression = f"({capture_filter.expression}) and {own}" if capture_filter else own
    return spec.compile_filter(expression)
