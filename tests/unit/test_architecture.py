"""The shape the code keeps: one direction of dependencies, the agent's zipapp holding only
what runs on a host, the agent's command line written and parsed in one place, and every
command's --help ending with examples."""

from __future__ import annotations

import argparse
import ast
import io
import zipfile
from pathlib import Path

import pytest
from xdpcap import agent
from xdpcap.agent.command_line import CaptureArgs, build_parser, capture_argv
from xdpcap.orchestrator.cli.examples import EXAMPLES
from xdpcap.orchestrator.cli.main import build_parser as xdpcap_parser
from xdpcap.orchestrator.remote.bundle import build_agent_bundle

AGENT_DIR = Path(agent.__file__).parent


def _package_of(path: Path) -> str:
    return "xdpcap." + ".".join(path.relative_to(AGENT_DIR.parent).parent.parts)


def _imported_modules(source: str, package: str) -> list[str]:
    """Every module a file of `package` imports, relative imports resolved."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                names.append(".".join([*base, node.module] if node.module else base))
            else:
                names.append(node.module or "")
    return names


def test_nothing_under_agent_imports_the_controller() -> None:
    files = sorted(AGENT_DIR.rglob("*.py"))
    assert len(files) > 20  # the walk found the agent's modules
    offenders = {
        str(path.relative_to(AGENT_DIR)): name
        for path in files
        for name in _imported_modules(path.read_text(), _package_of(path))
        if name.startswith(("xdpcap.orchestrator", "orchestrator"))
    }
    assert offenders == {}


def test_the_import_check_sees_every_way_to_import_the_controller() -> None:
    package = _package_of(AGENT_DIR / "hooks" / "xdp.py")
    for source in (
        "from ...orchestrator import errors",
        "from ...orchestrator.merge.reader import load",
        "import xdpcap.orchestrator.cli",
        "from xdpcap.orchestrator import errors",
    ):
        assert any(n.startswith("xdpcap.orchestrator") for n in _imported_modules(source, package))


def test_the_zipapp_carries_only_the_agent_and_its_programs(tmp_path: Path) -> None:
    bundle = build_agent_bundle(cache_dir=tmp_path)
    with zipfile.ZipFile(io.BytesIO(bundle.data)) as archive:
        names = archive.namelist()
    assert "xdpcap/agent/capture.py" in names and "xdpcap/bpf/sampler.c" in names
    assert not [n for n in names if n.startswith("xdpcap/orchestrator")]
    assert not [n for n in names if "pcapng_reader" in n]  # the controller reads pcapng


def test_capture_argv_is_parsed_back_into_the_same_values() -> None:
    args = CaptureArgs(
        iface="eth0",
        output="/tmp/x/out.pcapng",
        duration_s=2.5,
        count=10,
        snaplen=128,
        sample_rate=4,
        xdp_mode="skb",
        direction="in",
        wait_start=True,
        start_timeout_s=30.0,
        stream=True,
        filter_args=("--filter-cbpf", "ether=1,6 0 0 65535", "tcp port 80"),
    )
    parsed = build_parser().parse_args(capture_argv(args))
    assert (parsed.command, parsed.iface, parsed.output) == ("capture", "eth0", args.output)
    assert (parsed.duration, parsed.count, parsed.snaplen) == (2.5, 10, 128)
    assert (parsed.sample_rate, parsed.xdp_mode, parsed.direction) == (4, "skb", "in")
    assert parsed.wait_start and parsed.json_events and parsed.stream
    assert parsed.start_timeout == 30.0 and parsed.start_at is None
    assert parsed.filter_cbpf == ["ether=1,6 0 0 65535"]
    assert parsed.expression == ["tcp port 80"]


def test_capture_argv_round_trips_process_selection() -> None:
    args = CaptureArgs(
        iface="eth0", output="o.pcapng", pid=4121, comm="-bash", container="web1",
        filter_args=("udp",),
    )  # fmt: skip
    parsed = build_parser().parse_args(capture_argv(args))
    assert (parsed.pid, parsed.comm, parsed.container) == (4121, "-bash", "web1")
    assert parsed.process is None and parsed.expression == ["udp"]  # selection turns it on
    off = build_parser().parse_args(capture_argv(CaptureArgs("eth0", "o", process=False)))
    assert not off.process and off.pid is None and off.comm is None


def test_capture_argv_leaves_the_agents_defaults_alone() -> None:
    argv = capture_argv(CaptureArgs(iface="eth0", output="o.pcapng", start_at_ns=5))
    parsed = build_parser().parse_args(argv)
    assert "--snaplen" not in argv and parsed.snaplen == 262144
    assert parsed.start_at == 5 and not parsed.wait_start
    assert parsed.process is None and "--process" not in argv and "--pid" not in argv


def _commands(parser, words: str = "") -> dict[str, object]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                path = f"{words} {name}".strip()
                found[path] = child
                found.update(_commands(child, path))
    return found


def test_every_command_has_examples() -> None:
    commands = _commands(xdpcap_parser())
    assert {"run", "merge", "lab up", "demo"} <= set(commands)
    assert set(commands) == set(EXAMPLES)


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_help_ends_with_examples(command: str) -> None:
    parser = _commands(xdpcap_parser())[command]
    text = parser.format_help().rstrip()
    assert "\nexamples:\n" in text
    assert text.endswith(EXAMPLES[command].rstrip())


def test_every_package_is_installed() -> None:
    """pyproject.toml lists the packages one by one: a new folder must be in the list,
    or an installed xdpcap (not an editable one) goes without it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[2]  # the checkout
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        "xdpcap." + ".".join(init.parent.relative_to(root).parts)
        for top in ("agent", "orchestrator", "bpf")
        for init in (root / top).rglob("__init__.py")
    }
    assert found - listed == set()
