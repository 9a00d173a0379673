"""Perf buffer size per CPU: generous on small hosts, bounded in total on big ones."""

from __future__ import annotations

import pytest
from xdpcap.agent.perf_ring import MAX_BUFFER_PAGES, MIN_BUFFER_PAGES, buffer_pages_for


@pytest.mark.parametrize(
    ("cpus", "pages"),
    [(1, 2048), (2, 2048), (3, 2048), (8, 2048), (16, 1024), (24, 512), (64, 256), (512, 256)],
)
def test_pages_per_cpu(cpus: int, pages: int) -> None:
    assert buffer_pages_for(cpus) == pages


@pytest.mark.parametrize("cpus", range(1, 300))
def test_always_a_power_of_two_within_bounds(cpus: int) -> None:
    pages = buffer_pages_for(cpus)
    assert pages & (pages - 1) == 0
    assert MIN_BUFFER_PAGES <= pages <= MAX_BUFFER_PAGES
    if pages > MIN_BUFFER_PAGES:
        assert pages * cpus * 4096 <= 64 << 20  # the total budget holds
