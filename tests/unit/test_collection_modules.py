"""The xdpcap.capture collection's modules and playbook, without a host: arguments, filters,
events, and the variables the playbook reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import yaml

pytest.importorskip("ansible", reason="ansible-core is in the test extras")

COLLECTION = Path(__file__).parents[2] / "ansible_collections" / "xdpcap" / "capture"


def module(name: str) -> ModuleType:
    path = COLLECTION / "plugins" / "modules" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"xdpcap_capture_{name}", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_agent_arguments_are_a_list_with_the_start_time_and_the_filter_last() -> None:
    agent = module("agent")
    params = {
        "agent": "/tmp/x/xdpcap-agent.pyz",
        "iface": "eth0",
        "output": "/tmp/x/capture.pcapng",
        "start_at_ns": 1796380000000000000,
        "duration": 8,
        "count": 100,
        "direction": "in",
        "filter_args": ["--filter-cbpf", "ether=4,...", "icmp or udp port 53"],
        "xdp_hook": "/sys/fs/bpf/lb_maps/xdpcap_hook",
    }
    argv = agent.agent_command(params, "/usr/bin/python3")
    assert argv[argv.index("--xdp-hook") + 1] == "/sys/fs/bpf/lb_maps/xdpcap_hook"
    assert argv[:4] == ["/usr/bin/python3", "/tmp/x/xdpcap-agent.pyz", "capture", "--json-events"]
    assert argv[argv.index("--start-at") + 1] == "1796380000000000000"
    assert argv[argv.index("--duration") + 1] == "8.0"
    assert argv[argv.index("--count") + 1] == "100"
    assert argv[-1] == "icmp or udp port 53"  # one word: no shell ever splits it


@pytest.mark.parametrize("iface", ["eth0", "ens1f0", "bond0.100", "br-lan", "x" * 15])
def test_agent_accepts_interface_names(iface: str) -> None:
    assert module("agent").IFACE.fullmatch(iface)


@pytest.mark.parametrize("iface", ["", "-x", "eth0;id", "a b", "x" * 16, "eth0/1", "$(id)"])
def test_agent_refuses_unsafe_interface_names(iface: str) -> None:
    assert not module("agent").IFACE.fullmatch(iface)


def test_agent_reads_the_events_and_skips_other_lines() -> None:
    lines = [
        json.dumps({"event": "ready", "iface": "eth0"}),
        "bcc: some warning",
        json.dumps({"event": "done", "seen": 3, "written": 3}),
        "{not json",
    ]
    events = module("agent").read_events("\n".join(lines))
    assert [e["event"] for e in events] == ["ready", "done"]


def test_plan_compiles_each_distinct_filter_once_to_agent_arguments() -> None:
    plan = module("plan")
    compiled = plan.compile_filters(["icmp", "", "icmp", "udp port 53"])
    assert compiled[""] == []
    assert set(compiled) == {"", "icmp", "udp port 53"}
    args = compiled["icmp"]
    assert args[0] == "--filter-cbpf" and args[-1] == "icmp"
    assert any(arg.startswith("ether=") for arg in args)


@pytest.mark.parametrize("text", ["tcp port", "-x", "icmp\x00"])
def test_plan_refuses_bad_filters(text: str) -> None:
    from xdpcap.agent.filter.cbpf import FilterError

    with pytest.raises(FilterError):
        module("plan").compile_filters([text])


def test_plan_default_workdir_is_beside_the_output() -> None:
    assert module("plan").default_workdir("/srv/cap/merged.pcapng") == "/srv/cap/merged-hosts"


def test_playbook_reads_the_documented_variables_and_merges_only_play_hosts() -> None:
    text = (COLLECTION / "playbooks" / "capture.yml").read_text()
    (play,) = yaml.safe_load(text)
    for variable in (
        "xdpcap_iface",
        "xdpcap_duration",
        "xdpcap_count",
        "xdpcap_filter",
        "xdpcap_direction",
        "xdpcap_xdp_hook",
        "xdpcap_output",
    ):
        assert variable in text, variable
    merge = next(t for t in play["tasks"] if "xdpcap.capture.merge" in t)
    assert merge["run_once"] is True and merge["delegate_to"] == "localhost"
    assert "ansible_play_hosts" in merge["xdpcap.capture.merge"]["captures"]
    capture = next(t for t in play["tasks"] if "block" in t)
    agent = next(t for t in capture["block"] if "xdpcap.capture.agent" in t)
    assert agent["poll"] == 0  # started in every batch without waiting for the window


def test_galaxy_metadata() -> None:
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == ("xdpcap", "capture")
    assert (COLLECTION / galaxy["readme"]).exists()
