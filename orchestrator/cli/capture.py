"""`xdpcap capture` (the agent, run locally) and `xdpcap build-agent`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...agent import __main__ as agent_cli
from ...agent.command_line import add_capture_arguments
from ..errors import UsageError
from ..remote.bundle import write_agent_bundle


def register(sub: argparse._SubParsersAction) -> None:
    capture = sub.add_parser(
        "capture",
        help="capture on one interface of this host (the agent, run locally)",
        description="Capture with XDP on one local interface and write pcapng.",
    )
    add_capture_arguments(capture)
    capture.set_defaults(func=_capture)

    build = sub.add_parser("build-agent", help="write the agent zipapp (for manual deployment)")
    build.add_argument("-o", "--output", default="xdpcap-agent.pyz")
    build.set_defaults(func=_build)


def _capture(args: argparse.Namespace) -> int:
    return agent_cli.run_capture_command(args)


def _build(args: argparse.Namespace) -> int:
    try:
        bundle = write_agent_bundle(Path(args.output))
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"{args.output} sha256 {bundle.sha256}")
    return 0
