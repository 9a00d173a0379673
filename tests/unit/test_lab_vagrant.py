"""The Vagrantfile, `vagrant ssh-config` → inventory, and lab naming: no root needed."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from xdpcap.orchestrator.cli import lab as lab_cli
from xdpcap.orchestrator.lab.plan import (
    bridge_name,
    default_state_dir,
    lab_networks,
    plan_hosts,
    validate_name,
    veth_name,
)
from xdpcap.orchestrator.lab.system import LabError
from xdpcap.orchestrator.lab.vagrant import parse_ssh_config, vagrant_inventory

REPO = Path(__file__).resolve().parents[2]
VAGRANTFILE = REPO / "Vagrantfile"

# As `vagrant ssh-config` prints it for the Vagrantfile (two of three VMs; one path quoted
# because it holds a space, as vagrant does).
SAMPLE_SSH_CONFIG = """\
Host node1
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/me/xdpcap/.vagrant/machines/node1/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host node2
  HostName 127.0.0.1
  User vagrant
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/me/my vms/.vagrant/machines/node2/virtualbox/private_key"
  IdentityFile /home/me/.vagrant.d/insecure_private_key
  IdentitiesOnly yes
  LogLevel FATAL
"""


def test_vagrantfile_ruby_syntax() -> None:
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (apt-get install -y ruby)")
    proc = subprocess.run(
        ["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Syntax OK" in proc.stdout


def test_vagrantfile_validates() -> None:
    """Debian's vagrant validates the file; no provider (VirtualBox, libvirt) runs here."""
    if shutil.which("vagrant") is None:
        if os.environ.get("XDPCAP_REQUIRE_INTEGRATION") == "1":
            pytest.fail("vagrant is not installed (scripts/setup.sh installs it)")
        pytest.skip("vagrant is not installed (scripts/setup.sh installs it)")
    proc = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vagrantfile_describes_the_lab_vms() -> None:
    text = VAGRANTFILE.read_text()
    for expected in (
        "debian/bookworm64",
        "private_network",
        "192.168.56.",
        "python3-bpfcc",
        "linux-headers-$(uname -r)",
        "vb.memory = 1024",
        "vb.cpus = 1",
        '"XDPCAP_VAGRANT_NODES", "3"',
        "xdpcap lab vagrant-inventory",
        # libvirt: the locally built box, QEMU unless KVM really works, virtio-rng
        'override.vm.box = "xdpcap/bookworm"',
        "lv.driver = LIBVIRT_DRIVER",
        "(vmx|svm)",
        'lv.random model: "random"',
        'libvirt__forward_mode: "none"',
    ):
        assert expected in text, expected


def test_ssh_config_to_inventory() -> None:
    inventory = vagrant_inventory(SAMPLE_SSH_CONFIG)
    assert list(inventory) == ["vagrant"]
    group = inventory["vagrant"]
    assert group["vars"] == {"ansible_become": True, "xdpcap_iface": "eth1"}
    assert group["hosts"]["node1"] == {
        "ansible_host": "127.0.0.1",
        "ansible_port": 2222,
        "ansible_user": "vagrant",
        "ansible_ssh_private_key_file": (
            "/home/me/xdpcap/.vagrant/machines/node1/virtualbox/private_key"
        ),
        # Vagrant's /dev/null known_hosts and StrictHostKeyChecking=no are dropped:
        # host keys are checked as for any other host.
        "ansible_ssh_common_args": "-o IdentitiesOnly=yes",
    }
    node2 = group["hosts"]["node2"]
    assert node2["ansible_port"] == 2200
    # The first IdentityFile wins, unquoted.
    assert node2["ansible_ssh_private_key_file"] == (
        "/home/me/my vms/.vagrant/machines/node2/virtualbox/private_key"
    )


