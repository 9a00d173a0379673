"""Capture filters: cBPF text and checker, libpcap compile, expressions, per-host choice."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from xdpcap.agent.filter import cbpf, libpcap, spec, to_c
from xdpcap.agent.filter.cbpf import (
    ABS,
    ALU,
    DIV,
    IND,
    JA,
    JEQ,
    JMP,
    LD,
    LDX,
    LSH,
    MEM,
    MOD,
    RET,
    ST,
    B,
    FilterError,
    H,
    Insn,
    K,
    W,
)
from xdpcap.orchestrator.errors import UsageError
from xdpcap.orchestrator.inventory.load import parse_inventory_text
from xdpcap.orchestrator.remote.filters import compile_for_hosts

RET_ALL = Insn(RET | K, 0, 0, 262144)
RET_NONE = Insn(RET | K, 0, 0, 0)
MISC_TAX, MISC_TXA = cbpf.MISC | cbpf.TAX, cbpf.MISC | cbpf.TXA
# `ja` back by n instructions from the one after it, as libpcap writes it (k is signed).
BACK_2, BACK_3, BACK_4, BACK_5 = ((1 << 32) - n for n in (2, 3, 4, 5))


# -- canonical text ------------------------------------------------------------------------


def test_text_round_trips() -> None:
    program = libpcap.compile_expression("tcp port 443 and host 10.0.0.5")
    text = cbpf.to_text(program)
    assert text.startswith(f"{len(program)},")
    assert cbpf.from_text(text) == program


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1,6 0 0",
        "1,6 0 0 1,",
        "2,6 0 0 1",  # count says 2
        "1,6 0 0 -1",
        "1,6 0 0 4294967296",  # k beyond 32 bits
        "1,65536 0 0 1",
        "1,6 256 0 1",
        "1,6 0 0 1;id",
        "1, 6 0 0 1",
        "1,6  0 0 1",
    ],
)
def test_text_is_parsed_strictly(text: str) -> None:
    with pytest.raises(FilterError):
        cbpf.from_text(text)


# -- the checker ---------------------------------------------------------------------------

ACCEPTED = {
    "return only": [RET_ALL],
    "load and compare": [
        Insn(LD | H | ABS, 0, 0, 12),
        Insn(JMP | JEQ | K, 0, 1, 0x800),
        RET_ALL,
        RET_NONE,
    ],
    "scratch written on every path": [
        Insn(LD | W | ABS, 0, 0, 0),
        Insn(JMP | JEQ | K, 0, 1, 1),
        Insn(ST, 0, 0, 3),
        Insn(ST, 0, 0, 3),
        Insn(LDX | MEM, 0, 0, 3),
        RET_ALL,
    ],
    "shift by 31": [Insn(ALU | LSH | K, 0, 0, 31), RET_ALL],
    "largest positive offset": [Insn(LD | B | IND, 0, 0, 0x7FFFFFFF), RET_ALL],
    # X += 1 until the load at [x] runs off the packet: libpcap runs it, the kernel would not.
    "loop left by a packet load": [
        Insn(LD | B | IND, 0, 0, 0),
        Insn(MISC_TXA, 0, 0, 0),
        Insn(ALU | 0x00 | K, 0, 0, 1),
        Insn(MISC_TAX, 0, 0, 0),
        Insn(JMP | JA, 0, 0, BACK_5),
        RET_ALL,
    ],
    "loop left by a jump out": [
        Insn(ALU | 0x00 | K, 0, 0, 1),
        Insn(JMP | JEQ | K, 1, 0, 10),
        Insn(JMP | JA, 0, 0, BACK_3),
        RET_ALL,
    ],
    "scratch written before the loop and in it": [
        Insn(ST, 0, 0, 1),
        Insn(LD | MEM, 0, 0, 1),
        Insn(JMP | JEQ | K, 2, 0, 7),
        Insn(ST, 0, 0, 1),
        Insn(JMP | JA, 0, 0, BACK_4),
        RET_ALL,
    ],
    "three loops": [*[Insn(JMP | JEQ | K, 1, 0, 0), Insn(JMP | JA, 0, 0, BACK_2)] * 3, RET_ALL],
}

REFUSED = {
    "empty": ([], "instructions"),
    "too long": ([Insn(LD | W | ABS, 0, 0, 0)] * 4096 + [RET_ALL], "instructions"),
    "no return at the end": ([Insn(LD | W | ABS, 0, 0, 0)], "last instruction"),
    "unknown opcode": ([Insn(0xFFFF, 0, 0, 0), RET_ALL], "unknown opcode"),
    "BPF_RET|BPF_X is not classic": ([Insn(RET | 0x08, 0, 0, 0)], "unknown opcode"),
    "division by constant 0": ([Insn(ALU | DIV | K, 0, 0, 0), RET_ALL], "division"),
    "modulo by constant 0": ([Insn(ALU | MOD | K, 0, 0, 0), RET_ALL], "division"),
    "shift by 32": ([Insn(ALU | LSH | K, 0, 0, 32), RET_ALL], "shift"),
    "scratch index 16": ([Insn(ST, 0, 0, 16), RET_ALL], "scratch"),
    "scratch read before write": ([Insn(LD | MEM, 0, 0, 2), RET_ALL], "before any write"),
    "scratch written on one path only": (
        [Insn(JMP | JEQ | K, 0, 1, 1), Insn(ST, 0, 0, 1), Insn(LD | MEM, 0, 0, 1), RET_ALL],
        "before any write",
    ),
    "extension load (SKF_AD_OFF)": ([Insn(LD | W | ABS, 0, 0, 0xFFFFF000), RET_ALL], "extension"),
    "negative offset (SKF_NET_OFF)": ([Insn(LD | B | IND, 0, 0, 0xFFF00000), RET_ALL], "negative"),
    "jump past the end": ([Insn(JMP | JEQ | K, 1, 0, 0), RET_ALL], "past the end"),
    "ja past the end": ([Insn(JMP | JA, 0, 0, 1), RET_ALL], "past the end"),
    "ja before the first instruction": (
        [RET_ALL, Insn(JMP | JA, 0, 0, 0xFFFFFFFD), RET_ALL],
        "before the first instruction",
    ),
    "ja to itself": ([Insn(JMP | JA, 0, 0, 0xFFFFFFFF), RET_ALL], "nothing in between can leave"),
    "loop nothing can leave": (
        [
            Insn(ALU | 0x00 | K, 0, 0, 1),
            Insn(MISC_TAX, 0, 0, 0),
            Insn(JMP | JA, 0, 0, BACK_3),
            RET_ALL,
        ],
        "never ends",
    ),
    "four loops": (
        [*[Insn(JMP | JEQ | K, 1, 0, 0), Insn(JMP | JA, 0, 0, BACK_2)] * 4, RET_ALL],
        "4 loops",
    ),
    "scratch written in the loop only after its read": (
        [
            Insn(JMP | JEQ | K, 4, 0, 7),
            Insn(LD | MEM, 0, 0, 1),
            Insn(JMP | JEQ | K, 2, 0, 7),
            Insn(ST, 0, 0, 1),
            Insn(JMP | JA, 0, 0, BACK_4),
            RET_ALL,
        ],
        "before any write",
    ),
    "field out of range": ([Insn(RET | K, 0, 0, 1 << 32)], "out of range"),
}


@pytest.mark.parametrize("program", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_checker_accepts(program: list[Insn]) -> None:
    assert cbpf.check(program) == tuple(program)


@pytest.mark.parametrize(
    "program,reason", list(REFUSED.values()), ids=[name.replace(" ", "-") for name in REFUSED]
)
def test_checker_refuses(program: list[Insn], reason: str) -> None:
    with pytest.raises(FilterError, match=reason):
        cbpf.check(program)


def test_refusals_are_usage_errors() -> None:
    """One line and exit 2, like every other bad input."""
    assert issubclass(FilterError, UsageError)


# -- libpcap, on a dead handle --------------------------------------------------------------


def test_compiles_without_socket_extensions() -> None:
    """A live Linux handle would load SKF_AD_* (vlan tag, protocol); a dead one never does."""
    for expression in ("vlan 10", "ether proto 0x88cc", "tcp port 443", "ip6 and udp"):
        program = libpcap.compile_expression(expression)
        cbpf.check(program)
        assert all(i.k < cbpf.NEGATIVE_OFFSET for i in program if cbpf.opclass(i.code) == LD)


def test_raw_ip_links_compile_without_the_ethernet_header() -> None:
    ether = libpcap.compile_expression("ip", "ether")
    raw = libpcap.compile_expression("ip", "raw")
    assert ether != raw
    assert Insn(LD | H | ABS, 0, 0, 12) in ether  # the ethertype
    assert Insn(LD | H | ABS, 0, 0, 12) not in raw


def test_libpcap_errors_carry_its_message() -> None:
    with pytest.raises(FilterError, match=r"'tcp port': .*syntax error"):
        libpcap.compile_expression("tcp port")
    with pytest.raises(FilterError, match="rejects all packets"):
        libpcap.compile_expression("tcp and udp")


def test_one_compile_for_every_link_type() -> None:
    compiled = spec.compile_filter("icmp")
    assert set(compiled.programs) == {"ether", "raw"}
    args = compiled.agent_args()
    assert args[-1] == "icmp"
    assert spec.parse_program_args(args[1:-1:2]) == compiled.programs


def test_ether_only_expressions_still_run_on_ethernet() -> None:
    compiled = spec.compile_filter("ether host 02:00:00:00:00:0a")
    assert set(compiled.programs) == {"ether"}
    assert "raw" in compiled.unavailable


def test_checker_refusal_names_the_expression() -> None:
    expression = " and ".join(f"ip6 protochain {p}" for p in (6, 17, 58, 1))
    with pytest.raises(FilterError, match=f"'{expression}' compiles to a program xdpcap cannot"):
        spec.compile_filter(expression)


def test_protochain_loops_are_accepted() -> None:
    """libpcap's protochain jumps back (tcpdump -r runs it); the kernel's checker would not."""
    for expression in ("ip6 protochain 6", "protochain 17"):
        program = spec.compile_filter(expression).programs["ether"]
        assert cbpf.backward_jumps(program)


# -- the translation --------------------------------------------------------------------------


def test_translation_bounds_every_packet_load() -> None:
    source = to_c.translate(libpcap.compile_expression("tcp[tcpflags] & tcp-syn != 0"))
    source = source.split("#endif")[-1]  # the function, after the helpers
    loads = source.count("xdpcap_load_")
    assert loads > 0
    assert source.count("> pkt_end) return 0") >= loads
    assert "off > " in source  # the [x + k] load's X is bounded for the verifier


def test_translation_guards_division_by_x_and_masks_shifts() -> None:
    program = cbpf.check(
        [
            Insn(LDX | W | 0x80, 0, 0, 0),  # X = len
            Insn(ALU | DIV | 0x08, 0, 0, 0),
            Insn(ALU | LSH | 0x08, 0, 0, 0),
            Insn(RET | 0x10, 0, 0, 0),
        ]
    )
    source = to_c.translate(program)
    assert "if (X == 0) return 0;" in source
    assert "(X & 31)" in source


def test_backward_jumps_are_bounded_per_loop() -> None:
    program = spec.compile_filter("ip6 protochain 6").programs["ether"]
    (head,) = to_c.loop_heads(program)
    source = to_c.translate(program)
    back = f"if (++loops{head} > {to_c.MAX_BACKWARD_JUMPS}) return 0; goto L{head};"
    assert source.count(back) == len(cbpf.backward_jumps(program)) == 2
    # Arriving from before the loop restarts its count; jumping back does not.
    assert f"E{head}: loops{head} = 0; L{head}:" in source
    assert f"__u32 loops{head} = 0;" in source


def test_forward_jumps_onto_a_loop_head_enter_it_afresh() -> None:
    program = cbpf.check(
        [
            Insn(JMP | JEQ | K, 1, 0, 0),  # jumps over the next one, onto the loop's head
            Insn(ALU | 0x00 | K, 0, 0, 2),
            Insn(ALU | 0x00 | K, 0, 0, 1),  # the head
            Insn(JMP | JEQ | K, 1, 0, 10),
            Insn(JMP | JA, 0, 0, BACK_3),
            RET_ALL,
        ]
    )
    source = to_c.translate(program)
    assert "if (A == 0U) goto E2; goto L1;" in source
    assert "if (++loops2 > " in source and "goto L2;" in source


def test_loop_free_programs_have_no_counter() -> None:
    source = to_c.filter_header(libpcap.compile_expression("ip6 and tcp port 80"))
    assert "loops" not in source


def test_the_tc_function_reads_past_the_head_with_the_helper() -> None:
    program = libpcap.compile_expression("tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x58444d41")
    header = to_c.filter_header(program)
    xdp, _, skb = header.partition("xdpcap_filter_skb(struct __sk_buff *skb,")
    assert "xdpcap_filter(const __u8 *pkt" in xdp
    assert "bpf_skb_load_bytes" not in xdp.split("#endif")[-1]  # XDP: linear data only
    skb_body = skb.split("#endif")[-1]
    # Every load: directly inside the head, else the helper; a failed helper ends it.
    loads = skb_body.count("if (pkt + ")
    assert loads > 0 and skb_body.count("xdpcap_skb_load_") >= loads
    assert skb_body.count("if (far < 0) return 0;") == skb_body.count("xdpcap_skb_load_")


def test_the_tc_function_asks_the_helper_for_offsets_past_any_head() -> None:
    program = cbpf.check([Insn(LD | B | ABS, 0, 0, 70000), RET_ALL])
    xdp = to_c.translate(program)
    tc = to_c.translate(program, "f", skb=True)
    assert "return 0;  /* never inside a packet */" in xdp
    assert "xdpcap_skb_load_b(skb, 70000U)" in tc


def test_no_filter_defines_both_functions() -> None:
    assert "xdpcap_filter(const __u8" in to_c.MATCH_ALL
    assert "xdpcap_filter_skb(struct __sk_buff *skb" in to_c.MATCH_ALL


def test_two_translations_share_the_helpers() -> None:
    program = cbpf.check([RET_ALL])
    both = to_c.translate(program, "f1") + to_c.translate(program, "f2")
    assert both.count("#ifndef XDPCAP_FILTER_HELPERS") == 2
    assert "f1(const __u8" in both and "f2(const __u8" in both


# -- expressions from the command line and from files ---------------------------------------


def test_words_become_one_expression() -> None:
    assert spec.expression_from(["tcp", "port", "443"], None) == "tcp port 443"
    assert spec.expression_from(["tcp  port\t443"], None) == "tcp port 443"
    assert spec.expression_from([], None) is None


def test_filter_file_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("# web only\ntcp port 443   # https\n  and host 10.0.0.5\n")
    assert spec.expression_from([], str(path)) == "tcp port 443 and host 10.0.0.5"


@pytest.mark.parametrize(
    "words,content,reason",
    [
        (["icmp"], "udp", "not both"),
        ([], b"\xff\xfe", "not plain ASCII"),
        ([], "x" * (spec.MAX_FILTER_FILE + 1), "larger than"),
    ],
)
def test_filter_file_problems(tmp_path: Path, words, content, reason: str) -> None:
    path = tmp_path / "f"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(FilterError, match=reason):
        spec.expression_from(words, str(path))


def test_missing_filter_file(tmp_path: Path) -> None:
    with pytest.raises(FilterError, match=r"-F .*No such file"):
        spec.expression_from([], str(tmp_path / "missing"))


@pytest.mark.parametrize("text", ["host\x1b[2J", "port 80\x00", "-d", "héllo"])
def test_expressions_are_plain_printable_text(text: str) -> None:
    with pytest.raises(FilterError):
        spec.expression_text(text)


# -- the agent's side ------------------------------------------------------------------------


def test_agent_needs_the_expression_with_its_programs() -> None:
    programs = spec.compile_filter("icmp").programs
    with pytest.raises(FilterError, match="needs the filter expression"):
        spec.active_filter(None, programs, "ether", "eth0")


def test_agent_refuses_a_program_for_another_link() -> None:
    programs = {"ether": spec.compile_filter("icmp").programs["ether"]}
    with pytest.raises(FilterError, match="does not apply"):
        spec.active_filter("icmp", programs, "raw", "tun0")


def test_agent_refuses_a_tampered_program() -> None:
    text = cbpf.to_text([Insn(LD | W | ABS, 0, 0, 0xFFFFF000), RET_ALL])
    with pytest.raises(FilterError, match="extension"):
        spec.parse_program_args([f"ether={text}"])


def test_loopback_counts_as_ethernet() -> None:
    assert spec.LINK_OF_IP_LINK_TYPE["loopback"] == "ether"


# -- one filter per host ------------------------------------------------------------------


def _hosts(text: str):
    return list(parse_inventory_text(textwrap.dedent(text), "inv.yml").hosts.values())


def test_host_variable_wins_over_the_command_line() -> None:
    hosts = _hosts(
        """
        web:
          vars:
            xdpcap_filter: tcp port 80
          hosts:
            web1:
            web2:
              xdpcap_filter: tcp port 443
        db:
          hosts:
            db1:
        """
    )
    filters = compile_for_hosts(hosts, "icmp")
    assert {name: f.expression for name, f in filters.items() if f} == {
        "web1": "tcp port 80",
        "web2": "tcp port 443",
        "db1": "icmp",
    }
    assert compile_for_hosts(_hosts("all:\n  hosts:\n    a:\n"), None) == {"a": None}


def test_a_bad_host_filter_names_its_host() -> None:
    hosts = _hosts("all:\n  hosts:\n    a:\n    b:\n      xdpcap_filter: tcp port\n")
    with pytest.raises(UsageError, match=r"^b: xdpcap_filter: .*syntax error"):
        compile_for_hosts(hosts, None)


def test_each_distinct_expression_compiles_once(monkeypatch) -> None:
    calls = []
    real = spec.compile_filter
    monkeypatch.setattr(spec, "compile_filter", lambda e: calls.append(e) or real(e))
    hosts = _hosts("all:\n  hosts:\n" + "".join(f"    h{i}:\n" for i in range(20)))
    filters = compile_for_hosts(hosts, "udp")
    assert calls == ["udp"]
    assert len({id(f) for f in filters.values()}) == 1
