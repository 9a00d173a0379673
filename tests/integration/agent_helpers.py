"""Run the agent inside a namespace and read what it wrote, for the integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .veth import in_ns

FOREIGN_PROGRAM = """
import shutil, sys, tempfile
from pathlib import Path
sys.path.append("/usr/lib/python3/dist-packages")
from xdpcap.agent.headers import apply_environment
from xdpcap.agent.headers import find_kernel_headers
work = tempfile.mkdtemp(prefix="xdpcap-test-headers-")  # bcc's header farm, removed below
apply_environment(find_kernel_headers(Path(work)))
from bcc import BPF
b = BPF(text="int foreign_pass(struct xdp_md *ctx) { return XDP_PASS; }")
b.attach_xdp(sys.argv[1], b.load_func("foreign_pass", BPF.XDP), 0)  # netlink: stays attached
shutil.rmtree(work)
"""


def agent_argv(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "xdpcap.agent", *args]


def start_agent(ns: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        agent_argv(ns, "capture", "--json-events", *args),
        env={**os.environ, **env} if env else None,
        stdin=subprocess.DEVNULL,  # EOF: no controller, nothing to hand over
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_event(proc: subprocess.Popen, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"agent ended before {name!r}: {proc.stderr.read() if proc.stderr else ''}"
            )
        event = json.loads(line)
        if event["event"] == name:
            return event
        if event["event"] == "error":
            raise AssertionError(f"agent error: {event['message']}")
    raise AssertionError(f"no {name!r} event within {timeout} s")


def xdp_program(ns: str, ifname: str) -> dict | None:
    out = in_ns(ns, "ip", "-d", "-j", "link", "show", "dev", ifname).stdout
    xdp = json.loads(out)[0].get("xdp")
    return xdp.get("prog") if xdp else None


def attach_foreign_program(ns: str, ifname: str) -> dict:
    in_ns(ns, sys.executable, "-c", FOREIGN_PROGRAM, ifname)
    prog = xdp_program(ns, ifname)
    assert prog is not None and prog["name"] == "foreign_pass"
    return prog


def tshark_fields(path: Path, *fields: str, display_filter: str | None = None) -> list[list[str]]:
    argv = ["tshark", "-r", str(path), "-T", "fields"]
    for field in fields:
        argv += ["-e", field]
    if display_filter:
        argv += ["-Y", display_filter]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def capinfos(path: Path) -> str:
    return subprocess.run(
        ["capinfos", "-M", str(path)], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def read_isbs(path: Path) -> list[dict]:
    """Interface statistics through python-pcapng, an independent reader."""
    import pcapng

    stats = []
    with path.open("rb") as f:
        for block in pcapng.FileScanner(f):
            if isinstance(block, pcapng.blocks.InterfaceStatistics):
                stats.append(
                    {
                        k: block.options.get(k)
                        for k in (
                            "isb_ifrecv",
                            "isb_ifdrop",
                            "isb_filteraccept",
                            "isb_osdrop",
                            "isb_usrdeliv",
                        )
                    }
                )
    return stats


def read_isb_comments(path: Path) -> list[str]:
    """Each interface statistics block's comment, through python-pcapng."""
    import pcapng

    with path.open("rb") as f:
        return [
            block.options.get("opt_comment")
            for block in pcapng.FileScanner(f)
            if isinstance(block, pcapng.blocks.InterfaceStatistics)
        ]


def read_headers(path: Path) -> tuple[dict, list[tuple[int, dict]]]:
    """The section header's options and each interface's (snaplen, options), read by
    python-pcapng."""
    import pcapng

    shb: dict = {}
    idbs: list[tuple[int, dict]] = []
    with path.open("rb") as f:
        for block in pcapng.FileScanner(f):
            if isinstance(block, pcapng.blocks.SectionHeader):
                shb = dict(block.options.items())
            elif isinstance(block, pcapng.blocks.InterfaceDescription):
                idbs.append((block.snaplen, dict(block.options.items())))
    return shb, idbs
