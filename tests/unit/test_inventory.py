"""Ansible inventories: YAML, INI and `ansible-inventory --list` JSON, precedence, --limit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from xdpcap.orchestrator.errors import InventoryError
from xdpcap.orchestrator.inventory.limit import split_pattern
from xdpcap.orchestrator.inventory.load import load_inventory, parse_inventory_text
from xdpcap.orchestrator.inventory.model import Host, Inventory, format_host_list

DATA = Path(__file__).parent / "data" / "inventory"
EXAMPLE = Path(__file__).parents[2] / "inventories" / "example.yml"


def parse(text: str, source: str = "inv.yml") -> Inventory:
    return parse_inventory_text(textwrap.dedent(text), source)


def names(hosts: list[Host] | Inventory) -> list[str]:
    if isinstance(hosts, Inventory):
        return list(hosts.hosts)
    return [host.name for host in hosts]


def one_host_yaml(key: str, host_vars: str = "") -> str:
    return f"web:\n  hosts:\n    {key!r}:{host_vars}\n"


# --------------------------------------------------------------------------------------------
# Host keys: ranges, ports, IPv6
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("web[01:03].example.com", ["web01.example.com", "web02.example.com", "web03.example.com"]),
        ("web[1:3]", ["web1", "web2", "web3"]),
        ("web[08:10]", ["web08", "web09", "web10"]),
        ("web[001:002]", ["web001", "web002"]),
        ("db-[a:c]", ["db-a", "db-b", "db-c"]),
        ("db-[x:B]", ["db-x", "db-y", "db-z", "db-A", "db-B"]),  # Ansible's ascii_letters order
        ("n[1:9:3]", ["n1", "n4", "n7"]),
        ("n[a:e:2]", ["na", "nc", "ne"]),
        ("r[1:2]-[a:b]", ["r1-a", "r1-b", "r2-a", "r2-b"]),
        ("[a:b]-edge", ["a-edge", "b-edge"]),
        ("w[:2]", ["w0", "w1", "w2"]),  # an empty start is 0, as in Ansible
        ("192.0.2.[1:3]", ["192.0.2.1", "192.0.2.2", "192.0.2.3"]),
        ("2001:db8::[1:2]", ["2001:db8::1", "2001:db8::2"]),
        ("plain.example.com", ["plain.example.com"]),
    ],
)
def test_ranges_expand_like_ansible(key: str, expected: list[str]) -> None:
    assert names(parse(one_host_yaml(key))) == expected


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("web[3:1]", "range '[3:1]' is empty"),
        ("web[01:3]", "zero-padded"),
        ("web[1:3:0]", "step must be a positive integer"),
        ("web[1:3:x]", "step must be a positive integer"),
        ("web[a:3]", "numeric or single letters"),
        ("web[aa:bb]", "numeric or single letters"),
        ("web[1]", "must be [start:end]"),
        ("web[1:2:3:4]", "must be [start:end]"),
        ("web[1:]", "numeric or single letters"),
        ("web[1:2", "unbalanced"),
        ("web1:2]", "port '2]' is not a number"),
        ("web[1:99999999]", "larger than 65536 hosts"),
        ("a[1:300]b[1:300]", "more than 65536 hosts"),
    ],
)
def test_bad_ranges_name_group_and_line(key: str, fragment: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse(one_host_yaml(key))
    message = str(caught.value)
    assert message.startswith("inv.yml:3: group 'web': ")
    assert fragment in message


@pytest.mark.parametrize(
    ("key", "name", "address", "port"),
    [
        ("web:2222", "web", "web", 2222),
        ("192.0.2.5:22", "192.0.2.5", "192.0.2.5", 22),
        ("2001:db8::1", "2001:db8::1", "2001:db8::1", None),  # bare IPv6: no port, ever
        ("::1", "::1", "::1", None),
        ("fe80::1%eth0", "fe80::1%eth0", "fe80::1%eth0", None),
        ("[2001:db8::1]:2222", "2001:db8::1", "2001:db8::1", 2222),
        ("[2001:db8::1]", "2001:db8::1", "2001:db8::1", None),
        ("[web]:2200", "web", "web", 2200),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1", "::ffff:192.0.2.1", None),
        ("web:65535", "web", "web", 65535),
    ],
)
def test_host_port_and_ipv6_keys(key: str, name: str, address: str, port: int | None) -> None:
    host = parse(one_host_yaml(key)).hosts[name]
    assert (host.address, host.port) == (address, port)


def test_ranges_with_port_give_every_host_the_port() -> None:
    inventory = parse(one_host_yaml("web[1:2].example.com:2222"))
    assert [(h.name, h.port) for h in inventory.hosts.values()] == [
        ("web1.example.com", 2222),
        ("web2.example.com", 2222),
    ]


def test_explicit_ansible_port_beats_key_port_and_key_port_beats_group() -> None:
    inventory = parse(
        """\
        web:
          vars: {ansible_port: 1000}
          hosts:
            a:2000:
            b:2000: {ansible_port: 3000}
            c:
        """
    )
    assert {h.name: h.port for h in inventory.hosts.values()} == {"a": 2000, "b": 3000, "c": 1000}


# --------------------------------------------------------------------------------------------
# Variable precedence
# --------------------------------------------------------------------------------------------

PRECEDENCE = """\
all:
  vars: {level: all, from_all: 1}
  children:
    parent:
      vars: {level: parent, from_parent: 1}
      children:
        child:
          vars: {level: child, from_child: 1}
          hosts:
            h1:
            h2: {level: host}
