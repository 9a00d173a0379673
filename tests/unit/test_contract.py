"""bpf/sampler.h and agent/contract.py describe the same bytes."""

from __future__ import annotations

import shutil
import struct
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
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %d %d %d %d %d\n",
           sizeof(struct xdpcap_sample), offsetof(struct xdpcap_sample, ts_ns),
           offsetof(struct xdpcap_sample, ifindex), offsetof(struct xdpcap_sample, rx_queue),
           offsetof(struct xdpcap_sample, orig_len), offsetof(struct xdpcap_sample, cap_len),
           sizeof(struct xdpcap_config), offsetof(struct xdpcap_config, enabled),
           offsetof(struct xdpcap_config, snaplen),
           offsetof(struct xdpcap_config, sample_rate),
           XDPCAP_SEEN, XDPCAP_SAMPLED, XDPCAP_NOT_SAMPLED,
           XDPCAP_OUTPUT_FAILED, XDPCAP_COUNTER_MAX);
    return 0;
}
"""


def _offsets(layout: struct.Struct) -> list[int]:
    order, fields = layout.format[0], layout.format[1:]
    return [struct.calcsize(order + fields[:i]) for i in range(len(fields))]


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
    # The Python mirror: each field's offset is the size of the fields before it.
    assert values[0] == contract.SAMPLE.size
    assert values[1:6] == _offsets(contract.SAMPLE)
    assert values[6] == contract.CONFIG.size
    assert values[7:10] == _offsets(contract.CONFIG)
    assert values[10:] == [
        contract.SEEN,
        contract.SAMPLED,
        contract.NOT_SAMPLED,
        contract.OUTPUT_FAILED,
        contract.COUNTER_MAX,
    ]
