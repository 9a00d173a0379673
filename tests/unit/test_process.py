"""Process attribution without a kernel: the comments (ptcpdump's format), what a cgroup
path says about its container, the selection flags, and the consumer's annotated blocks."""

from __future__ import annotations

import io
import struct

import pytest
from xdpcap.agent import contract, validate
from xdpcap.agent.command_line import CaptureArgs, build_parser, capture_argv
from xdpcap.agent.consumer import SampleConsumer
from xdpcap.agent.errors import UsageError
from xdpcap.agent.pcapng import PcapngWriter
from xdpcap.agent.perf_ring import PERF_RECORD_SAMPLE
from xdpcap.agent.process import btf
from xdpcap.agent.process.comments import (
    OPT_COMMENT,
    Container,
    comment_options,
    container_comment,
    container_of_cgroup,
    process_comment,
)
from xdpcap.agent.process.selection import Selection
from xdpcap.orchestrator.merge.reader import load

DOCKER_ID = "3f" * 32


def test_process_comment_is_ptcpdumps() -> None:
    text = process_comment(4121, "/usr/bin/curl", ["curl", "-s", "http://lb2/"])
    assert text == "PID: 4121\nCmd: /usr/bin/curl\nArgs: curl -s http://lb2/"
    long = process_comment(1, "/bin/x", ["x" * 300])
    assert long.endswith("...") and len(long.split("Args: ")[1]) == 256 + 3


def test_container_comment_is_ptcpdumps() -> None:
    assert container_comment("web", DOCKER_ID) == f"ContainerName: web\nContainerId: {DOCKER_ID}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/system.slice/docker-{DOCKER_ID}.scope", Container(DOCKER_ID, "docker")),
        (f"/docker/{DOCKER_ID}", Container(DOCKER_ID, "docker")),
        (
            f"/kubepods.slice/kubepods-pod1.slice/cri-containerd-{DOCKER_ID}.scope",
            Container(DOCKER_ID, "containerd"),
        ),
        (f"/kubepods/besteffort/pod1/{DOCKER_ID}", Container(DOCKER_ID, "containerd")),
        (f"/machine.slice/libpod-{DOCKER_ID}.scope/container", Container(DOCKER_ID, "podman")),
        (f"/system.slice/crio-{DOCKER_ID}.scope", Container(DOCKER_ID, "cri-o")),
        ("/system.slice/nginx.service", Container("nginx.service", "systemd")),
        ("/user.slice/user-0.slice/session-3.scope", None),
        ("/", None),
        (f"/system.slice/docker-{DOCKER_ID[:60]}.scope", None),  # not a full id
    ],
)
def test_container_of_cgroup(path: str, expected: Container | None) -> None:
    assert container_of_cgroup(path) == expected


def test_comment_options_are_padded_opt_comments() -> None:
    encoded = comment_options(["PID: 1", "ab"])
    assert encoded[:4] == struct.pack("<HH", OPT_COMMENT, 6) and encoded[4:12] == b"PID: 1\0\0"
    assert encoded[12:16] == struct.pack("<HH", OPT_COMMENT, 2) and len(encoded) == 20


def test_selection_flags_and_comm() -> None:
    assert not Selection() and Selection().flags() == 0
    both = Selection(pid=7, comm="nginx")
    assert both and both.flags() == contract.SELECT_PID | contract.SELECT_COMM
    assert both.comm_bytes() == b"nginx" + bytes(11)
    assert Selection(container="web").flags() == contract.SELECT_CGROUP
    assert Selection(comm="a-very-long-process-name").comm_bytes() == b"a-very-long-pro\0"
    assert both.describe() == "pid 7, comm 'nginx'"


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (validate.pid, 0),
        (validate.pid, 1 << 23),
        (validate.comm, ""),
        (validate.comm, "sixteen-bytes-xx"),
        (validate.container, "web;rm -rf /"),
        (validate.container, "-x"),
    ],
)
def test_selection_values_refused(check, value) -> None:
    with pytest.raises(UsageError):
        check(value)


def test_selection_values_accepted() -> None:
    assert validate.pid(4121) == 4121 and validate.comm("-bash") == "-bash"
    assert validate.container("/xdpcap.slice/x") and validate.container("nginx.service")
    assert validate.pid(None) is None and validate.container(None) is None


def _record(cookie: int, packet: bytes, direction: int = contract.OUTBOUND) -> bytes:
    options = contract.EPB_OPTIONS_LEN
    block_len = 28 + len(packet) + (-len(packet) % 4) + options + 4
    epb = struct.pack("<7I", 6, block_len, 0, 0, 5, len(packet), len(packet))
    sample = struct.pack("<QIHBBQ", 5, len(packet), 0, direction, 0, cookie) + epb + packet
    raw = struct.pack("<I", len(sample)) + sample
    return struct.pack("<IHH", PERF_RECORD_SAMPLE, 0, 8 + len(raw)) + raw