beta:
  vars: {same_depth: beta}
  hosts: {h1: }
alpha:
  vars: {same_depth: alpha, level: alpha}
  hosts: {h1: }
"""


@pytest.mark.parametrize(
    ("host", "var", "expected"),
    [
        ("h1", "level", "child"),  # depth 2 beats alpha/beta at depth 1 and all at depth 0
        ("h2", "level", "host"),
        ("h1", "from_all", 1),
        ("h1", "from_parent", 1),
        ("h1", "from_child", 1),
        ("h1", "same_depth", "beta"),  # same depth: sorted by name, the later name wins
        ("h2", "same_depth", None),
    ],
)
def test_precedence_all_parent_child_host(host: str, var: str, expected: object) -> None:
    assert parse(PRECEDENCE).hosts[host].vars.get(var) == expected


def test_host_groups_are_in_precedence_order() -> None:
    inventory = parse(PRECEDENCE)
    assert inventory.hosts["h1"].groups == ("all", "alpha", "beta", "parent", "child")
    assert inventory.hosts["h2"].groups == ("all", "parent", "child")


def test_group_priority_reorders_groups_of_the_same_depth() -> None:
    inventory = parse(
        """\
        alpha:
          vars: {v: alpha, ansible_group_priority: 10}
          hosts: {h: }
        beta:
          vars: {v: beta}
          hosts: {h: }
        """
    )
    assert inventory.hosts["h"].vars["v"] == "alpha"


def test_group_both_top_level_and_child_takes_the_deeper_depth() -> None:
    inventory = parse(
        """\
        zz_top:
          vars: {v: zz_top}
          hosts: {h: }
        outer:
          children:
            aa_inner:
              vars: {v: aa_inner}
        aa_inner:
          hosts: {h: }
        """
    )
    assert inventory.hosts["h"].vars["v"] == "aa_inner"


def test_group_hosts_include_descendants_and_ungrouped_is_implicit() -> None:
    inventory = parse(PRECEDENCE + "ungrouped:\n  hosts: {loner: }\nall2:\n  hosts: {h9: }\n")
    assert inventory.groups["parent"].hosts == ("h1", "h2")
    assert inventory.groups["all"].hosts == ("h1", "h2", "loner", "h9")
    assert inventory.groups["ungrouped"].hosts == ("loner",)
    assert inventory.groups["parent"].children == ("child",)


def test_host_in_a_group_is_removed_from_ungrouped() -> None:
    inventory = parse("ungrouped:\n  hosts: {a: }\nweb:\n  hosts: {a: }\n")
    assert inventory.groups["ungrouped"].hosts == ()
    assert inventory.hosts["a"].groups == ("all", "web")


def test_yaml_merge_keys_anchors_and_ansible_tags() -> None:
    inventory = parse(
        """\
        web:
          vars: &base {ansible_user: ops, note: !unsafe "{{ not templated }}"}
          hosts:
            a:
              <<: *base
              ansible_user: admin
              secret_thing: !vault |
                $ANSIBLE_VAULT;1.1;AES256
                3133
        """
    )
    host = inventory.hosts["a"]
    assert host.user == "admin"
    assert host.vars["note"] == "{{ not templated }}"
    assert "vault" in repr(host.vars["secret_thing"])


# --------------------------------------------------------------------------------------------
# Connection settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", True),
        ("no", False),
        ("'true'", True),
        ("'False'", False),
        ("1", True),
        ("0", False),
        ("'1'", True),
        ("on", True),
        ("'off'", False),
        ("null", False),
    ],
)
def test_become_accepts_ansible_booleans(value: str, expected: bool) -> None:
    host = parse(f"web:\n  hosts:\n    a: {{ansible_become: {value}}}\n").hosts["a"]
    assert host.become is expected


def test_connection_fields_and_aliases() -> None:
    inventory = parse(
        """\
        web:
          hosts:
            a:
              ansible_ssh_host: 192.0.2.2
              ansible_host: 192.0.2.1
              ansible_ssh_user: ignored
              ansible_user: admin
              ansible_ssh_private_key_file: ~/.ssh/capture
              ansible_ssh_common_args: -o ProxyJump=bastion
              ansible_become_user: root
              ansible_become_pass: hunter2
              ansible_python_interpreter: /usr/bin/python3
              xdpcap_iface: ens1f0
        """
    )
    host = inventory.hosts["a"]
    # As current ansible-core: the modern name beats its old alias.
    assert host.address == "192.0.2.1"
    assert host.user == "admin"
    assert host.key_file == str(Path("~/.ssh/capture").expanduser())
    assert host.ssh_common_args == "-o ProxyJump=bastion"
    assert host.become_user == "root"
    assert host.become_password == "hunter2"
    assert host.python_interpreter == "/usr/bin/python3"
    assert host.iface == "ens1f0"
    assert host.port is None
    assert not host.become


def test_numbers_are_read_as_text_for_string_fields() -> None:
    host = parse("web:\n  hosts:\n    a: {ansible_user: 1000, ansible_port: '22'}\n").hosts["a"]
    assert (host.user, host.port) == ("1000", 22)


def test_become_password_never_in_repr() -> None:
    inventory = parse(
        """\
        all:
          vars: {ansible_become_password: s3cret-group}
        web:
          hosts:
            a: {ansible_become_password: s3cret-host, ansible_password: s3cret-ssh}
        """
    )
    host = inventory.hosts["a"]
    assert host.become_password == "s3cret-host"
    for text in (repr(host), str(host), repr(inventory), repr(host.vars), repr(inventory.groups)):
        assert "s3cret" not in text
    assert "<hidden>" in repr(host.vars)


def test_host_is_hashable() -> None:
    inventory = parse(one_host_yaml("a"))
    assert {inventory.hosts["a"]: 1}[inventory.hosts["a"]] == 1


# --------------------------------------------------------------------------------------------
# The same inventory in YAML, INI and JSON
# --------------------------------------------------------------------------------------------

SITE_FILES = ["site.yml", "site.ini", "site.json", "site-export.json"]


@pytest.mark.parametrize("file_name", SITE_FILES[1:])
def test_formats_give_the_same_hosts_vars_and_groups(file_name: str) -> None:
    reference = load_inventory(DATA / "site.yml")
    other = load_inventory(DATA / file_name)
    assert list(other.hosts.values()) == list(reference.hosts.values())
    for group in ("all", "routers", "core", "edge", "servers", "ungrouped"):
        assert other.groups[group].hosts == reference.groups[group].hosts


def test_site_inventory_values() -> None:
    inventory = load_inventory(DATA / "site.yml")
    assert names(inventory) == [
        "core1.example.net",
        "core2.example.net",
        "edge1.example.net",
        "2001:db8::7",
        "srv-a.example.net",
        "srv-b.example.net",
        "lonely.example.net",
    ]
    summary = {h.name: (h.address, h.port, h.iface, h.become) for h in inventory.hosts.values()}
    assert summary == {
        "core1.example.net": ("core1.example.net", None, "ens2", True),
        "core2.example.net": ("core2.example.net", None, "ens2", True),
        "edge1.example.net": ("edge1.example.net", 2222, "ens1", True),
        "2001:db8::7": ("2001:db8::7", None, "bond0", True),
        "srv-a.example.net": ("srv-a.example.net", 2200, "eth0", False),
        "srv-b.example.net": ("srv-b.example.net", 2200, "eth0", False),
        "lonely.example.net": ("192.0.2.99", None, "eth0", False),
    }


@pytest.mark.parametrize("source", ["inventory", "hosts.txt", "x.ini", "x.yml", "x.json"])
@pytest.mark.parametrize("file_name", SITE_FILES)
def test_format_is_told_by_content_not_suffix(source: str, file_name: str) -> None:
    text = (DATA / file_name).read_text()
    assert len(parse_inventory_text(text, source).hosts) == 7


def test_json_meta_unknown_keys_and_unknown_hosts_are_ignored() -> None:
    inventory = parse_inventory_text(
        '{"_meta": {"hostvars": {"a": {"x": 1}, "ghost": {"x": 2}}, "profile": "p", "new": []},'
        ' "web": {"hosts": ["a"]}}'
    )
    assert names(inventory) == ["a"]
    assert inventory.hosts["a"].vars["x"] == 1


def test_json_script_short_form_and_yaml_shaped_json() -> None:
    short = parse_inventory_text('{"web": ["a", "b"], "db": {"hosts": ["c"]}}')
    assert names(short) == ["a", "b", "c"]
    yaml_shaped = parse_inventory_text('{"web": {"hosts": {"a:2222": {"x": 1e5}}}}')
    assert yaml_shaped.hosts["a"].port == 2222
    assert yaml_shaped.hosts["a"].vars["x"] == 100000.0  # read as JSON, not as YAML 1.1


def test_ini_values_are_python_literals_and_hosts_before_sections_are_ungrouped() -> None:
    inventory = parse(
        """\
        loner ansible_port=22 flag=True name='two words' items="[1, 2]" raw=abc

        [web]
        a
        """,
        "hosts",
    )
    loner = inventory.hosts["loner"]
    assert loner.groups == ("all", "ungrouped")
    assert dict(loner.vars) == {
        "ansible_port": 22,
        "flag": True,
        "name": "two words",
        "items": [1, 2],
        "raw": "abc",
    }


# --------------------------------------------------------------------------------------------
# --limit patterns
# --------------------------------------------------------------------------------------------

EXAMPLE_HOSTS = [
    "edge-fra01.example.com",
    "edge-fra02.example.com",
    "edge-fra03.example.com",
    "edge-lon01.example.com",
    "edge-lon02.example.com",
    "web01.example.com",
    "web02.example.com",
    "web03.example.com",
    "web04.example.com",
    "2001:db8::10",
    "2001:db8::11",
    "bastion.example.com",
]
FRA = EXAMPLE_HOSTS[0:3]
LON = EXAMPLE_HOSTS[3:5]
WEB = EXAMPLE_HOSTS[5:9]
DB = EXAMPLE_HOSTS[9:11]


@pytest.fixture(scope="module")
def example() -> Inventory:
    return load_inventory(EXAMPLE)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (None, EXAMPLE_HOSTS),
        ("all", EXAMPLE_HOSTS),
        ("*", EXAMPLE_HOSTS),
        ("web", WEB),
        ("edge_lon", LON),
        ("edge", FRA + LON),
        ("web*", WEB),  # a glob matches host names too
        ("edge-*", FRA + LON),
        ("*.example.com:!edge*", [*WEB, "bastion.example.com"]),
        ("web:db", WEB + DB),
        ("db:web", WEB + DB),  # always inventory order
        ("web,db", WEB + DB),
        ("web, db ,", WEB + DB),
        ("edge:&edge_lon", LON),
        ("edge:!edge_lon", FRA),
        ("!edge:!web:!db", ["bastion.example.com"]),  # only exclusions: start from all
        ("&web", WEB),
        ("all:!web01.example.com:&web", WEB[1:]),
        ("2001:db8::10", DB[:1]),  # an IPv6 host name is one element
        ("2001:db8::11,web01.example.com", [WEB[0], DB[1]]),
        ("ungrouped", ["bastion.example.com"]),
        ("~web0[12]", WEB[:2]),
        ("~edge-(fra|lon)01", [FRA[0], LON[0]]),
        ("web[0]", WEB[:1]),
        ("web[-1]", WEB[-1:]),
        ("web[1:2]", WEB[1:3]),
        ("web[2:]", WEB[2:]),
        ("web[0:1]:db", WEB[:2] + DB),
        ("edge-lon02.example.com", LON[1:]),
        ("web0?.example.com:!web04*", WEB[:3]),
    ],
)
def test_limit_patterns(example: Inventory, pattern: str | None, expected: list[str]) -> None:
    assert names(example.select(pattern)) == expected


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("nosuch", "'nosuch' matches no group or host"),
        ("web:nosuch", "'nosuch' matches no group or host"),
        ("web:!nosuch", "'nosuch' matches no group or host"),  # a typo must not widen a capture
        ("web:&db", "selects no host"),
        ("web:!web", "selects no host"),
        ("web[9]", "'web[9]' is past the 4 hosts matched"),
        ("~web(", "bad pattern '~web('"),
        ("web,!", "'&' or '!' needs a name"),
        ("web*.example.org", "matches no group or host"),
    ],
)
def test_limit_errors(example: Inventory, pattern: str, fragment: str) -> None:
    with pytest.raises(InventoryError) as caught:
        example.select(pattern)
    message = str(caught.value)
    assert message.startswith(f"{EXAMPLE}: --limit ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("pattern", "elements"),
    [
        ("web", ["web"]),
        ("web:db", ["web", "db"]),
        ("web:&db:!x", ["web", "&db", "!x"]),
        ("a,b:c", ["a", "b:c"]),  # with a ',' only ',' separates
        ("2001:db8::1", ["2001:db8::1"]),
        ("::1", ["::1"]),
        ("web[1:3]", ["web[1:3]"]),
        ("web[1:3]:db", ["web[1:3]", "db"]),
        ("host:22", ["host:22"]),  # reads as host:port, so Ansible keeps it whole
        ("[2001:db8::1]:22", ["[2001:db8::1]:22"]),
        ("beef:cafe", ["beef", "cafe"]),  # not a valid IPv6 address, so ':' separates
        (" web , db ", ["web", "db"]),
    ],
)
def test_split_pattern_follows_ansible(pattern: str, elements: list[str]) -> None:
    assert split_pattern(pattern) == elements


# --------------------------------------------------------------------------------------------
# Errors: one line, file and line number, nothing secret
# --------------------------------------------------------------------------------------------

BAD_YAML = [
    ("web:\n  hosts:\n    - a\n", 3, "group 'web': hosts must be a mapping, found a list"),
    ("web:\n  hosts: {a: }\n  host: {b: }\n", 3, "group 'web': unknown key 'host'"),
    ("web:\n  hosts:\n    a:70000:\n", 3, "group 'web': port '70000' out of range 1-65535"),
    ("web:\n  hosts:\n    a:abc:\n", 3, "group 'web': port 'abc' is not a number"),
    ("web:\n  hosts:\n    a:0:\n", 3, "port '0' out of range"),
    ("web:\n  hosts:\n    a:b:c:\n", 3, "several ':'"),
    ("web:\n  hosts: {a: }\n  vars: [x]\n", 3, "group 'web': vars must be a mapping"),
    ("web: [a, b]\n", 1, "group 'web' must be a mapping"),
    ("web:\n  hosts:\n    a: 22\n", 3, "host 'a': variables must be a mapping"),
    ("web:\n  hosts: {a: }\nweb2:\n  hosts: {a: {ansible_port: 70000}}\n", 4, "ansible_port"),
    ("web:\n  vars:\n    ansible_port: abc\n  hosts: {a: }\n", 3, "(set in group 'web')"),
    ("web:\n  hosts:\n    a: {ansible_port: true}\n", 3, "port True is not a number"),
    ("web:\n  hosts:\n    a:\n  hosts:\n    b:\n", 4, "duplicate key 'hosts' (first at line 2)"),
    ("web:\n  hosts:\n    a: {x: [unclosed\n", 4, "invalid YAML"),
    ("web:\n\thosts: {}\n", 2, "invalid YAML"),
    ("- just\n- a list\n", 1, "must be a mapping of groups"),
    ("web:\n  vars: {x: 1}\n", 1, "inventory defines no hosts"),
    ("", 1, "inventory is empty"),
    ("plugin: aws_ec2\n", 1, "inventory plugin configuration"),
    ("a:\n  children:\n    b:\n      children:\n        a:\n", 5, "group 'a' is its own ancestor"),
    ("web:\n  children:\n    all:\n", 3, "group 'all' cannot be a child"),
    ("web:\n  hosts:\n    a: {ansible_become: maybe}\n", 3, "'maybe' is not a boolean"),
    ("web:\n  hosts:\n    a: {xdpcap_iface: eth0/1}\n", 3, "interface 'eth0/1' contains"),
    ("web:\n  hosts:\n    a: {xdpcap_iface: 'eth:0'}\n", 3, "interface 'eth:0' contains"),
    ("web:\n  hosts:\n    a: {xdpcap_iface: 'eth 0'}\n", 3, "interface 'eth 0' contains"),
    ("web:\n  hosts:\n    a: {xdpcap_iface: '..'}\n", 3, "interface '..' is not a valid"),
    ("web:\n  hosts:\n    a: {xdpcap_iface: abcdefghijklmnop}\n", 3, "1 to 15 bytes"),
    ("web:\n  hosts:\n    a: {xdpcap_iface: ''}\n", 3, "1 to 15 bytes"),
    ("web:\n  hosts:\n    a: {ansible_host: -oProxyCommand=x}\n", 3, "must not start with '-'"),
    ("web:\n  hosts:\n    a: {ansible_host: 'a b'}\n", 3, "'a b' contains whitespace"),
    ("web:\n  hosts:\n    -oops:\n", 3, "host '-oops': address '-oops' must not start"),
    ("web:\n  hosts:\n    a: {ansible_user: '{{ u }}'}\n", 3, "is a Jinja2 template"),
    ("web:\n  hosts:\n    a: {ansible_user: [x]}\n", 3, "must be a string, found list"),
    ("web:\n  hosts:\n    a: {ansible_become_user: '-u'}\n", 3, "must not start with '-'"),
    ("web:\n  hosts:\n    'a/b':\n", 3, "host name 'a/b' is not usable"),
    (
        "web:\n  hosts:\n    a: {ansible_group_priority: 1}\n  vars: {ansible_group_priority: x}\n",
        4,
        "not a number",
    ),
]

BAD_INI = [
    ("[web]\na ansible_port=70000\n", 2, "host 'a': ansible_port: port '70000' out of range"),
    ("[web]\na:abc\n", 2, "group 'web': port 'abc' is not a number"),
    ("[web]\nweb[3:1]\n", 2, "range '[3:1]' is empty"),
    ("[web:hosts]\na\n[web:other]\n", 3, "unknown type 'other'"),
    ("[web]\na b=1 oops\n", 2, "host 'a': word 3 is not key=value"),
    ("[web]\na b='unclosed\n", 2, "No closing quotation"),
    ("[web:children]\ndb\n", 2, "includes undefined group 'db'"),
    ("[web]\na\n[db:vars]\nx=1\n", 3, "[db:vars] is for undefined group 'db'"),
    ("[web]\na\n[web:vars]\njustaword\n", 4, "expected key=value"),
    ("[web group]\na\n", 1, "invalid section header"),
    ("# only a comment\n", 1, "inventory defines no hosts"),
]

BAD_JSON = [
    ('{"web": {"hosts": ["a"],}\n}', 1, "invalid JSON"),
    ('{"web": {"hosts": ["a"]},\n "db": {"hosts": "b"}}', 2, "hosts must be a list of names"),
    ('{"web": {"hosts": ["a"]},\n "db": {"hosts": ["b"], "extra": 1}}', 2, "unknown key 'extra'"),
    ('{"web": {"hosts": ["a", 1]}}', 1, "each entry must be a string"),
    ('{"_meta": {"hostvars": []}, "web": ["a"]}', 1, "_meta: hostvars must be a mapping"),
    ('{"_meta": {"hostvars": {"a": {"ansible_port": 0}}},\n"web": ["a"]}', 1, "out of range"),
    ('{"_meta": {},\n\t"web": {"hosts": ["a"],\n\t\t"vars": {"xdpcap_iface": "a/b"}}}', 3, "a/b"),
    ("[1, 2]", 1, "a JSON inventory must be an object"),
]


@pytest.mark.parametrize(
    ("source", "text", "line", "fragment"),
    [("inventories/x.yml", *case) for case in BAD_YAML]
    + [("inventories/hosts", *case) for case in BAD_INI]
    + [("inventories/x.json", *case) for case in BAD_JSON],
)
def test_errors_are_one_line_with_file_and_line(
    source: str, text: str, line: int, fragment: str
) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory_text(text, source)
    message = str(caught.value)
    assert message.startswith(f"{source}:{line}: "), message
    assert fragment in message, message
    assert "\n" not in message
    assert "Traceback" not in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "text",
    [
        "web:\n  hosts:\n    a: {ansible_become_password: '{{ s3cret }}'}\n",
        "web:\n  hosts:\n    a: {ansible_become_password: [s3cret]}\n",
        "web:\n  hosts:\n    a: {ansible_become_password: !vault s3cret}\n",
        "web:\n  hosts:\n    a: {ansible_become_password: s3cret, ansible_port: 0}\n",
    ],
)
def test_errors_never_show_the_become_password(text: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory_text(text, "x.yml")
    assert "s3cret" not in str(caught.value)
    assert str(caught.value).startswith("x.yml:3: host 'a': ")


def test_ini_word_without_equals_is_not_echoed() -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory_text("[web]\na ansible_become_password= s3cret\n", "hosts")
    assert "s3cret" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yml"
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value) == f"{path}: inventory file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a directory; give one inventory file"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.ini"
    path.write_bytes(b"[web]\nh\xff\n")
    with pytest.raises(InventoryError, match=r"bad\.ini: not UTF-8 text \(byte 7\)"):
        load_inventory(path)


# --------------------------------------------------------------------------------------------
# The shipped example and --list-hosts
# --------------------------------------------------------------------------------------------


def test_example_inventory_loads(example: Inventory) -> None:
    assert names(example) == EXAMPLE_HOSTS
    lon02 = example.hosts["edge-lon02.example.com"]
    assert (lon02.address, lon02.iface, lon02.user, lon02.become) == (
        "192.0.2.22",
        "bond0",
        "netops",
        True,
    )
    assert example.hosts["edge-lon01.example.com"].iface == "ens2f0"  # child beats parent
    assert example.hosts["edge-fra01.example.com"].iface == "ens1f0"  # parent beats all
    assert example.hosts["web04.example.com"].port == 2200
    assert example.hosts["2001:db8::11"].port == 2222
    assert example.hosts["2001:db8::10"].user == "dbadmin"
    assert example.hosts["bastion.example.com"].become is False


def test_format_host_list(example: Inventory) -> None:
    chosen = example.select("web04*:db:bastion*")
    assert format_host_list(chosen, None).splitlines() == [
        "web04.example.com    192.0.2.14:2200      eth0",
        "2001:db8::10         2001:db8::10         ens3",
        "2001:db8::11         [2001:db8::11]:2222  eth0",
        "bastion.example.com  192.0.2.1            eth0",
    ]
    assert format_host_list([], "eth0") == ""


def test_format_host_list_default_iface() -> None:
    hosts = parse(one_host_yaml("a") + "    b: {xdpcap_iface: ens1}\n").select(None)
    assert format_host_list(hosts, "lo").splitlines() == ["a  a  lo", "b  b  ens1"]
    assert format_host_list(hosts, None).splitlines() == ["a  a  -", "b  b  ens1"]


def test_ini_groups_may_be_defined_after_they_are_referenced() -> None:
    inventory = parse(
        """\
        [web:vars]
        ansible_user=ops

        [site:children]
        web

        [web]
        a
        """,
        "hosts",
    )
    assert inventory.hosts["a"].groups == ("all", "site", "web")
    assert inventory.hosts["a"].user == "ops"


def test_json_with_yaml_line_breaks_keeps_values_and_drops_line_numbers() -> None:
    text = '{"web": {"hosts": ["a"], "vars": {"note": "x\u2028y"}}}'
    assert parse_inventory_text(text, "x.json").hosts["a"].vars["note"] == "x\u2028y"
    with pytest.raises(InventoryError) as caught:
        parse_inventory_text(
            '{"web": {"hosts": ["a"], "vars": {"xdpcap_iface": "\u2028"}}}', "x.json"
        )
    assert str(caught.value).startswith("x.json: host 'a': xdpcap_iface: ")


def test_ssh_common_args_with_an_open_quote_is_an_inventory_error() -> None:
    text = """
    all:
      hosts:
        h1:
          ansible_ssh_common_args: "-o UserKnownHostsFile='/tmp/x"
    """
    with pytest.raises(InventoryError, match=r"inv\.yml:5: host 'h1': ansible_ssh_common_args"):
        parse(text)
