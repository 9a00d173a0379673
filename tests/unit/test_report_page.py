"""`xdpcap report` and report.html: the tables, and the page rendered offline in headless
Chromium (Debian's `chromium`; skipped where it is not installed) with no console
errors, every plot drawn, and a screenshot kept in the test's folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from xdpcap.orchestrator.cli.main import main

from .scenarios_clock import journeys_mesh

PLOTS = 5  # host counts, clock offsets, delay distributions, delay over time, loss over time


def _merge(tmp_path: Path) -> Path:
    paths = journeys_mesh(tmp_path)
    out = tmp_path / "merged.pcapng"
    assert main(["merge", *map(str, paths), "-w", str(out)]) == 0
    return out


def test_merge_writes_the_journeys_and_the_page(tmp_path: Path, capsys) -> None:
    out = _merge(tmp_path)
    data = json.loads((tmp_path / "merged.pcapng.json").read_text())
    pairs = {(p["sender"], p["receiver"]): p for p in data["journeys"]["pairs"]}
    assert (pairs[("a", "b")]["left"], pairs[("a", "b")]["lost"]) == (10, 2)
    page = (tmp_path / "merged.pcapng.html").read_text()
    assert page.count('class="plotly-graph-div"') == PLOTS
    # Nothing to fetch: plotly.js is inline, no script or stylesheet comes from elsewhere.
    assert "<script src=" not in page and "<link " not in page
    capsys.readouterr()
    assert main(["report", "--no-page", f"{out}.json"]) == 0
    printed = capsys.readouterr().out
    assert "a → b" in printed and "clock alignment" in printed


def test_report_of_a_run_folder(tmp_path: Path, capsys) -> None:
    out = _merge(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text((tmp_path / f"{out.name}.json").read_text())
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_page_renders_offline_in_chromium(tmp_path: Path) -> None:
    _merge(tmp_path)
    page = tmp_path / "merged.pcapng.html"
    shot = tmp_path / "report.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
    ]
    result = subprocess.run(
        ["chromium", *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # no errors, no warnings from the page's scripts
    # Plotly drew every figure: each plot's div holds its SVG.
    assert result.stdout.count('class="main-svg"') >= PLOTS
    subprocess.run(
        ["chromium", *flags, "--window-size=1400,3000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000


def test_no_name_in_a_plot_ends_its_script() -> None:
    """Host names reach the figures' JSON, inline in a script: "</script>" in one must
    stay text, and the JSON must read back as the figure."""
    from xdpcap.orchestrator.report.page import _plot

    name = '</script><script>alert("x")</script>&'
    figure = {"data": [{"type": "bar", "x": [name], "y": [1]}], "layout": {"height": 380}}
    body = _plot(figure, "p")
    assert body.count("</script>") == 1 and "<script>alert" not in body
    call = body[body.index("Plotly.newPlot(") :]
    data = call[call.index("[") : call.index(', {"height"')]
    assert json.loads(data) == figure["data"]
