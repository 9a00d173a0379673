"""The YAML reader, and the JSON reader (a YAML-shaped inventory or `ansible-inventory
--list` output), which reads JSON through YAML nodes to keep line numbers.
"""

from __future__ import annotations

import json
from typing import NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .builder import Builder, Var, Vaulted


class _Loader(yaml.SafeLoader):
    """SafeLoader that knows Ansible's tags: !unsafe is a plain string, !vault stays opaque."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
_Loader.add_constructor("!vault", lambda loader, node: Vaulted())

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "null" if node.tag == _NULL_TAG else "a scalar"


def _is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG)


class Doc:
    """A composed document whose nodes keep line numbers for messages."""

    def __init__(
        self, builder: Builder, text: str, *, json_mode: bool, lines_known: bool = True
    ) -> None:
        self.b = builder
        self.json_mode = json_mode
        self.lines_known = lines_known
        self._loader = _Loader(text)
        self._flattened: set[int] = set()
        try:
            self.root: Node | None = self._loader.get_single_node()
        except yaml.YAMLError as exc:
            self._yaml_fail(exc)
        except RecursionError:
            builder.fail(1, "YAML nesting is too deep")

    def _yaml_fail(self, exc: yaml.YAMLError) -> NoReturn:
        # Only the problem and its line: the str() of a YAML error spans several lines.
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            parts = [exc.context, exc.problem]
            message = "; ".join(part for part in parts if part)
            self.b.fail(mark.line + 1 if mark else 1, f"invalid YAML: {message}")
        self.b.fail(1, f"invalid YAML: {exc}")

    def line(self, node: Node) -> int | None:
        return node.start_mark.line + 1 if self.lines_known else None

    def pairs(self, node: MappingNode, what: str) -> list[tuple[str, Node, int | None]]:
        """(key, value node, key line) of a mapping; a duplicate key is an error."""
        if id(node) not in self._flattened:
            self._check_duplicates(node, what)
            if not self.json_mode:
                try:
                    self._loader.flatten_mapping(node)  # resolve YAML merge keys ('<<: *base')
                except yaml.YAMLError as exc:
                    self._yaml_fail(exc)
            self._flattened.add(id(node))
        result: dict[str, tuple[Node, int | None]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.b.fail(
                    self.line(key_node), f"{what}: a key must be a name, found {_kind(key_node)}"
                )
            result[key_node.value] = (value_node, self.line(key_node))
        return [(key, value, line) for key, (value, line) in result.items()]

    def _check_duplicates(self, node: MappingNode, what: str) -> None:
        seen: dict[str, int | None] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            if key_node.value in seen:
                first = seen[key_node.value]
                self.b.fail(
                    self.line(key_node),
                    f"{what}: duplicate key '{key_node.value}' (first at line {first})",
                )
            seen[key_node.value] = self.line(key_node)

    def value(self, node: Node) -> object:
        if self.json_mode:
            return _json_value(node)
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._yaml_fail(exc)

    def entries(
        self, node: Node, what: str, *, allow_string: bool
    ) -> list[tuple[str, Node | None, int | None]]:
        """A section (hosts, vars, children): null is empty; Ansible reads a string as one key."""
        if _is_null(node):
            return []
        if allow_string and isinstance(node, ScalarNode):
            return [(node.value, None, self.line(node))]
        if not isinstance(node, MappingNode):
            self.b.fail(self.line(node), f"{what} must be a mapping, found {_kind(node)}")
        return list(self.pairs(node, what))

    def variables(self, node: Node | None, what: str, origin: str) -> dict[str, Var]:
        """Variables of a host or group; `what` names them in messages ("group 'web': vars")."""
        entries = [] if node is None else self.entries(node, what, allow_string=False)
        return {key: Var(self.value(value), line, origin) for key, value, line in entries}


def _json_value(node: Node) -> object:
    if isinstance(node, MappingNode):
        return {key.value: _json_value(value) for key, value in node.value}
    if isinstance(node, SequenceNode):
        return [_json_value(item) for item in node.value]
    # Plain scalars in JSON are numbers, true, false and null: read them as JSON does
    # (YAML 1.1 would read 1e5 as a string).
    return json.loads(node.value) if node.style is None else node.value


def read_yaml(doc: Doc, builder: Builder) -> None:
    assert isinstance(doc.root, MappingNode)  # checked by the caller
    for name, node, line in doc.pairs(doc.root, "inventory"):
        if name == "plugin":
            builder.fail(
                line,
                "this is an inventory plugin configuration; export it with "
                "'ansible-inventory -i FILE --list > hosts.json' and use that",
            )
        _read_yaml_group(doc, builder, name, node, line, parent=None)


def _read_yaml_group(
    doc: Doc,
    builder: Builder,
    name: str,
    node: Node | None,
    line: int | None,
    parent: str | None,
) -> None:
    builder.add_group(name, line)
    if parent is not None:
        builder.add_child(parent, name, line)
    if _is_null(node):
        return
    assert node is not None
    if not isinstance(node, MappingNode):
        builder.fail(
            doc.line(node),
            f"group '{name}' must be a mapping of hosts, vars and children, found {_kind(node)}",
        )
    where = f"group '{name}'"
    for key, value, key_line in doc.pairs(node, where):
        if key == "hosts":
            for host, host_node, host_line in doc.entries(
                value, f"{where}: hosts", allow_string=True
            ):
                what = f"{where}: host '{host}': variables"
                variables = doc.variables(host_node, what, "host")
                builder.add_host_key(name, host, host_line, variables)
        elif key == "vars":
            builder.group_vars(name, doc.variables(value, f"{where}: vars", where))
        elif key == "children":
            for child, child_node, child_line in doc.entries(
                value, f"{where}: children", allow_string=True
            ):
                _read_yaml_group(doc, builder, child, child_node, child_line, parent=name)
        else:
            builder.fail(
                key_line, f"{where}: unknown key '{key}' (a group has only hosts, vars, children)"
            )


def read_list_json(doc: Doc, builder: Builder) -> None:
    assert isinstance(doc.root, MappingNode)
    meta: Node | None = None
    for name, node, line in doc.pairs(doc.root, "inventory"):
        if name == "_meta":
            meta = node
        else:
            _read_json_group(doc, builder, name, node, line)
    # After the groups: hostvars only describe hosts the groups list (Ansible ignores others).
    if meta is not None:
        _read_json_hostvars(doc, builder, meta)


def _read_json_group(doc: Doc, builder: Builder, name: str, node: Node, line: int | None) -> None:
    builder.add_group(name, line)
    where = f"group '{name}'"
    if isinstance(node, SequenceNode):  # the short form scripts print: "group": ["host", ...]
        key = ScalarNode("tag:yaml.org,2002:str", "hosts", node.start_mark, node.end_mark)
        node = MappingNode("tag:yaml.org,2002:map", [(key, node)], node.start_mark, node.end_mark)
    for key, value, key_line in doc.entries(node, where, allow_string=False):
        assert value is not None
        if key == "hosts":
            for host, host_line in _json_names(doc, value, f"{where}: hosts"):
                builder.add_host(name, host, host_line, {})
        elif key == "children":
            for child, child_line in _json_names(doc, value, f"{where}: children"):
                builder.add_child(name, child, child_line)
        elif key == "vars":
            builder.group_vars(name, doc.variables(value, f"{where}: vars", where))
        else:
            builder.fail(
                key_line, f"{where}: unknown key '{key}' (a group has only hosts, vars, children)"
            )


def _json_names(doc: Doc, node: Node, what: str) -> list[tuple[str, int | None]]:
    if _is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        doc.b.fail(doc.line(node), f"{what} must be a list of names, found {_kind(node)}")
    names = []
    for item in node.value:
        # In JSON a quoted scalar is a string; plain ones are numbers, booleans or null.
        if not isinstance(item, ScalarNode) or item.style is None:
            doc.b.fail(doc.line(item), f"{what}: each entry must be a string, found {_kind(item)}")
        names.append((item.value, doc.line(item)))
    return names


def _read_json_hostvars(doc: Doc, builder: Builder, node: Node) -> None:
    for key, value, _ in doc.entries(node, "_meta", allow_string=False):
        if key != "hostvars":
            continue  # newer ansible-inventory adds keys xdpcap does not need
        assert value is not None
        for host, host_node, _host_line in doc.entries(
            value, "_meta: hostvars", allow_string=False
        ):
            if host in builder.hosts:
                variables = doc.variables(host_node, f"_meta: hostvars: '{host}'", "host")
                builder.hosts[host].vars.update(variables)
