"""The Python mirror of bpf/sampler.h: sample metadata, config and counter indexes."""

from __future__ import annotations

import struct

# struct xdpcap_epb_head (packed): block_type, block_len, if_id, ts_high, ts_low, cap_len,
# orig_len, all u32: the head of a pcapng enhanced packet block.
EPB_HEAD = struct.Struct("<IIIIIII")
# struct xdpcap_sample (packed): ts_ns u64, cap_len u32, rx_queue u32, then the EPB head.
SAMPLE = struct.Struct("<QII" + EPB_HEAD.format.lstrip("<"))
EPB_HEAD_OFFSET = 16  # where the EPB head starts in struct xdpcap_sample
# XDPCAP_EPB_OPTIONS_LEN: epb_flags (8) + epb_queue (8) + opt_endofopt (4).
EPB_OPTIONS_LEN = 20
# struct xdpcap_config (packed): enabled u32, snaplen u32, sample_rate u32, reserved u32,
# realtime_offset_ns u64.
CONFIG = struct.Struct("<IIIIQ")

SEEN = 0
SAMPLED = 1
NOT_SAMPLED = 2
OUTPUT_FAILED = 3
COUNTER_MAX = 4

PROGRAM_NAME = "xdpcap_sampler"  # also the name the kernel shows (at most 15 bytes)
PROGRAM_FILE = "xdp_sampler.c"
HEADER_FILE = "sampler.h"
