"""Inbound beside another XDP program, without a kernel: bpffs discovery, the hook map's
shape, the plan, epb_verdict in the file and the per-verdict accounting."""

from __future__ import annotations

import contextlib
import io
import struct

import pcapng
import pytest
from xdpcap.agent import contract, libbpf, netdev
from xdpcap.agent.consumer import epb_trailer, verdict_of
from xdpcap.agent.errors import AgentError
from xdpcap.agent.hooks import inbound
from xdpcap.agent.hooks.discovery import bpffs_mounts, is_hook_shape
from xdpcap.agent.pcapng import PcapngWriter
from xdpcap.agent.sampler import Counters
from xdpcap.agent.summary import CaptureSummary
from xdpcap.agent.verdicts import VerdictTally

MOUNTINFO = """\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
40 22 0:35 / /sys/fs/bpf rw,nosuid,nodev - bpf bpf rw,mode=700
97 30 0:52 / /tmp/with\\040space rw,relatime shared:50 - bpf none rw
98 30 0:53 / /mnt/notbpf rw - tmpfs bpf rw
"""
OWNER = netdev.AttachedProgram(42, "lb", "native")


def test_every_bpffs_mount_is_found_with_escaped_names() -> None:
    assert bpffs_mounts(MOUNTINFO) == ["/sys/fs/bpf", "/tmp/with space"]


@pytest.mark.parametrize(
    ("spec", "hook"),
    [
        ((libbpf.BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 5), True),
        ((libbpf.BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 8), False),  # not one slot per action
        ((libbpf.BPF_MAP_TYPE_PROG_ARRAY, 8, 4, 5), False),
        ((2, 4, 4, 5), False),  # an array, not a prog array
    ],
)
def test_hook_map_shape(spec: tuple[int, int, int, int], hook: bool) -> None:
    kind, key, value, entries = spec
    assert is_hook_shape(libbpf.MapSpec("xdpcap_hook", kind, key, value, entries, 0)) is hook


def test_plan_without_foreign_program_is_our_xdp() -> None:
    assert inbound.plan_inbound("eth0", None).kind == "xdp"
    ours = netdev.AttachedProgram(7, contract.PROGRAM_NAME, "native")  # a killed run's
    assert inbound.plan_inbound("eth0", ours).kind == "xdp"


def test_plan_beside_a_foreign_program(monkeypatch) -> None:
    monkeypatch.setattr(inbound, "find_hook_pin", lambda prog_id: None)
    plan = inbound.plan_inbound("eth0", OWNER)
    assert plan.kind == "after-xdp"
    assert plan.describe() == "inbound after XDP program lb (id 42)"
    with pytest.raises(AgentError, match="never replaces it"):
        inbound.plan_inbound("eth0", OWNER, "xdp")
    with pytest.raises(AgentError, match="no xdpcap hook map"):
        inbound.plan_inbound("eth0", OWNER, "hook")
    monkeypatch.setattr(inbound, "find_hook_pin", lambda prog_id: "/b/lb/xdpcap_hook")
    found = inbound.plan_inbound("eth0", OWNER)
    assert (found.kind, found.hook_pin, found.discovered) == ("hook", "/b/lb/xdpcap_hook", True)
    assert inbound.plan_inbound("eth0", OWNER, "after-xdp").kind == "after-xdp"


def test_after_xdp_needs_a_program() -> None:
    with pytest.raises(AgentError, match="no XDP program"):
        inbound.plan_inbound("eth0", None, "after-xdp")


def test_epb_verdict_is_read_back_by_an_independent_reader() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    writer.add_interface(name="eth0", linktype=1, snaplen=0)
    for action in range(len(contract.XDP_ACTIONS)):
        cap_len = 60 + action  # every padding length
        key = cap_len | 3 << 32 | contract.INBOUND << 48 | (action + 1) << 56
        assert verdict_of(key) == action
        head = struct_head(cap_len, len(epb_trailer(key)))
        writer.write_blocks([head + bytes(cap_len) + epb_trailer(key)], 1)
    writer.flush()
    out.seek(0)
    packets = [b for b in pcapng.FileScanner(out) if isinstance(b, pcapng.blocks.EnhancedPacket)]
    assert len(packets) == len(contract.XDP_ACTIONS)
    for action, packet in enumerate(packets):
        kind, value = packet.options.get("epb_verdict")  # python-pcapng splits the type off
        assert kind == 2  # Linux eBPF XDP
        assert int.from_bytes(value, "little") == action
        assert packet.packet_len == 60 + action


def struct_head(cap_len: int, trailer_len: int) -> bytes:
    total = 28 + cap_len + trailer_len
    return struct.pack("<IIIIIII", 6, total, 0, 0, 1, cap_len, cap_len)


