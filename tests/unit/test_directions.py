"""Directions without a kernel: EPB trailers, the per-direction split, options, variables."""

from __future__ import annotations

import struct
import textwrap

import pytest
from xdpcap.agent import contract, validate
from xdpcap.agent.consumer import SampleConsumer, cap_len_of, direction_of, epb_trailer
from xdpcap.agent.errors import UsageError
from xdpcap.agent.hooks.tc import tcx_expected
from xdpcap.agent.pcapng import EPB_FLAG_INBOUND, EPB_FLAG_OUTBOUND
from xdpcap.agent.perf_ring import PERF_RECORD_SAMPLE, SAMPLE_DATA_OFFSET
from xdpcap.agent.sampler import Counters
from xdpcap.agent.summary import CaptureSummary, DirectionSummary, split_by_direction
from xdpcap.orchestrator.errors import InventoryError
from xdpcap.orchestrator.inventory.load import parse_inventory_text
from xdpcap.orchestrator.remote.state import HostState
from xdpcap.orchestrator.run.tables import final_lines


def _key(cap_len: int, queue: int, direction: int) -> int:
    return cap_len | queue << 32 | direction << 48


@pytest.mark.parametrize(
    ("direction", "flags"), [(contract.INBOUND, EPB_FLAG_INBOUND), (contract.OUTBOUND, 2)]
)
def test_trailer_carries_direction_and_queue(direction: int, flags: int) -> None:
    trailer = epb_trailer(_key(61, 3, direction))
    padding = trailer[:3]  # 61 bytes of packet: 3 of padding
    code, length, value = struct.unpack_from("<HHI", trailer, 3)
    assert padding == b"\0\0\0" and (code, length, value) == (2, 4, flags)
    code, length, queue = struct.unpack_from("<HHI", trailer, 11)
    assert (code, length, queue) == (6, 4, 3)
    assert EPB_FLAG_OUTBOUND == 2


def test_key_helpers() -> None:
    key = _key(1500, 7, contract.OUTBOUND)
    assert cap_len_of(key) == 1500 and direction_of(key) == 1
    assert sum(map(direction_of, [_key(1, 0, 0), key, key])) == 2  # counts outbound


def test_consumer_reads_the_direction_from_the_record() -> None:
    packet = bytes(range(20))
    epb = struct.pack("<7I", 6, 28 + 20 + 20 + 4, 0, 0, 5, 20, 20)
    sample = struct.pack("<QIHHQ", 5, 20, 1, contract.OUTBOUND, 0) + epb + packet
    raw = struct.pack("<I", len(sample)) + sample
    record = struct.pack("<IHH", PERF_RECORD_SAMPLE, 0, 8 + len(raw)) + raw
    assert SAMPLE_DATA_OFFSET == 12
    consumer = SampleConsumer()
    consumer.parse_chunk(record)
    ((ts, block, key),) = consumer.take()
    assert ts == 5 and direction_of(key) == contract.OUTBOUND and cap_len_of(key) == 20
    assert block[28:48] == packet
    flags = struct.unpack_from("<I", block, 48 + 4)[0]
    assert flags == EPB_FLAG_OUTBOUND


def test_split_closes_in_each_direction() -> None:
    summary = CaptureSummary(iface="x", file="/dev/null")
    summary.written, summary.past_count = 17, 3
    by_direction = {
        contract.INBOUND: Counters(seen=20, sampled=12, not_sampled=2, filtered_out=6),
        contract.OUTBOUND: Counters(seen=15, sampled=8, output_failed=1, filtered_out=6),
    }
    split = split_by_direction(by_direction, summary, written_out=7, past_count_out=1)
    assert split["in"] == DirectionSummary(20, 6, 10, 0, 2, 2)
    assert split["out"] == DirectionSummary(15, 6, 7, 1, 0, 1)
    for d in split.values():
        assert d.seen == d.filtered_out + d.written + d.lost + d.not_sampled + d.past_count


def test_summary_line_shows_the_split() -> None:
    summary = CaptureSummary(iface="eth0", file="f", hooks="XDP ingress native + tcx egress")
    summary.seen, summary.written = 10, 10
    summary.directions = {
        "in": DirectionSummary(4, written=4),
        "out": DirectionSummary(6, written=6),
    }
    line = summary.line()
    assert "(XDP ingress native + tcx egress)" in line
    assert "(in: seen 4, written 4; out: seen 6, written 6)" in line
    assert "before XDP" not in line  # no XDP mode recorded: nothing to say about it


def test_direction_is_validated() -> None:
    assert validate.direction("inout") == "inout"
    with pytest.raises(UsageError, match="expected one of in, out, inout"):
        validate.direction("both")


def test_direction_host_variable() -> None:
    inventory = parse_inventory_text(
        textwrap.dedent(
            """
            all:
              hosts:
                a:
                  xdpcap_direction: out
                b:
            """
        ),
        "inv.yml",
    )
    assert inventory.hosts["a"].direction == "out" and inventory.hosts["b"].direction is None
    with pytest.raises(InventoryError, match="xdpcap_direction: 'both' is not one of"):
        parse_inventory_text("all:\n  hosts:\n    a:\n      xdpcap_direction: both\n", "i.yml")


def test_final_lines_show_written_per_direction() -> None:
    state = HostState("web1", "10.0.0.1", "eth0", state="done", local_file="f")
    state.summary = {
        "written": 10,
        "lost": 0,
        "seen": 10,
        "directions": {"in": {"written": 4}, "out": {"written": 6}},
    }
    (line,) = final_lines([state])
    assert "written 10 (in 4, out 6)," in line


@pytest.mark.parametrize(
    ("release", "expected"),
    [("6.1.0-18-amd64", False), ("6.6.0", True), ("6.18.44-fc", True), ("5.15.0", False)],
)
def test_tcx_expected_from_the_release(release: str, expected: bool) -> None:
    assert tcx_expected(release) is expected


def test_a_replaced_clsact_filter_in_our_place_is_left_alone(monkeypatch) -> None:
    """Someone ran `tc filter replace` on our handle and priority: it is theirs now."""
    from xdpcap.agent import libbpf
    from xdpcap.agent.hooks import tc

    deleted = []
    monkeypatch.setattr(libbpf, "tc_egress_query", lambda *args: 777)
    monkeypatch.setattr(libbpf, "tc_egress_detach", lambda *args: deleted.append(args))
    hook = tc.TcEgressHook("eth0", "clsact")
    hook._ifindex, hook._filter_prog_id = 5, 42  # as after our attach of program 42
    hook.detach()
    assert deleted == []
    hook._filter_prog_id = 777  # still ours: removed
    hook.detach()
    assert deleted == [(5, tc.TC_HANDLE, tc.TC_PRIORITY, libbpf.BPF_TC_EGRESS)]
