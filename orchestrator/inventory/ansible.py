"""Inventories read through ansible-core's own engine, when it is installed on the controller.

With ansible-core importable, `xdpcap run -i` and `check -i` take whatever `ansible -i` takes:
inventory plugins (aws_ec2, netbox, constructed, ...), directories of sources, `group_vars/` and
`host_vars/` beside them, `!vault` values (with ``--vault-password-file``) and Jinja2 in
variables. Ansible's InventoryManager, VariableManager and DataLoader do the reading; the result
goes through the same resolution and checks as the built-in reader's (`build_inventory`), so
both give the same `Host` objects, and `--limit` keeps one grammar.

Which reader: ``--inventory-reader`` or ``XDPCAP_INVENTORY_READER`` (``auto``, ``builtin``,
``ansible``); ``auto`` takes ansible-core, when it imports, for every source that needs it:
anything but one plain file (a directory, a script, a plugin's configuration, a host list),
a file with Jinja or vault values, a file with ``group_vars/`` or ``host_vars/`` beside it,
and ``--vault-password-file``. A plain file reads the same with either reader (a unit test
holds them to it on the repository's inventories), and the built-in reader has the run
connecting 0.15-0.25 s sooner than importing ansible-core does. A file holding
``ansible-inventory --list`` JSON, which Ansible reads only from an executable script, always
goes to the built-in reader.

Stricter than Ansible, as the built-in reader is: a plain inventory file first passes the
built-in reader's structural checks (unknown or duplicate keys, ranges, no hosts; templates and
vault values are not resolved there); a source that no plugin could parse (also one file of a
directory) or an unknown key Ansible skips is an error, not a warning; so is a variable xdpcap
reads (``ansible_*``, ``xdpcap_*``) that cannot be templated or decrypted. Other variables
that cannot be rendered without a play (facts, hostvars) are kept as written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InventoryError, UsageError
from .load import GroupParts, build_inventory, check_structure, load_inventory
from .model import (
    Inventory,
    is_secret,  # the built-in reader's rule for which variables hold secrets
)

READERS = ("auto", "builtin", "ansible")
READER_ENV = "XDPCAP_INVENTORY_READER"

# Variables xdpcap itself reads: a value it cannot render is an error, not a kept template.
_USED_PREFIXES = ("ansible_", "xdpcap_")
# What ansible-core prints when a plugin failed on a source, and when none could parse it.
_PARSE_FAILED = re.compile(r"Failed to parse inventory with '([^']+)' plugin: (.*)")
_UNPARSED = re.compile(r"Unable to parse (.+) as an inventory source")
# What Ansible's yaml plugin skips with a warning; the built-in reader refuses it.
_SKIPPED_KEY = re.compile(r"Skipping (?:unexpected )?key \((.+?)\) in group \((.+?)\)")
# A plugin configuration (aws_ec2.yml, constructed.yml): not an inventory of hosts itself.
_PLUGIN_CONFIG = re.compile(r"^plugin\s*:", re.MULTILINE)


@dataclass(frozen=True)
class LoadedInventory:
    inventory: Inventory
    reader: str  # for --list-hosts: "built-in reader" or "ansible-core 2.19.14"


def ansible_version() -> str | None:
    """ansible-core's version when it imports here, else None."""
    try:
        from ansible.release import __version__
    except ImportError:
        return None
    return str(__version__)


def choose_reader(requested: str | None, source: str, vault: bool = False) -> str:
    """'builtin' or 'ansible': the option, else the environment, else what the source needs
    and what is installed (`vault`: a vault password file was given)."""
    reader = requested or os.environ.get(READER_ENV) or "auto"
    if reader not in READERS:
        raise UsageError(f"inventory reader {reader!r} is not one of {', '.join(READERS)}")
    if reader != "auto":
        if reader == "ansible" and ansible_version() is None:
            raise UsageError(
                "the ansible inventory reader needs ansible-core (pip install ansible-core)"
            )
        return reader
    if ansible_version() is None or _is_list_json_file(source):
        return "builtin"
    return "ansible" if vault or _needs_ansible(source) else "builtin"


# In a file: what only Ansible renders (Jinja), decrypts (vault) or tags (!unsafe).
_ANSIBLE_ONLY_TEXT = ("{{", "{%", "{#", "!vault", "$ANSIBLE_VAULT", "!unsafe")


