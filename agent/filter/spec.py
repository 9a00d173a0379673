"""What a capture's filter is: its expression and its checked program per link type.

The controller compiles an expression once for every link type a host's interface may
have and sends the programs with the expression; the agent picks the program for its
interface, checks it again (it trusts nothing that crossed the network) and translates
it. A local `xdpcap capture` compiles on the spot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import cbpf, libpcap, to_c
from .cbpf import FilterError, Program

# What an interface's frames start with, by iproute2's name for its ARPHRD type: an
# Ethernet header, or the IP header itself (tun, wireguard and other L3 devices).
# Linux loopback frames carry a zeroed Ethernet header (tcpdump reads lo as EN10MB).
LINK_OF_IP_LINK_TYPE = {"ether": "ether", "loopback": "ether", "none": "raw", "rawip": "raw"}
# The pcapng link type of each (LINKTYPE_ETHERNET, LINKTYPE_RAW).
PCAPNG_LINKTYPE = {"ether": 1, "raw": 101}
MAX_FILTER_FILE = 64 << 10


@dataclass(frozen=True)
class CompiledFilter:
    """An expression and its programs ("ether", "raw"), ready to send to agents."""

    expression: str
    programs: Mapping[str, Program]
    # Why a link type has no program (libpcap's message), e.g. `vlan` on raw IP.
    unavailable: Mapping[str, str]

    def agent_args(self) -> list[str]:
        """The agent's arguments for this filter: programs first, then the words."""
        args: list[str] = []
        for link, program in sorted(self.programs.items()):
            args += ["--filter-cbpf", f"{link}={cbpf.to_text(program)}"]
        return [*args, self.expression]


@dataclass(frozen=True)
class ActiveFilter:
    """The filter one capture runs: the program for its interface, as C."""

    expression: str
    program: Program

    @property
    def c_source(self) -> str:
        return to_c.filter_header(self.program)


def expression_text(text: str) -> str:
    """A filter expression as the user wrote it, checked to be plain printable text.

    It goes into files (if_filter) and onto a remote command line (quoted, but still:
    nothing but printable ASCII, and never something that reads as an option).
    """
    expression = " ".join(text.split())
    if len(expression.encode()) > libpcap.MAX_EXPRESSION:
        raise FilterError(f"filter: longer than {libpcap.MAX_EXPRESSION} bytes")
    bad = next((ch for ch in expression if not " " <= ch <= "~"), None)
    if bad is not None:
        raise FilterError(f"filter: contains {bad!r}: only printable ASCII is accepted")
    if expression.startswith("-"):
        raise FilterError(f"filter {expression!r} starts with '-'")
    return expression


def expression_from(words: Sequence[str], filter_file: str | None) -> str | None:
    """The expression from trailing words or `-F FILE` (None: no filter), as tcpdump."""
    if filter_file is not None:
        if words:
            raise FilterError("give the filter as words or with -F FILE, not both")
        path = Path(filter_file)
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_FILTER_FILE + 1)
        except OSError as exc:
            raise FilterError(f"-F {filter_file}: {exc.strerror or exc}") from exc
        if len(raw) > MAX_FILTER_FILE:
            raise FilterError(f"-F {filter_file}: larger than {MAX_FILTER_FILE} bytes")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise FilterError(f"-F {filter_file}: not plain ASCII text") from exc
        # tcpdump's filter files may carry '#' comments to the end of a line.
        text = " ".join(line.partition("#")[0] for line in text.splitlines())
    else:
        text = " ".join(words)
    expression = expression_text(text)
    return expression or None


def compile_filter(expression: str) -> CompiledFilter:
    """Compile for every link type; an expression that fits none is a usage error."""
    programs: dict[str, Program] = {}
    unavailable: dict[str, str] = {}
    for link in libpcap.LINK_TYPES:
        try:
            programs[link] = compile_checked(expression, link)
        except FilterError as exc:
            if link == "ether":  # the common case: its message is the one to show
                raise
            unavailable[link] = str(exc)
    return CompiledFilter(expression, programs, unavailable)


def compile_checked(expression: str, link: str) -> Program:
    """libpcap's program for `expression`, accepted by the checker, else one clear line."""
    program = libpcap.compile_expression(expression, link)
    try:
        return cbpf.check(program)
    except FilterError as exc:
        reason = str(exc).removeprefix("filter program: ")
        raise FilterError(
            f"filter {expression!r} compiles to a program xdpcap cannot run: {reason}"
        ) from exc


def parse_program_args(values: Sequence[str]) -> dict[str, Program]:
    """`--filter-cbpf LINK=TEXT` values, each parsed and checked."""
    programs: dict[str, Program] = {}
    for value in values:
        link, sep, text = value.partition("=")
        if not sep or link not in libpcap.LINK_TYPES:
            raise FilterError(f"--filter-cbpf {value[:40]!r}: expected ether=... or raw=...")
        programs[link] = cbpf.check(cbpf.from_text(text))
    return programs


def active_filter(
    expression: str | None, programs: Mapping[str, Program], link: str | None, iface: str
) -> ActiveFilter | None:
    """The filter for an interface of link type `link`: sent programs, else compiled here."""
    if expression is None:
        if programs:
            raise FilterError("--filter-cbpf needs the filter expression it was compiled from")
        return None
    if link is None:
        raise FilterError(
            f"{iface}: filters need an Ethernet or raw-IP interface (this one is neither)"
        )
    if programs:
        if link not in programs:
            raise FilterError(f"filter {expression!r} does not apply to {iface} ({link} link)")
        return ActiveFilter(expression, programs[link])
    return ActiveFilter(expression, compile_checked(expression, link))