def test_the_sums_close_per_verdict() -> None:
    tally = VerdictTally()
    keys = {action: 60 | (action + 1) << 56 for action in range(5)}
    tally.add_written([keys[1]] * 4 + [keys[2]] * 6)
    tally.add_past_count([keys[2]])
    split = tally.split(
        {
            1: Counters(seen=5, sampled=5),
            2: Counters(seen=10, sampled=7, filtered_out=2, not_sampled=1),
        }
    )
    for figures in split.values():
        assert figures["seen"] == (
            figures["filtered_out"]
            + figures["written"]
            + figures["lost"]
            + figures["not_sampled"]
            + figures["past_count"]
        )
    assert split["DROP"]["lost"] == 1 and split["PASS"]["past_count"] == 1


def test_xdp_hook_host_variable_reaches_the_agent_command() -> None:
    import textwrap

    from xdpcap.agent.command_line import CaptureArgs, capture_argv
    from xdpcap.orchestrator.errors import InventoryError
    from xdpcap.orchestrator.inventory.load import parse_inventory_text

    text = """
        all:
          vars:
            xdpcap_xdp_hook: /sys/fs/bpf/lb/xdpcap_hook
          hosts:
            a:
            b:
              xdpcap_xdp_hook: /run/bpf/other_hook
        """
    inventory = parse_inventory_text(textwrap.dedent(text), "inv.yml")
    assert inventory.hosts["a"].xdp_hook == "/sys/fs/bpf/lb/xdpcap_hook"
    assert inventory.hosts["b"].xdp_hook == "/run/bpf/other_hook"
    args = capture_argv(CaptureArgs("eth0", "o.pcapng", xdp_hook="/run/bpf/h"))
    assert args[args.index("--xdp-hook") + 1] == "/run/bpf/h"
    assert "--xdp-hook" not in capture_argv(CaptureArgs("eth0", "o.pcapng", direction="in"))
    with pytest.raises(InventoryError, match="xdpcap_xdp_hook: 'lb hook' is not a plain absolute"):
        parse_inventory_text("all:\n  hosts:\n    a:\n      xdpcap_xdp_hook: lb hook\n", "i.yml")


def _after_xdp_summary(**fields) -> CaptureSummary:
    return CaptureSummary(
        iface="eth0",
        file="o.pcapng",
        hooks="inbound after XDP program lb (id 42) at tcx ingress",
        inbound="inbound after XDP program lb (id 42)",
        **fields,
    )


def test_the_owners_aborted_and_redirected_packets_are_reported() -> None:
    events = {"aborted": 3, "exceptions": 0, "redirected": 7, "redirect_failed": 1}
    summary = _after_xdp_summary(owner_events=events)
    assert "; inbound after XDP program lb (id 42): aborted 3, redirected 7, redirect failed 1" in (
        summary.line()
    )
    assert f"; inbound after XDP program lb (id 42): {events}" in summary.statistics_comment()
    assert summary.to_dict()["owner_events"] == events  # run.json carries the agent's summary
    quiet = _after_xdp_summary(owner_events=dict.fromkeys(events, 0))
    assert quiet.line().endswith("(id 42): aborted 0, redirected 0")


def test_without_the_owners_tracepoints_one_line_says_so_and_the_capture_goes_on(
    monkeypatch, capsys
) -> None:
    from xdpcap.agent.capture import Capture, CaptureOptions
    from xdpcap.agent.hooks import owner_events
    from xdpcap.agent.process import btf

    def no_btf(_wanted):
        raise btf.BtfError("cannot read /sys/kernel/btf/vmlinux: No such file or directory")

    monkeypatch.setattr(btf, "members", no_btf)
    capture = Capture(CaptureOptions(iface="lo", output="o.pcapng"), events=None)
    with contextlib.ExitStack() as links:
        capture._watch_owner(FakeSampler(), links)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "xdpcap: lo: the owner's aborted and redirected packets are not counted: "
        "cannot read /sys/kernel/btf/vmlinux: No such file or directory"
    ]
    assert capture._owner is None and capture.summary.owner_events == {}
    assert capture.summary.owner_events_note in lines[0]
    assert owner_events.describe({"aborted": 0, "exceptions": 2, "redirected": 0}) == (
        "aborted 0, exceptions 2, redirected 0"
    )


class FakeSampler:
    def bytecode(self, name: str) -> bytes:
        raise AssertionError("nothing is loaded without the kernel's offsets")

    def license(self) -> str:
        return "GPL"

    def map_fd(self, name: str) -> int:
        raise AssertionError("no map is written without the kernel's offsets")
