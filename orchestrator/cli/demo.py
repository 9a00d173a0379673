"""`xdpcap demo`: the whole product on this machine, in one command.

Brings up the namespace lab, makes traffic between its hosts, captures on all of them
at once over real SSH, prints a summary of the merged capture and tears the lab down.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from rich.console import Console

from ..errors import XdpcapError
from ..inventory.load import load_inventory
from ..lab.namespaces import Lab
from ..remote.host import CaptureSettings
from ..remote.ssh import SshSettings
from ..run.results import print_result
from ..run.runner import Run, RunOptions
from .lab import host_count, seconds_between

DEMO_LAB = "demo"
LISTED_PACKETS = 15


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="lab up, traffic, capture on every lab host, merge, lab down"
    )
    # Checked by the parser: a bad value must not bring a lab up first.
    demo.add_argument("--hosts", type=host_count, default=3)
    demo.add_argument("--duration", type=seconds_between(1, 3600), default=6.0)
    demo.add_argument("--runs-dir", type=Path, default=Path("xdpcap-runs"))
    demo.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    demo.set_defaults(func=demo_command)


def _traffic_until(lab: Lab, stop: threading.Event, console: Console) -> None:
    while not stop.is_set():
        try:
            lab.traffic(seconds=2.0)
        except XdpcapError as exc:
            console.print(f"[yellow]lab traffic: {exc}[/yellow]")
            stop.wait(1.0)


def summarize(merged: Path, console: Console) -> None:
    """A tshark-style look at the merged file: its interfaces and its first packets."""
    if shutil.which("capinfos"):
        info = subprocess.run(
            ["capinfos", "-c", "-u", "-a", "-e", "-o", "-M", str(merged)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print(info.stdout.rstrip(), file=sys.stderr)
    if shutil.which("tshark"):
        listing = subprocess.run(
            [
                "tshark",
                "-r",
                str(merged),
                "-T",
                "fields",
                "-E",
                "separator=\t",
                "-e",
                "frame.number",
                "-e",
                "frame.time_relative",
                "-e",
                "frame.interface_name",
                "-e",
                "_ws.col.Source",
                "-e",
                "_ws.col.Destination",
                "-e",
                "_ws.col.Protocol",
                "-e",
                "_ws.col.Info",
                "-Y",
                "icmp || icmpv6.type == 128 || icmpv6.type == 129",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print("first echo requests and replies (interface = host:iface):", file=sys.stderr)
        # -c would count packets before the filter: keep the first matches instead.
        print("\n".join(listing.stdout.splitlines()[:LISTED_PACKETS]), file=sys.stderr)


def demo_command(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    lab = Lab(DEMO_LAB, hosts=args.hosts, progress=lambda m: console.print(f"lab: {m}"))
    stop = threading.Event()
    try:
        inventory = load_inventory(lab.up())
        traffic = threading.Thread(target=_traffic_until, args=(lab, stop, console), daemon=True)
        traffic.start()
        options = RunOptions(
            iface="eth0",
            capture=CaptureSettings(
                duration_s=args.duration,
                count=None,
                snaplen=262144,
                sample_rate=1,
                xdp_mode="auto",
                start_timeout_s=120.0,
            ),
            runs_dir=args.runs_dir,
        )
        result = Run(inventory.select(None), options, SshSettings(), console).execute()
        stop.set()
        traffic.join(timeout=30)
        print_result(result, console)
        if result.merged is not None:
            summarize(result.merged, console)
            print(result.merged)
        return result.exit_code
    finally:
        stop.set()
        if not args.keep_lab:
            lab.down()
            console.print("lab: down")
