/* xdpcap's XDP packet sampler, compiled at run time by bcc.
 *
 * Every packet the interface receives is counted and run through the capture filter
 * (the generated xdpcap_filter.h); of those it matches, one in `sample_rate` is sent to
 * user space through a perf event array with up to `snaplen` of its bytes appended by
 * the kernel (the sample length goes in the upper 32 bits of the helper's flags).
 * The metadata ends with the sample's pcapng EPB head, stamped here with the wall-clock
 * time, so the head and the appended bytes already form the block the file gets.
 *
 * Why a perf event array and not a BPF ring buffer: the perf helper appends packet bytes
 * straight from the XDP buffer, while a ring buffer needs a fixed-size reservation and a
 * copy with bpf_xdp_load_bytes; with batched wake-ups and bulk draining in user space
 * the perf buffer keeps up with what a veth delivers here (see BENCHMARKS.md).
 *
 * The program never changes what the host receives: every path returns XDP_PASS.
 */
#include "sampler.h"
#include "xdpcap_filter.h"

BPF_PERF_OUTPUT(samples);
BPF_PERCPU_ARRAY(counters, __u64, XDPCAP_COUNTER_MAX);
BPF_ARRAY(config, struct xdpcap_config, 1);

static __always_inline void count(int index)
{
	__u64 *value = counters.lookup(&index);

	if (value)
		*value += 1;  /* per-CPU slot: no atomic needed */
}

int xdpcap_sampler(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int zero = 0;
	struct xdpcap_config *cfg;
	struct xdpcap_sample meta = {};
	__u64 linear = data_end - data;
	__u64 wall;
	int ret;

	cfg = config.lookup(&zero);
	/* Attached but not yet (or no longer) capturing: the window is defined by this
	 * flag, so every host's counters cover exactly its capture window. */
	if (!cfg || !cfg->enabled)
		return XDP_PASS;
	count(XDPCAP_SEEN);
	/* The filter runs first, as tcpdump's does: sampling picks among the matches. */
	if (!xdpcap_filter(data, data_end, bpf_xdp_get_buff_len(ctx))) {
		count(XDPCAP_FILTERED_OUT);
		return XDP_PASS;
	}
	if (cfg->sample_rate > 1 && bpf_get_prandom_u32() % cfg->sample_rate) {
		count(XDPCAP_NOT_SAMPLED);
		return XDP_PASS;
	}

	meta.ts_ns = bpf_ktime_get_ns();
	meta.rx_queue = ctx->rx_queue_index;
	/* The helper can only append linear data; asking for more makes it fail. */
	meta.cap_len = linear < cfg->snaplen ? linear : cfg->snaplen;

	wall = meta.ts_ns + cfg->realtime_offset_ns;
	meta.epb.block_type = 6;
	meta.epb.block_len = sizeof(meta.epb) + ((meta.cap_len + 3) & ~3U) +
			     XDPCAP_EPB_OPTIONS_LEN + 4;
	meta.epb.ts_high = wall >> 32;
	meta.epb.ts_low = (__u32)wall;
	meta.epb.cap_len = meta.cap_len;
	/* The true length, fragments of a multi-buffer frame included, so a packet
	 * longer than the snap length keeps its original length in the capture. */
	meta.epb.orig_len = bpf_xdp_get_buff_len(ctx);

	/* bcc expands this to bpf_perf_event_output(ctx, samples, BPF_F_CURRENT_CPU |
	 * (u64)cap_len << 32, &meta, sizeof(meta)): the kernel appends cap_len bytes. */
	/* (bcc's rewriter wants the call as a statement of its own.) */
	ret = samples.perf_submit_skb(ctx, meta.cap_len, &meta, sizeof(meta));
	if (ret == 0)
		count(XDPCAP_SAMPLED);
	else
		count(XDPCAP_OUTPUT_FAILED);
	return XDP_PASS;
}
