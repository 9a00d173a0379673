"""bpf/sampler.h and agent/contract.py describe the same bytes."""

from __future__ import annotations

import re
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
#define S struct xdpcap_sample
#define E struct xdpcap_epb_head
#define C struct xdpcap_config
#define W struct xdpcap_owner_watch
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(S), offsetof(S, ts_ns), offsetof(S, cap_len),
           offsetof(S, queue), offsetof(S, direction), offsetof(S, cookie), offsetof(S, epb));
    printf("%zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(E), offsetof(E, block_type),
           offsetof(E, block_len), offsetof(E, if_id), offsetof(E, ts_high),
           offsetof(E, ts_low), offsetof(E, cap_len), offsetof(E, orig_len));
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(C), offsetof(C, enabled),
           offsetof(C, snaplen), offsetof(C, sample_rate), offsetof(C, ifindex),
           offsetof(C, realtime_offset_ns), offsetof(C, window_start_ns),
           offsetof(C, window_end_ns), offsetof(C, process), offsetof(C, select_pid),
           offsetof(C, cookie_offset), offsetof(C, filename_offset), offsetof(C, select_comm));
    printf("%zu %zu %zu %zu %d %d %d %d\n", sizeof(struct xdpcap_proc),
           offsetof(struct xdpcap_proc, cgroup_id), offsetof(struct xdpcap_proc, comm),
           sizeof(struct xdpcap_exec), XDPCAP_PROCESS_ON, XDPCAP_SELECT_PID,
           XDPCAP_SELECT_COMM, XDPCAP_SELECT_CGROUP);
    printf("%d %d %d %d %d %d %d\n", XDPCAP_SEEN, XDPCAP_SAMPLED, XDPCAP_NOT_SAMPLED,
           XDPCAP_OUTPUT_FAILED, XDPCAP_FILTERED_OUT, XDPCAP_COUNTER_MAX,
           XDPCAP_EPB_OPTIONS_LEN);
    printf("%d %d %d %u\n", XDPCAP_INBOUND, XDPCAP_OUTBOUND, XDPCAP_DIRECTIONS,
           (unsigned)XDPCAP_MAX_CAP_LEN);
    printf("%zu %zu %d %d %d %d\n", offsetof(S, verdict), sizeof(((S *)0)->direction),
           XDPCAP_SET_VERDICT, XDPCAP_XDP_ACTIONS, XDPCAP_COUNTER_SETS, XDPCAP_EPB_VERDICT_LEN);
    printf("%zu %zu %zu %zu %zu %zu %d %d %d %d %d\n", sizeof(W), offsetof(W, ifindex),
           offsetof(W, ifindex_offset), offsetof(W, net_offset), offsetof(W, cookie_offset),
           offsetof(W, netns_cookie), XDPCAP_OWNER_ABORTED, XDPCAP_OWNER_EXCEPTION,
           XDPCAP_OWNER_REDIRECTED, XDPCAP_OWNER_REDIRECT_FAILED, XDPCAP_OWNER_EVENTS);
    return 0;
}
"""


def _offsets(layout: struct.Struct) -> list[int]:
    order = layout.format[0]
    fields = re.findall(r"\d*[a-zA-Z]", layout.format[1:])  # "16s" is one field
    return [struct.calcsize(order + "".join(fields[:i])) for i in range(len(fields))]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to compile bpf/sampler.h")
def test_header_and_python_mirror_agree(tmp_path: Path) -> None:
    source = tmp_path / "sizes.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "sizes"
    subprocess.run(["gcc", "-I", str(BPF_DIR), "-o", str(binary), str(source)], check=True)
    lines = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    sample, epb, config, process, constants, directions, verdicts, owner = (
        [int(v) for v in line.split()] for line in lines.splitlines()
    )
    # The Python mirror: each field's offset is the size of the fields before it.
    assert sample[0] == contract.SAMPLE.size
    assert sample[1:5] == _offsets(contract.SAMPLE)[:4]
    assert sample[5] == contract.COOKIE_OFFSET == _offsets(contract.SAMPLE)[5]
    assert sample[6] == contract.EPB_HEAD_OFFSET == _offsets(contract.SAMPLE)[6]
    assert epb[0] == contract.EPB_HEAD.size == contract.SAMPLE.size - contract.EPB_HEAD_OFFSET
    assert epb[1:] == _offsets(contract.EPB_HEAD)
    assert config[0] == contract.CONFIG.size
    assert config[1:] == _offsets(contract.CONFIG)
    assert process[0] == contract.PROC.size and process[1:3] == [8, 16]
    assert process[3] == contract.EXEC_PATH_LEN
    assert process[4:] == [
        contract.PROCESS_ON, contract.SELECT_PID, contract.SELECT_COMM, contract.SELECT_CGROUP,
    ]  # fmt: skip
    assert constants == [
        contract.SEEN,
        contract.SAMPLED,
        contract.NOT_SAMPLED,
        contract.OUTPUT_FAILED,
        contract.FILTERED_OUT,
        contract.COUNTER_MAX,
        contract.EPB_OPTIONS_LEN,
    ]
    assert directions == [
        contract.INBOUND,
        contract.OUTBOUND,
        contract.DIRECTIONS,
        contract.MAX_CAP_LEN,
    ]
    assert verdicts == [
        _offsets(contract.SAMPLE)[4],
        1,
        contract.SET_VERDICT,
        len(contract.XDP_ACTIONS),
        contract.COUNTER_SETS,
        contract.EPB_VERDICT_LEN,
    ]
    assert owner[0] == contract.OWNER_WATCH.size
    assert owner[1:6] == _offsets(contract.OWNER_WATCH)
    assert owner[6:] == [*range(len(contract.OWNER_EVENTS)), len(contract.OWNER_EVENTS)]
