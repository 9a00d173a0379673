"""The Python mirror of bpf/sampler.h: sample metadata, config and counter indexes."""

from __future__ import annotations

import struct

# struct xdpcap_sample (packed): ts_ns u64, ifindex u32, rx_queue u32, orig_len u32, cap_len u32.
SAMPLE = struct.Struct("<QIIII")
# struct xdpcap_config (packed): enabled u32, snaplen u32, sample_rate u32.
CONFIG = struct.Struct("<III")

SEEN = 0
SAMPLED = 1
NOT_SAMPLED = 2
OUTPUT_FAILED = 3
COUNTER_MAX = 4

PROGRAM_NAME = "xdpcap_sampler"  # also the name the kernel shows (at most 15 bytes)
PROGRAM_FILE = "xdp_sampler.c"
HEADER_FILE = "sampler.h"