def _needs_ansible(source: str) -> bool:
    """Whether the built-in reader could read `source` differently from Ansible."""
    if not _is_static_file(source):
        return True
    folder = os.path.dirname(os.path.abspath(source))
    if any(os.path.isdir(os.path.join(folder, d)) for d in ("group_vars", "host_vars")):
        return True
    try:
        with open(source, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError):
        return True
    return any(marker in text for marker in _ANSIBLE_ONLY_TEXT)


def load(
    source: str, reader: str | None = None, vault_password_file: str | None = None
) -> LoadedInventory:
    """Read `source` with the chosen reader."""
    chosen = choose_reader(reader, source, vault=vault_password_file is not None)
    if chosen == "builtin":
        if vault_password_file is not None:
            raise UsageError(
                "--vault-password-file needs the ansible inventory reader (ansible-core)"
            )
        return LoadedInventory(load_inventory(source), "built-in reader")
    inventory = load_with_ansible(source, vault_password_file)
    return LoadedInventory(inventory, f"ansible-core {ansible_version()}")


def _is_list_json_file(source: str) -> bool:
    # `ansible-inventory --list` output saved to a file: Ansible's yaml plugin refuses it.
    if not os.path.isfile(source):
        return False
    try:
        with open(source, encoding="utf-8") as stream:
            head = stream.read(1)
            if head.lstrip() != "{":
                return False
            data = json.loads(head + stream.read())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and (
        "_meta" in data
        or any(
            isinstance(group, list)
            or (isinstance(group, dict) and isinstance(group.get("hosts"), list))
            for group in data.values()
        )
    )


def load_with_ansible(source: str, vault_password_file: str | None = None) -> Inventory:
    """Read an inventory through ansible-core; every problem is one InventoryError line."""
    if "," not in source and not os.path.exists(source):
        raise InventoryError(f"{source}: inventory not found")
    if vault_password_file is not None and not os.path.isfile(vault_password_file):
        raise UsageError(f"--vault-password-file {vault_password_file}: no such file")
    if _is_static_file(source):
        # Ansible would warn and go on (or read a broken YAML file as INI): refused here
        # with the built-in reader's file:line message.
        check_structure(source)
    from ansible.errors import AnsibleError
    from ansible.utils.display import Display

    Display()  # created outside the capture below: it adapts the real stdout and stderr once
    captured = io.StringIO()
    try:
        # Ansible reports a source it could not parse as warnings on stderr, several lines
        # each; they are caught here and turned into one error line.
        with contextlib.redirect_stderr(captured):
            loader, manager, variables = _ansible_engine(source, vault_password_file)
    except AnsibleError as exc:
        raise InventoryError(f"{source}: {_one_line(exc.message)}") from None
    _raise_on_parse_failures(source, captured.getvalue())
    hosts = manager.get_hosts("all")
    if not hosts:
        raise InventoryError(f"{source}: inventory defines no hosts")
    host_vars = {host.name: _host_vars(source, loader, variables, host) for host in hosts}
    groups = {
        name: GroupParts(
            children=tuple(child.name for child in group.child_groups),
            hosts=tuple(host.name for host in group.hosts),
            vars=_rendered(loader, group.get_vars()),
        )
        for name, group in manager.groups.items()
    }
    return build_inventory(source, groups, host_vars)


def _is_static_file(source: str) -> bool:
    """A plain inventory file: not a directory, a script or an inventory plugin's config."""
    if not os.path.isfile(source) or os.access(source, os.X_OK):
        return False
    try:
        with open(source, encoding="utf-8") as stream:
            return _PLUGIN_CONFIG.search(stream.read()) is None
    except (OSError, UnicodeDecodeError):
        return True  # the check reports it


def _ansible_engine(source: str, vault_password_file: str | None):  # -> (loader, manager, vm)
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    _load_collections()
    loader = DataLoader()
    _use_vault_password_file(loader, vault_password_file)
    manager = InventoryManager(loader=loader, sources=[source])
    return loader, manager, VariableManager(loader=loader, inventory=manager)


def _load_collections() -> None:
    """What ansible's own commands do first: without it no plugin named by its collection
    (`plugin: ansible.builtin.constructed`, `amazon.aws.aws_ec2`) can load."""
    from ansible.plugins import loader

    init = getattr(loader, "init_plugin_loader", None)  # ansible-core 2.15+
    if init is None:
        return
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    if AnsibleCollectionConfig.collection_finder is None:  # once a process: it warns after
        init()


