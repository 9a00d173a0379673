"""The VM lab's box recipe and libvirt's daemons, without building or starting anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from xdpcap.orchestrator.lab import box, libvirt
from xdpcap.orchestrator.lab.system import pid_alive


def test_mirror_is_the_one_apt_uses(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    (tmp_path / "sources.list").write_text("deb https://packages.example.com/apt stable main\n")
    assert box.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_a_one_line_list_and_the_default(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\n"
    )
    assert box.apt_mirror(tmp_path) == "http://ftp.de.debian.org/debian"
    assert box.apt_mirror(tmp_path / "none") == box.DEFAULT_MIRROR


def test_the_cache_key_follows_the_recipe_not_the_mirror(tmp_path: Path) -> None:
    plan = box.BoxPlan(cache=tmp_path)
    assert plan.key == box.BoxPlan(cache=tmp_path, mirror="http://other/debian").key
    assert plan.key != box.BoxPlan(cache=tmp_path, packages=("python3",)).key
    assert plan.box_file.parent == plan.kernel.parent == tmp_path / plan.key


def test_the_box_has_what_the_agent_needs() -> None:
    for package in ("linux-image-amd64", "linux-headers-amd64", "python3-bpfcc", "sudo"):
        assert package in box.PACKAGES
    assert "openssh-server" in box.PACKAGES and "python3" in box.PACKAGES


def test_box_vagrantfile_boots_the_cached_kernel(tmp_path: Path) -> None:
    plan = box.BoxPlan(cache=tmp_path)
    text = box.box_vagrantfile(plan)
    assert f'lv.kernel = "{plan.kernel}"' in text
    assert f'lv.initrd = "{plan.initrd}"' in text
    assert "root=/dev/vda" in text and "net.ifnames=0" in text


def test_box_listed_by_vagrant(monkeypatch: pytest.MonkeyPatch) -> None:
    listing = (
        "1,,box-name,debian/bookworm64\n1,,box-provider,virtualbox\n1,,box-version,12\n"
        "2,,box-name,xdpcap/bookworm\n2,,box-provider,libvirt\n2,,box-version,0\n"
    )

    def fake_run(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 0, listing, "")

    monkeypatch.setattr(box, "run", fake_run)
    assert box.box_in_vagrant("xdpcap/bookworm")
    assert not box.box_in_vagrant("debian/bookworm64")  # not for libvirt
    assert box.box_volume_prefix("xdpcap/bookworm").startswith("xdpcap-VAGRANTSLASH-bookworm_")


def test_libvirt_stop_ends_only_what_was_recorded(tmp_path: Path) -> None:
    """stop() kills by recorded pid, only the names asked for, and keeps the others."""
    sleepers = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)
    ]
    state = tmp_path / "started.json"
    state.write_text(json.dumps({"virtlogd": sleepers[0].pid, "libvirtd": sleepers[1].pid}))
    try:
        assert libvirt.stop(["libvirtd"], state=state) == ["libvirtd"]
        sleepers[1].wait(timeout=10)
        assert pid_alive(sleepers[0].pid)
        assert json.loads(state.read_text()) == {"virtlogd": sleepers[0].pid}
        assert libvirt.stop(state=state) == ["virtlogd"]
        sleepers[0].wait(timeout=10)
        assert not state.exists()
    finally:
        for proc in sleepers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
