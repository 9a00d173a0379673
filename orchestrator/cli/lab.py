"""`xdpcap lab ...`: the namespace lab and the Vagrant inventory on the command line.

Data (paths, inventories, status tables) go to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..lab import box, libvirt
from ..lab.namespaces import Lab
from ..lab.plan import DEFAULT_HOSTS, DEFAULT_NAME, MAX_HOSTS
from ..lab.system import render_yaml
from ..lab.vagrant import read_vagrant_ssh_config, vagrant_inventory


def register(subparsers: Any) -> None:
    """Add `lab` and its sub-commands to the main CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help=f"lab name; hosts are NAME1..NAMEn (default: {DEFAULT_NAME})",
    )
    common.add_argument(
        "--state-dir",
        type=Path,
        help="the lab's files (default: $XDPCAP_LAB_DIR/NAME or /var/tmp/xdpcap-lab/NAME)",
    )
    lab = subparsers.add_parser(
        "lab",
        help="a test lab of hosts made of network namespaces on this machine",
        description="Hosts as network namespaces with their own sshd, reachable from here.",
    )
    lab.set_defaults(func=handler)
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    up = sub.add_parser("up", parents=[common], help="build the lab; print its inventory path")
    up.add_argument("--hosts", type=host_count, default=DEFAULT_HOSTS, help="default: 3")
    sub.add_parser("down", parents=[common], help="remove everything the lab made")
    status = sub.add_parser("status", parents=[common], help="hosts, sshd, addresses")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    sub.add_parser("inventory", parents=[common], help="print the lab's inventory path")
    traffic = sub.add_parser(
        "traffic", parents=[common], help="ping, TCP and UDP between every pair of hosts"
    )
    traffic.add_argument("--seconds", type=seconds_between(0, 3600), default=3.0, help="default: 3")

    vagrant = sub.add_parser(
        "vagrant-inventory",
        help="print an Ansible inventory for the VMs of the Vagrantfile",
        description="Convert `vagrant ssh-config` output into an Ansible YAML inventory.",
    )
    vagrant.add_argument(
        "--ssh-config",
        metavar="FILE",
        help="read saved `vagrant ssh-config` output ('-' for stdin) instead of running vagrant",
    )
    vagrant.add_argument("--vagrant-dir", type=Path, help="where the Vagrantfile is")

    vagrant_box = sub.add_parser(
        "vagrant-box",
        help="build the VM lab's box from Debian packages and add it to Vagrant",
        description=(
            "Build a libvirt box of Debian 12 (6.1 kernel, its headers, python3-bpfcc, sshd, "
            "sudo, user vagrant) with debootstrap, cache it, and add it to Vagrant as "
            f"{box.BOX_NAME}. Does nothing when the cached box is already added."
        ),
    )
    vagrant_box.add_argument(
        "--cache",
        type=Path,
        default=box.DEFAULT_CACHE,
        help=f"where the box and its kernel are kept (default: {box.DEFAULT_CACHE})",
    )
    vagrant_box.add_argument(
        "--mirror", help="Debian mirror for debootstrap (default: the one apt uses here)"
    )
    services = sub.add_parser(
        "libvirt",
        help="start or stop libvirtd and virtlogd where no init system runs",
        description=(
            "start: run virtlogd and libvirtd unless a libvirtd answers, and record their pids; "
            "stop: end only the pids that start recorded."
        ),
    )
    services.add_argument("action", choices=("start", "stop"))


def handler(args: argparse.Namespace) -> int:
    if args.lab_command == "vagrant-inventory":
        return _vagrant_inventory(args)
    if args.lab_command == "vagrant-box":
        return _vagrant_box(args)
    if args.lab_command == "libvirt":
        return _libvirt(args)
    lab = Lab(
        name=args.name,
        hosts=getattr(args, "hosts", DEFAULT_HOSTS),
        state_dir=args.state_dir,
        progress=_progress,
    )
    commands = {
        "up": _up,
        "down": _down,
        "status": _status,
        "inventory": _inventory,
        "traffic": _traffic,
    }
    return commands[args.lab_command](lab, args)


def _progress(message: str) -> None:
    print(f"xdpcap lab: {message}", file=sys.stderr)


def _up(lab: Lab, args: argparse.Namespace) -> int:
    print(lab.up())
    return 0


def _down(lab: Lab, args: argparse.Namespace) -> int:
    lab.down()
    return 0


def _inventory(lab: Lab, args: argparse.Namespace) -> int:
    lab.require_up()
    print(lab.inventory_path)
    return 0


def _traffic(lab: Lab, args: argparse.Namespace) -> int:
    report = lab.traffic(args.seconds)
    tcp, udp = sum(report["tcp"].values()), sum(report["udp"].values())
    _progress(
        f"{len(report['ping'])} ping pairs answered, {tcp} TCP and {udp} UDP echoes "
        f"in {args.seconds:g} s"
    )
    return 0


def _status(lab: Lab, args: argparse.Namespace) -> int:
    """Exit status 0 when the lab is up and healthy, 1 otherwise (handy in scripts)."""
    report = lab.status()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["up"] else 1
    state = "up" if report["up"] else "not up"
    print(f"lab {report['name']}: {state}  ({report['state_dir']})")
    for host in report["hosts"]:
        sshd = f"sshd {host['sshd_pid']}" if host["sshd_alive"] else "sshd DOWN"
        exists = "" if host["exists"] else "  NAMESPACE MISSING"
        print(
            f"  {host['name']:<10} {host['namespace']:<18} {host['ipv4']:<15} "
            f"{host['ipv6']:<24} {sshd}{exists}"
        )
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    if report["leftovers"]:
        print(f"  leftovers (removed by `xdpcap lab down`): {' '.join(report['leftovers'])}")
    return 0 if report["up"] else 1


def _vagrant_inventory(args: argparse.Namespace) -> int:
    if args.ssh_config == "-":
        text = sys.stdin.read()
    elif args.ssh_config:
        try:
            text = Path(args.ssh_config).read_text()
        except OSError as exc:
            raise UsageError(f"--ssh-config {args.ssh_config}: {exc.strerror}") from exc
    else:
        text = read_vagrant_ssh_config(args.vagrant_dir)
    sys.stdout.write(render_yaml(vagrant_inventory(text)))
    return 0


def _vagrant_box(args: argparse.Namespace) -> int:
    plan = box.BoxPlan(cache=args.cache, mirror=args.mirror or box.apt_mirror())
    print(box.build_box(plan, _progress))
    return 0


def _libvirt(args: argparse.Namespace) -> int:
    if args.action == "start":
        started = libvirt.start()
        done = ", ".join(f"{name} (pid {pid})" for name, pid in started.items())
        _progress(f"started {done}" if started else "libvirtd already answers: nothing started")
    else:
        stopped = libvirt.stop()
        _progress(f"stopped {', '.join(stopped)}" if stopped else "nothing this lab started runs")
    return 0


def host_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_HOSTS:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_HOSTS} hosts, not {value}")
    return value


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds in [low, high] (NaN is refused too)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"between {low:g} and {high:g} seconds, not {value:g}")
        return value

    return parse
