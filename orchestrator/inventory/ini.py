"""The INI reader: ``[group]``, ``[group:vars]`` and ``[group:children]`` sections and
``host key=value ...`` lines.
"""

from __future__ import annotations

import ast
import re
import shlex
import warnings

from .builder import IMPLICIT_GROUPS, Builder, GroupDraft, Var

# '[name]' or '[name:type]', then an optional comment; a name has no ':', ']' or whitespace.
_INI_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")


def _ini_value(text: str) -> object:
    """Ansible reads an INI value as a Python literal when it is one (22 -> int), else as text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


class _IniReader:
    """Reads INI lines into a builder; remembers groups named before they are defined."""

    def __init__(self, builder: Builder) -> None:
        self.b = builder
        self.group = "ungrouped"  # hosts before any section header are ungrouped
        self.kind = "hosts"
        self.defined = set(IMPLICIT_GROUPS)
        # Groups only named in [x:vars] or [y:children]: an error unless defined later.
        self.pending: dict[str, tuple[int, str]] = {}

    def read(self, text: str) -> None:
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if line and line[0] not in "#;":
                self.line(line, number)
        for line_number, message in self.pending.values():
            self.b.fail(line_number, message)

    def line(self, line: str, number: int) -> None:
        section = _INI_SECTION.match(line)
        if section:
            self.section(section[1], section[2] or "hosts", number)
        elif line.startswith("[") and line.endswith("]"):
            self.b.fail(number, f"invalid section header {line!r} (no spaces or ':' in names)")
        elif self.kind == "hosts":
            self.host_line(line, number)
        elif self.kind == "vars":
            self.var_line(line, number)
        else:
            self.child_line(line, number)

    def section(self, group: str, kind: str, number: int) -> None:
        if kind not in ("hosts", "vars", "children"):
            self.b.fail(number, f"section [{group}:{kind}] has unknown type '{kind}'")
        self.group, self.kind = group, kind
        if kind == "vars":
            if group not in self.defined:
                message = f"section [{group}:vars] is for undefined group '{group}'"
                self.pending.setdefault(group, (number, message))
            return
        self.b.add_group(group, number)
        self.defined.add(group)
        self.pending.pop(group, None)

    def host_line(self, line: str, number: int) -> None:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            self.b.fail(number, f"group '{self.group}': cannot split host line: {exc}")
        if not tokens:
            return
        key, variables = tokens[0], {}
        for position, token in enumerate(tokens[1:], start=2):
            name, equals, value = token.partition("=")
            if not equals or not name:
                # The word itself is not shown: it may be a password missing its 'name='.
                self.b.fail(number, f"host '{key}': word {position} is not key=value")
            variables[name] = Var(_ini_value(value), number, "host")
        self.b.add_host_key(self.group, key, number, variables)

    def var_line(self, line: str, number: int) -> None:
        name, equals, value = line.partition("=")
        if not equals or not name.strip():
            self.b.fail(number, f"section [{self.group}:vars]: expected key=value")
        if self.group in self.defined:
            self.b.add_group(self.group, number)
        else:  # still pending: keep the vars, the error comes at the end if never defined
            self.b.groups.setdefault(self.group, GroupDraft(number))
        var = Var(_ini_value(value.strip()), number, f"group '{self.group}'")
        self.b.group_vars(self.group, {name.strip(): var})

    def child_line(self, line: str, number: int) -> None:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            self.b.fail(number, f"section [{self.group}:children]: {exc}")
        if len(tokens) != 1:
            self.b.fail(number, f"section [{self.group}:children]: expected one group name")
        child = tokens[0]
        if child not in self.defined:
            message = f"section [{self.group}:children] includes undefined group '{child}'"
            self.pending.setdefault(child, (number, message))
        self.b.add_child(self.group, child, number)


def read_ini(builder: Builder, text: str) -> None:
    _IniReader(builder).read(text)