def test_annotated_block_carries_the_comments(tmp_path) -> None:
    comments = {77: comment_options([process_comment(42, "/bin/nc", ["nc", "-u", "x"])])}
    consumer = SampleConsumer(lambda cookie: comments.get(cookie, b""))
    packet = bytes(range(21))  # not a multiple of 4: padding before the options
    consumer.parse_chunk(_record(77, packet) + _record(0, packet) + _record(5, packet))
    blocks = [block for _ts, block, _key in consumer.take()]
    for block in blocks:  # both lengths agree with the block's size
        assert (
            struct.unpack_from("<I", block, 4)[0]
            == len(block)
            == struct.unpack("<I", block[-4:])[0]
        )
    stream = io.BytesIO()
    writer = PcapngWriter(stream, userappl="test")
    writer.add_interface(name="eth0", linktype=1, snaplen=65535)
    writer.write_blocks(blocks, len(blocks))
    writer.flush()
    path = tmp_path / "annotated.pcapng"
    path.write_bytes(stream.getvalue())
    packets = load(path).packets
    texts = [[v.decode() for code, v in p.options if code == OPT_COMMENT] for p in packets]
    assert texts == [["PID: 42\nCmd: /bin/nc\nArgs: nc -u x"], [], []]
    assert all(p.data == packet and p.flags is not None for p in packets)


def test_btf_member_offsets_from_a_tiny_btf() -> None:
    strings = b"\0sock_common\0skc_cookie\0other\0"
    # One struct with two members: other at bit 0, skc_cookie at bit 704 (byte 88).
    members = struct.pack("<III", 24, 0, 0) + struct.pack("<III", 13, 0, 704)
    types = struct.pack("<III", 1, (4 << 24) | 2, 136) + members
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    data = header + types + strings
    assert btf.parse_member_offsets(data, {"sock_common": "skc_cookie"}) == {"sock_common": 88}
    with pytest.raises(btf.BtfError):
        btf.parse_member_offsets(data, {"linux_binprm": "filename"})
    # Two members of one struct (net_device's ifindex and nd_net, for the owner's events).
    assert btf.parse_members(data, [("sock_common", "other"), ("sock_common", "skc_cookie")]) == {
        ("sock_common", "other"): 0,
        ("sock_common", "skc_cookie"): 88,
    }


def test_host_variables_for_process_selection() -> None:
    from xdpcap.orchestrator.inventory.load import parse_inventory_text

    inventory = parse_inventory_text(
        "web:\n  vars:\n    xdpcap_process: 'no'\n  hosts:\n"
        "    a:\n      xdpcap_pid: 4121\n      xdpcap_process: true\n"
        "    b:\n      xdpcap_comm: nginx\n      xdpcap_container: web1\n"
        "    c: {}\n",
        "inv.yml",
    )
    a, b, c = (inventory.hosts[name] for name in "abc")
    assert (a.process, a.pid, a.comm) == (True, 4121, None)
    assert (b.process, b.comm, b.container) == (False, "nginx", "web1")
    assert (c.process, c.pid, c.container) == (False, None, None)  # the group's 'no'
    on = build_parser().parse_args(capture_argv(CaptureArgs("eth0", "o", process=True)))
    assert on.process is True


@pytest.mark.parametrize(
    ("variable", "fragment"),
    [
        ("xdpcap_pid: abc", "not a process id"),
        ("xdpcap_pid: 0", "--pid must be between"),
        ("xdpcap_comm: a-name-longer-than-15", "1 to 15 bytes"),
        ("xdpcap_container: 'a;b'", "contains ';'"),
        ("xdpcap_process: maybe", "xdpcap_process"),
    ],
)
def test_bad_process_host_variables_name_host_and_key(variable: str, fragment: str) -> None:
    from xdpcap.orchestrator.errors import InventoryError
    from xdpcap.orchestrator.inventory.load import parse_inventory_text

    with pytest.raises(InventoryError) as caught:
        parse_inventory_text(f"web:\n  hosts:\n    a:\n      {variable}\n", "inv.yml")
    assert "host 'a'" in str(caught.value) and fragment in str(caught.value)


def test_run_flags_parse() -> None:
    from xdpcap.orchestrator.cli.main import build_parser as controller_parser

    args = controller_parser().parse_args(
        ["run", "-i", "inv.yml", "--comm", "nc", "--container", "web1", "--no-process", "udp"]
    )
    assert (args.comm, args.container, args.process) == ("nc", "web1", False)
