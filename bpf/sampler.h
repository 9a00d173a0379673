/* The one wire contract between the XDP sampler and user space.
 *
 * Mirrored once in Python (agent/contract.py); tests/integration/test_contract.py
 * checks that both sides agree on every size and offset.
 */
#ifndef XDPCAP_SAMPLER_H
#define XDPCAP_SAMPLER_H

#include <linux/types.h>

/* Metadata in front of every sample; the kernel appends cap_len packet bytes. */
struct xdpcap_sample {
	__u64 ts_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex;   /* ingress interface */
	__u32 rx_queue;  /* receive queue the packet came in on */
	__u32 orig_len;  /* whole packet, fragments included */
	__u32 cap_len;   /* bytes appended: min(snaplen, linear data) */
} __attribute__((packed));

/* Per-run settings, written by user space into the single-entry `config` map
 * before the program is attached, so one compiled program serves every run. */
struct xdpcap_config {
	__u32 enabled;      /* 0 until the capture window opens, 0 again when it closes */
	__u32 snaplen;      /* largest number of packet bytes per sample */
	__u32 sample_rate;  /* keep 1 packet in sample_rate; 0 and 1 keep every packet */
} __attribute__((packed));

/* Indexes of the per-CPU `counters` map. seen = sampled + not_sampled + output_failed. */
enum xdpcap_counter {
	XDPCAP_SEEN = 0,
	XDPCAP_SAMPLED = 1,        /* handed to the perf buffer */
	XDPCAP_NOT_SAMPLED = 2,    /* skipped by 1-in-N sampling */
	XDPCAP_OUTPUT_FAILED = 3,  /* perf buffer full: the sample is lost, and counted */
	XDPCAP_COUNTER_MAX = 4,
};

#endif