def test_ssh_config_keyword_forms_and_wildcards() -> None:
    text = "# comment\nHost *\n  User nobody\nHost web\n  hostname=10.0.0.5\n  PORT = 2022\n"
    blocks = parse_ssh_config(text)
    assert blocks[1] == {"host": ["web"], "hostname": ["10.0.0.5"], "port": ["2022"]}
    hosts = vagrant_inventory(text)["vagrant"]["hosts"]
    assert hosts == {"web": {"ansible_host": "10.0.0.5", "ansible_port": 2022}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no Host entries"),
        ("Host *\n  User x\n", "no Host entries"),
        ("User vagrant\n", "before any Host line"),
        ("Host a\n  Port twenty\n", "bad Port"),
        ('Host a\n  IdentityFile "/unclosed\n', "line 2"),
    ],
)
def test_ssh_config_errors(text: str, message: str) -> None:
    with pytest.raises(LabError, match=message):
        vagrant_inventory(text)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xdpcap")
    lab_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_vagrant_inventory_from_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "ssh-config.txt"
    config.write_text(SAMPLE_SSH_CONFIG)
    args = _cli(["lab", "vagrant-inventory", "--ssh-config", str(config)])
    assert args.func(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == vagrant_inventory(SAMPLE_SSH_CONFIG)


def test_cli_lab_arguments() -> None:
    args = _cli(["lab", "up", "--hosts", "5", "--name", "demo"])
    assert (args.lab_command, args.hosts, args.name) == ("up", 5, "demo")
    args = _cli(["lab", "traffic", "--seconds", "0.5"])
    assert (args.lab_command, args.seconds, args.name) == ("traffic", 0.5, "lab")
    with pytest.raises(SystemExit):
        _cli(["lab", "up", "--hosts", "0"])


# ---- lab naming (pure functions; the real lab is in tests/integration/test_lab.py)


def test_lab_names_fit_in_interface_names() -> None:
    validate_name("lab", 3)
    validate_name("abcdefghij", 99)  # xcabcdefghij-br and xcabcdefghij-99: 15 bytes each
    assert bridge_name("abcdefghij") == "xcabcdefghij-br"
    assert veth_name("abcdefghij", 99) == "xcabcdefghij-99"
    with pytest.raises(LabError, match="exceeds 15 bytes"):
        validate_name("abcdefghijk", 3)
    with pytest.raises(LabError, match="exceeds 15 bytes"):
        validate_name("abcdefghij", 100)


@pytest.mark.parametrize("name", ["", "1lab", "lab1", "Lab", "la-b", "lab ", "lab_x"])
def test_lab_names_that_would_be_ambiguous_or_invalid(name: str) -> None:
    with pytest.raises(LabError, match="lab name"):
        validate_name(name)


def test_lab_hosts_and_subnets() -> None:
    hosts = plan_hosts("lab", 3, 7)
    assert [h.name for h in hosts] == ["lab1", "lab2", "lab3"]
    assert hosts[1].namespace == "xdpcap-lab2"
    assert hosts[1].veth_root == "xclab-2"
    assert (hosts[1].ipv4, hosts[1].ipv6) == ("198.18.7.2", "fc00:dead:cafe:7::2")
    v4, v6 = lab_networks(255)
    assert v4.subnet_of(lab_networks(1)[0].supernet(new_prefix=15))
    assert str(v6) == "fc00:dead:cafe:255::/64"


def test_state_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDPCAP_LAB_DIR", raising=False)
    assert default_state_dir("lab") == Path("/var/tmp/xdpcap-lab/lab")
    monkeypatch.setenv("XDPCAP_LAB_DIR", str(tmp_path))
    assert default_state_dir("demo") == tmp_path / "demo"  # one folder per lab, side by side


def test_a_real_known_hosts_file_is_kept_and_checking_never_disabled() -> None:
    text = (
        "Host vm\n  HostName 127.0.0.1\n  UserKnownHostsFile /home/me/vm_known_hosts\n"
        "  StrictHostKeyChecking no\n"
    )
    host = vagrant_inventory(text)["vagrant"]["hosts"]["vm"]
    assert host["ansible_ssh_common_args"] == "-o UserKnownHostsFile=/home/me/vm_known_hosts"
