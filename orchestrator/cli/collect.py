"""`xdpcap collect RUN_FOLDER`: come back for captures a run could not fetch, and merge again."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ...agent import validate
from ..inventory import ansible as inventory_ansible
from ..run.collect import WAIT_FOR_CAPTURE_S, CollectOptions, collect
from ..run.results import print_result


def register(sub: argparse._SubParsersAction) -> None:
    collect = sub.add_parser("collect", help="fetch what a run could not, and merge again")
    collect.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    collect.add_argument(
        "--wait",
        type=float,
        default=WAIT_FOR_CAPTURE_S,
        help="seconds to wait for a capture still running (default 60)",
    )
    collect.add_argument("--accept-new-host-keys", action="store_true")
    collect.add_argument(
        "--inventory-reader",
        choices=inventory_ansible.READERS,
        help="who reads the run's inventory again (as `xdpcap run`)",
    )
    collect.add_argument("--vault-password-file", help="decrypt !vault values in the inventory")
    collect.set_defaults(func=collect_command)


def collect_command(args: argparse.Namespace) -> int:
    validate.positive_number("--wait", args.wait, 3600)
    console = Console(stderr=True)
    result = collect(
        CollectOptions(
            run_dir=args.run_dir,
            wait_s=args.wait,
            accept_new_host_keys=args.accept_new_host_keys,
            inventory_reader=args.inventory_reader,
            vault_password_file=args.vault_password_file,
        ),
        console,
    )
    print_result(result, console)
    if result.merged is not None:
        print(result.merged)
    return result.exit_code
