"""The pure parts of the SSH layer: known_hosts files, ssh options, quoting, sudo errors."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from xdpcap.orchestrator.inventory.model import Host
from xdpcap.orchestrator.remote.ssh import (
    DEFAULT_KNOWN_HOSTS,
    _common_args_options,
    known_hosts_files,
    quote_command,
    sudo_failure,
)


def _host(common_args: str | None = None) -> Host:
    return Host(
        name="h1",
        address="192.0.2.1",
        port=None,
        user=None,
        key_file=None,
        ssh_common_args=common_args,
        become=False,
        become_user=None,
        become_password=None,
        python_interpreter=None,
        iface=None,
        filter=None,
        direction=None,
        groups=("all",),
        vars={},
    )


def test_common_args_options_both_spellings() -> None:
    args = "-o UserKnownHostsFile=/k1 -oIdentitiesOnly=yes -C -o 'ProxyCommand=ssh -W %h:%p j'"
    assert _common_args_options(args) == {
        "userknownhostsfile": "/k1",
        "identitiesonly": "yes",
        "proxycommand": "ssh -W %h:%p j",
    }
    assert _common_args_options(None) == {}


def test_known_hosts_files_from_config_and_inventory() -> None:
    files = known_hosts_files(
        _host("-o UserKnownHostsFile=/inv/kh"), {"userknownhostsfile": "/cfg/a ~/b"}
    )
    assert files == [DEFAULT_KNOWN_HOSTS, Path("/cfg/a"), Path("~/b").expanduser(), Path("/inv/kh")]


@pytest.mark.parametrize("null", ["/dev/null", "none"])
def test_a_null_known_hosts_file_never_replaces_checking(null: str) -> None:
    files = known_hosts_files(_host(f"-o UserKnownHostsFile={null}"), {"userknownhostsfile": null})
    assert files == [DEFAULT_KNOWN_HOSTS]  # keys checked, and learnt, in the user's own file


@pytest.mark.parametrize(
    "argv", [["sh", "-c", 'echo "$1"', "x", "a b"], ["eth0;id"], ["$(reboot)"], ["it's"], [""]]
)
def test_quote_command_round_trips_through_a_shell_split(argv: list[str]) -> None:
    assert shlex.split(quote_command(argv)) == argv


def test_sudo_failures_are_named() -> None:
    assert "--ask-become-pass" in sudo_failure("sudo: a password is required\n")
    assert "refused" in sudo_failure("Sorry, try again.\n")
    assert sudo_failure("some other error") is None