def _use_vault_password_file(loader, path: str | None) -> None:
    from ansible.parsing import vault

    secrets = []
    if path is not None:
        secret = vault.get_file_vault_secret(filename=path, loader=loader)
        secret.load()
        secrets.append(("default", secret))
        loader.set_vault_secrets(secrets)
    # ansible-core 2.19 decrypts `!vault` values lazily, through a process-wide context that
    # may be set once: a second inventory in the same process (tests) updates it in place.
    context_type = getattr(vault, "VaultSecretsContext", None)
    if context_type is None:
        return
    current = context_type.current(optional=True)
    if current is None and secrets:
        context_type.initialize(context_type(secrets))
    elif current is not None:
        current.secrets = secrets


def _raise_on_parse_failures(source: str, output: str) -> None:
    skipped = _SKIPPED_KEY.search(output)
    if skipped is not None:
        key, group = skipped.groups()
        raise InventoryError(
            f"{source}: group '{group}': unknown key '{key}' (a group has hosts, vars and "
            "children; Ansible skips the rest, xdpcap refuses it)"
        )
    unparsed = _UNPARSED.findall(output)
    failures = dict(_PARSE_FAILED.findall(output))  # plugin -> its reason
    if unparsed or failures:
        where = unparsed[0] if unparsed else source  # in a directory: the file that failed
        if where.endswith((".yml", ".yaml")):
            # One plugin meant it: 'auto' for a plugin configuration (a `plugin:` key), else
            # 'yaml'; the other plugins' guesses are noise.
            auto = failures.get("auto", "")
            not_config = "no root 'plugin' key" in auto or "YAML parsing failed" in auto
            meant = "yaml" if not auto or not_config else "auto"
            if meant in failures:
                failures = {meant: failures[meant]}
        reasons = "; ".join(f"{plugin} plugin: {reason}" for plugin, reason in failures.items())
        detail = reasons or "no inventory plugin accepted it"
        raise InventoryError(f"{where}: Ansible could not parse it: {_one_line(detail)}")
    rest = "".join(
        line for line in output.splitlines(keepends=True) if "No inventory was parsed" not in line
    )
    if rest.strip():
        sys.stderr.write(rest)  # Ansible's other warnings (deprecations): passed on as they are


def _host_vars(source: str, loader, variables, host) -> dict[str, object]:
    from ansible import constants

    merged = variables.get_vars(host=host, include_hostvars=False, stage="all")
    # As `ansible-inventory --list`: the play's magic variables are not inventory variables.
    merged = {k: v for k, v in merged.items() if k not in constants.INTERNAL_STATIC_VARS}
    return _rendered(loader, merged, host=host.name, source=source)


def _rendered(
    loader, merged: Mapping[str, object], *, host: str | None = None, source: str = ""
) -> dict[str, object]:
    """Templated and decrypted variables as plain Python values.

    For a host (`host` given), a variable xdpcap reads that fails is an error naming it; any
    other variable that fails is kept as written (or left out when it is still encrypted).
    """
    from ansible.errors import AnsibleError
    from ansible.template import Templar

    templar = Templar(loader=loader, variables=dict(merged))
    out: dict[str, object] = {}
    for name, value in merged.items():
        try:
            out[name] = _plain(templar.template(value))
        except (AnsibleError, _NotPlain) as exc:
            if host is not None and name.startswith(_USED_PREFIXES):
                message = _one_line(getattr(exc, "message", exc))
                if "vault" in message.lower() or "decrypt" in message.lower():
                    message = (
                        "is vault-encrypted and could not be decrypted (--vault-password-file)"
                    )
                elif is_secret(name):  # Jinja's message may quote the template, secret and all
                    message = "cannot be templated (the value is not shown)"
                else:
                    message = f"cannot be templated: {message}"
                raise InventoryError(f"{source}: host '{host}': {name}: {message}") from None
            with contextlib.suppress(_NotPlain):
                out[name] = _plain(value)
    return out


class _NotPlain(Exception):
    pass


def _plain(value: object) -> object:
    """Ansible's tagged str/int/list/dict subclasses as the built-in types the readers share."""
    if value is None or isinstance(value, bool):
        return value
    if hasattr(value, "_ciphertext") and hasattr(value, "data"):
        return str(value.data)  # ansible-core < 2.19: a `!vault` value decrypts on access
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    raise _NotPlain(type(value).__name__)  # an EncryptedString nobody could decrypt


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
