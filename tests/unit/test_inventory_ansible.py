"""The ansible-core inventory reader: the same hosts as the built-in one, and what only it reads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from xdpcap.orchestrator.cli.main import main
from xdpcap.orchestrator.errors import InventoryError, UsageError
from xdpcap.orchestrator.inventory import ansible as inventory_ansible
from xdpcap.orchestrator.inventory.load import load_inventory
from xdpcap.orchestrator.inventory.model import Inventory

pytest.importorskip("ansible", reason="ansible-core is in the test extras")

DATA = Path(__file__).parent / "data" / "inventory"
EXAMPLE = Path(__file__).parents[2] / "inventories" / "example.yml"
PASSWORD = "correct horse battery"


def through_ansible(path: Path, vault_password_file: Path | None = None) -> Inventory:
    loaded = inventory_ansible.load(
        str(path), "ansible", None if vault_password_file is None else str(vault_password_file)
    )
    assert loaded.reader.startswith("ansible-core ")
    return loaded.inventory


def vault_encrypt(text: str) -> str:
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(PASSWORD.encode()))])
    return vault.encrypt(text).decode()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------------------------
# Both readers agree on the repository's inventories
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [DATA / "site.yml", DATA / "site.ini", EXAMPLE], ids=lambda p: p.name
)
def test_both_readers_give_the_same_hosts_and_variables(path: Path) -> None:
    builtin = load_inventory(path)
    ansible = through_ansible(path)
    # Same Host objects (address, port, user, become, iface, groups in precedence order, and
    # every variable); the order is each engine's own "inventory order".
    assert dict(ansible.hosts) == dict(builtin.hosts)
    for name, group in builtin.groups.items():
        assert set(ansible.groups[name].hosts) == set(group.hosts), name
        assert dict(ansible.groups[name].vars) == dict(group.vars), name


@pytest.mark.parametrize(
    "pattern",
    ["all", "edge:!edge_lon", "web:&web0[12]*", "~edge-(fra|lon)01", "2001:db8::10", "db:web"],
)
def test_limit_selects_the_same_hosts_with_either_reader(pattern: str) -> None:
    builtin = {h.name for h in load_inventory(EXAMPLE).select(pattern)}
    assert {h.name for h in through_ansible(EXAMPLE).select(pattern)} == builtin


@pytest.mark.parametrize("name", ["site.json", "site-export.json"])
def test_auto_reads_list_json_with_the_builtin_reader(name: str) -> None:
    # Ansible reads `ansible-inventory --list` output only from an executable script.
    loaded = inventory_ansible.load(str(DATA / name), "auto")
    assert loaded.reader == "built-in reader"
    assert dict(loaded.inventory.hosts) == dict(load_inventory(DATA / "site.yml").hosts)


def test_auto_takes_ansible_where_the_source_needs_it(tmp_path: Path) -> None:
    """A plain file goes to the built-in reader (same answer, no ansible-core import);
    whatever only Ansible reads as Ansible would goes to ansible-core."""
    plain = "web:\n  hosts:\n    web1:\n      ansible_host: 192.0.2.1\n"

    def reader(source: Path, vault: bool = False) -> str:
        return inventory_ansible.choose_reader(None, str(source), vault=vault)

    assert reader(EXAMPLE) == reader(DATA / "site.yml") == reader(DATA / "site.ini") == "builtin"
    assert reader(write(tmp_path / "plain" / "hosts.yml", plain)) == "builtin"
    assert reader(write(tmp_path / "plain" / "hosts.yml", plain), vault=True) == "ansible"
    jinja = plain.replace("192.0.2.1", '"{{ site }}-web1"')
    assert reader(write(tmp_path / "jinja" / "hosts.yml", jinja)) == "ansible"
    unsafe = plain.replace("192.0.2.1", "!unsafe '192.0.2.1'")
    assert reader(write(tmp_path / "unsafe" / "hosts.yml", unsafe)) == "ansible"
    beside = write(tmp_path / "gv" / "hosts.yml", plain)
    write(tmp_path / "gv" / "group_vars" / "web.yml", "xdpcap_iface: eth1\n")
    assert reader(beside) == "ansible"
    assert reader(tmp_path / "gv") == "ansible"  # a directory of sources
    plugin = write(tmp_path / "plugin" / "constructed.yml", "plugin: ansible.builtin.constructed\n")
    assert reader(plugin) == "ansible"
    assert inventory_ansible.choose_reader(None, "web1,web2,") == "ansible"  # a host list


def test_the_option_and_the_environment_choose_the_reader(monkeypatch) -> None:
    assert inventory_ansible.load(str(EXAMPLE)).reader == "built-in reader"
    assert inventory_ansible.load(str(EXAMPLE), "ansible").reader.startswith("ansible-core")
    monkeypatch.setenv(inventory_ansible.READER_ENV, "ansible")
    assert inventory_ansible.load(str(EXAMPLE)).reader.startswith("ansible-core")
    monkeypatch.setenv(inventory_ansible.READER_ENV, "builtin")
    assert inventory_ansible.load(str(EXAMPLE)).reader == "built-in reader"
    monkeypatch.setenv(inventory_ansible.READER_ENV, "nonsense")
    with pytest.raises(UsageError, match="not one of auto, builtin, ansible"):
        inventory_ansible.load(str(EXAMPLE))


# --------------------------------------------------------------------------------------------
# What only ansible-core reads: vault, Jinja, directories with group_vars
# --------------------------------------------------------------------------------------------


@pytest.fixture
def vaulted(tmp_path: Path) -> tuple[Path, Path]:
    secret = textwrap.indent(vault_encrypt("s3cret-become"), " " * 8)
    inventory = tmp_path / "vaulted.yml"
    inventory.write_text(
        "web:\n"
        "  vars:\n"
        "    site: fra\n"
        "    xdpcap_iface: \"{{ 'eth' ~ 1 }}\"\n"
        "  hosts:\n"
        "    web1:\n"
        '      ansible_host: "{{ site }}-web1.example.net"\n'
        "      ansible_become: true\n"
        "      ansible_become_password: !vault |\n"
        f"{secret}\n"
    )
    password_file = tmp_path / "vault-pass"
    password_file.write_text(PASSWORD + "\n")
    return inventory, password_file


def test_vault_value_read_with_the_password_file_and_jinja_templated(vaulted) -> None:
    inventory, password_file = vaulted
    host = through_ansible(inventory, password_file).hosts["web1"]
    assert host.become_password == "s3cret-become"
    assert host.address == "fra-web1.example.net"
    assert host.iface == "eth1"
    assert "s3cret" not in repr(host)


def test_vault_value_without_the_password_is_one_line_naming_the_variable(vaulted) -> None:
    inventory, _ = vaulted
    with pytest.raises(InventoryError) as caught:
        through_ansible(inventory)
    message = str(caught.value)
    assert message.startswith(f"{inventory}: host 'web1': ansible_become_password: ")
    assert "vault" in message and "\n" not in message


def test_vault_password_file_through_the_command_line(vaulted, capsys) -> None:
    inventory, password_file = vaulted
    argv = ["run", "-i", str(inventory), "--list-hosts"]
    assert main([*argv, "--vault-password-file", str(password_file)]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["web1", "fra-web1.example.net", "eth1"]
    assert f"{inventory}: read by ansible-core " in err
    # The built-in reader cannot decrypt: the option is refused rather than ignored.
    forced = [*argv, "--inventory-reader", "builtin", "--vault-password-file", str(password_file)]
    assert main(forced) == 2
    assert "needs the ansible inventory reader" in capsys.readouterr().err


def test_undefined_variable_xdpcap_uses_is_an_error_others_are_kept(tmp_path: Path) -> None:
    kept = write(
        tmp_path / "kept.yml",
        """\
        web:
          hosts:
            a:
              motd: "{{ ansible_facts.hostname }} says hi"
        """,
    )
    assert through_ansible(kept).hosts["a"].vars["motd"] == "{{ ansible_facts.hostname }} says hi"
    used = write(tmp_path / "used.yml", 'web:\n  hosts:\n    a:\n      xdpcap_iface: "{{ nic }}"\n')
    with pytest.raises(InventoryError, match=r"host 'a': xdpcap_iface: cannot be templated: "):
        through_ansible(used)


@pytest.mark.parametrize(
    "template", ["{{ 'hunter2' ~ }}", "{{ 'hunter2' ~ nosuch }}", "{% if %}hunter2{% endif %}"]
)
def test_a_broken_template_never_shows_the_become_password(tmp_path: Path, template) -> None:
    path = tmp_path / "secret.yml"
    path.write_text(f"web:\n  hosts:\n    a:\n      ansible_become_password: {template!r}\n")
    with pytest.raises(InventoryError) as caught:
        through_ansible(path)
    assert "hunter2" not in str(caught.value)
    assert "host 'a': ansible_become_password: cannot be templated" in str(caught.value)


def test_inventory_directory_with_group_vars(tmp_path: Path) -> None:
    folder = tmp_path / "inventory"
    write(folder / "10-edge.yml", "edge:\n  hosts:\n    edge1:\n      ansible_host: 192.0.2.1\n")
    write(folder / "20-core.ini", "[core]\ncore1 ansible_host=192.0.2.2\n")
    write(folder / "group_vars" / "all.yml", "ansible_user: ops\nxdpcap_iface: eth0\n")
    write(folder / "group_vars" / "core.yml", "xdpcap_iface: ens2\n")
    write(folder / "host_vars" / "edge1.yml", "ansible_port: 2222\n")
    hosts = through_ansible(folder).hosts
    summary = {h.name: (h.address, h.port, h.user, h.iface, h.groups) for h in hosts.values()}
    assert summary == {
        "edge1": ("192.0.2.1", 2222, "ops", "eth0", ("all", "edge")),
        "core1": ("192.0.2.2", None, "ops", "ens2", ("all", "core")),
    }


def test_inventory_plugin_constructed_groups_select_with_limit(tmp_path: Path) -> None:
    folder = tmp_path / "inventory"
    write(
        folder / "10-hosts.yml",
        """\
        routers:
          hosts:
            r1: {xdpcap_iface: ens2, site: fra}
            r2: {xdpcap_iface: eth0, site: lon}
            r3: {xdpcap_iface: ens2, site: lon}
        """,
    )
    write(
        folder / "20-constructed.yml",
        """\
        plugin: ansible.builtin.constructed
        strict: true
        groups:
          uplink_ens2: xdpcap_iface == 'ens2'
        keyed_groups:
          - key: site
            prefix: site
        """,
    )
    inventory = through_ansible(folder)
    assert [h.name for h in inventory.select("uplink_ens2")] == ["r1", "r3"]
    assert [h.name for h in inventory.select("site_lon:!uplink_ens2")] == ["r2"]
    assert inventory.hosts["r3"].groups[-1] in {"site_lon", "uplink_ens2"}


# --------------------------------------------------------------------------------------------
# Bad inventories: one line, exit 2, no traceback
# --------------------------------------------------------------------------------------------

BAD = {
    "flow.yml": "all:\n  hosts: [a, b\n",
    "list.yml": "web:\n  hosts:\n    - a\n",
    "section.ini": "[web\nx\n",
    "port.yml": "web:\n  hosts:\n    a:\n      ansible_port: 99999\n",
    "iface.yml": "web:\n  hosts:\n    a:\n      xdpcap_iface: 'eth0;id'\n",
    # Ansible only warns about these, and reads `{}` as INI: a host named '{}'.
    "typo.yml": "web:\n  hsots:\n    a:\n",
    "empty.yml": "{}\n",
    "dupe.yml": "web:\n  hosts:\n    a:\n  hosts:\n    b:\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inventory_is_one_line_and_exit_2(tmp_path: Path, capsys, name: str) -> None:
    path = write(tmp_path / name, BAD[name])
    code = main(["run", "-i", str(path), "--inventory-reader", "ansible", "--list-hosts"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"xdpcap: {path}:")  # and the line, where the file has one
    assert "Traceback" not in err


def test_bad_file_in_a_directory_is_an_error_not_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "inventory"
    write(folder / "good.yml", "web:\n  hosts:\n    a:\n")
    write(folder / "broken.yml", BAD["flow.yml"])
    with pytest.raises(InventoryError, match="Ansible could not parse it: yaml plugin: "):
        through_ansible(folder)


def test_unknown_group_key_in_a_directory_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "inventory"
    write(folder / "web.yml", BAD["typo.yml"])
    with pytest.raises(InventoryError, match="group 'web': unknown key 'hsots'"):
        through_ansible(folder)


def test_missing_inventory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"missing\.yml: inventory not found"):
        through_ansible(tmp_path / "missing.yml")
