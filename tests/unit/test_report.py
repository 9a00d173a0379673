"""The tables people read: live progress, final results, check verdicts."""

from __future__ import annotations

from rich.console import Console
from xdpcap.orchestrator.clock.probe import ClockOffset
from xdpcap.orchestrator.remote.state import HostState
from xdpcap.orchestrator.run.tables import check_table, final_lines, final_table, live_table


def _render(table) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(table)
    return console.export_text()


def _states() -> list[HostState]:
    a = HostState("web01", "192.0.2.1", "eth0", state="capturing", packets=1200, bytes=3 << 20)
    b = HostState("web02", "192.0.2.2", "eth1", state="captured", packets=34, bytes=512, lost=7)
    return [a, b]


def test_live_table_has_a_row_per_host_and_a_total() -> None:
    lines = _render(live_table(_states())).splitlines()
    (web01,) = [line for line in lines if "web01" in line]
    assert "eth0" in web01 and "capturing" in web01 and "1200" in web01 and "3.0 MiB" in web01
    (web02,) = [line for line in lines if "web02" in line]
    assert "eth1" in web02 and "captured" in web02 and "512 B" in web02 and web02.split()[-2] == "7"
    (total,) = [line for line in lines if "total" in line]
    assert "1234" in total and total.split()[-2] == "7"


def test_final_report_says_why_a_host_failed() -> None:
    ok, failed = _states()
    ok.state = "done"
    ok.local_file = "x.pcapng"
    ok.summary = {
        "written": 1200,
        "lost": 0,
        "seen": 1200,
        "window_start_ns": 1,
        "window_end_ns": 2_000_000_001,
    }
    ok.clock = ClockOffset(-55_000, 160_000)
    failed.state, failed.reason = "failed", "host key of 192.0.2.2 changed"
    text = _render(final_table([ok, failed]))
    assert "ok" in text and "2.00 s" in text and "-0.055 ms" in text
    assert "host key of 192.0.2.2 changed" in text
    lines = final_lines([ok, failed])
    assert lines[0].startswith("web01: ok; written 1200, lost 0, seen 1200, window 2.00 s")
    assert lines[1].startswith("web02: failed: host key of 192.0.2.2 changed")


def test_check_table_shows_verdicts_and_unreachable_hosts() -> None:
    report = {
        "verdict": "ok",
        "kernel": "6.18",
        "bcc": "0.26.0",
        "headers": "x",
        "headers_exact": False,
        "sampler_cached": False,
        "hooks": {"in": "xdp", "out": "clsact"},
        "reason": "ready to capture",
    }
    text = _render(check_table([("web01", report, None), ("web02", None, "connection refused")]))
    (web01,) = [line for line in text.splitlines() if "web01" in line]
    assert "ok" in web01 and "other version" in web01 and "compiles" in web01
    assert "clsact" in text  # how outbound packets would be captured
    (web02,) = [line for line in text.splitlines() if "web02" in line]
    assert "unreachable" in web02 and "connection refused" in web02
