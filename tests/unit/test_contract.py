"""bpf/sampler.h and agent/contract.py describe the same bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from xdpcap.agent import contract

BPF_DIR = Path(contract.__file__).resolve().parent.parent / "bpf"
PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include "sampler.h"
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %d %d %d %d %d\n",
           sizeof(struct xdpcap_sample), offsetof(struct xdpcap_sample, ts_ns),
           offsetof(struct xdpcap_sample, ifindex), offsetof(struct xdpcap_sample, rx_queue),
           offsetof(struct xdpcap_sample, orig_len), offsetof(struct xdpcap_sample, cap_len),
           sizeof(struct xdpcap_config), XDPCAP_SEEN, XDPCAP_SAMPLED, XDPCAP_NOT_SAMPLED,
           XDPCAP_OUTPUT_FAILED, XDPCAP_COUNTER_MAX);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to compile bpf/sampler.h")
def test_header_and_python_mirror_agree(tmp_path: Path) -> None:
    source = tmp_path / "sizes.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "sizes"
    subprocess.run(["gcc", "-I", str(BPF_DIR), "-o", str(binary), str(source)], check=True)
    values = [
        int(v)
        for v in subprocess.run(
            [str(binary)], capture_output=True, text=True, check=True
        ).stdout.split()
    ]
    # The Python mirror: struct formats with the same field order.
    sample_offsets = [0, 8, 12, 16, 20]
    assert values[0] == contract.SAMPLE.size
    assert values[1:6] == sample_offsets
    assert values[6] == contract.CONFIG.size
    assert values[7:] == [
        contract.SEEN,
        contract.SAMPLED,
        contract.NOT_SAMPLED,
        contract.OUTPUT_FAILED,
        contract.COUNTER_MAX,
    ]
