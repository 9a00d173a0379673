/* xdpcap's packet sampler, compiled at run time by bcc: one program per capture point,
 * all around one helper, sharing the maps, the filter and the clock.
 *
 *   xdpcap_sampler  XDP, on receive (inbound)
 *   xdpcap_egress   tc egress (tcx link, or a clsact filter on older kernels): what the
 *                   stack hands the device (outbound)
 *
 * Every packet a program sees is counted, per direction, and run through the capture
 * filter (the generated xdpcap_filter.h: xdpcap_filter on XDP, xdpcap_filter_skb on tc,
 * which also reads past the skb's linear head); of those it matches, one in `sample_rate` is
 * sent to user space through the one perf event array with up to `snaplen` of its bytes
 * appended by the kernel (the sample length goes in the upper 32 bits of the helper's
 * flags). The metadata ends with the sample's pcapng EPB head, stamped here with the
 * wall-clock time, so the head and the appended bytes already form the block the file
 * gets. Both programs stamp with the same clock, so inbound and outbound interleave in
 * time order.
 *
 * Why a perf event array and not a BPF ring buffer: the perf helper appends packet bytes
 * straight from the packet, while a ring buffer needs a fixed-size reservation and a
 * copy; with batched wake-ups and bulk draining in user space the perf buffer keeps up
 * with what a veth delivers here (see BENCHMARKS.md).
 *
 * (Everything is in this one file: bcc rewrites `samples.perf_submit_skb` and finds
 * programs only in the main file it compiles.)
 *
 * No program ever changes traffic: XDP returns XDP_PASS, tc returns "unspecified" (the
 * next program runs, and the packet goes on as if we were not there).
 */
#include "sampler.h"
#include "xdpcap_filter.h"

#define XDPCAP_TC_NEXT -1  /* TCX_NEXT for a tcx link, TC_ACT_UNSPEC for a clsact filter */

BPF_PERF_OUTPUT(samples);
BPF_PERCPU_ARRAY(counters, __u64, XDPCAP_DIRECTIONS * XDPCAP_COUNTER_MAX);
BPF_ARRAY(config, struct xdpcap_config, 1);

static __always_inline void count(__u32 direction, __u32 index)
{
	__u32 slot = direction * XDPCAP_COUNTER_MAX + index;
	__u64 *value = counters.lookup(&slot);

	if (value)
		*value += 1;  /* per-CPU slot: no atomic needed */
}

/* One packet at any capture point. `ctx` is the program's context, which the perf helper
 * takes; `skb` the same context on tc (NULL on XDP: a constant, so the compiler keeps
 * only one filter call in each program); [data, data_end) the bytes the filter reads
 * directly; `wire_len` the packet's whole length; `copyable` how many bytes the helper
 * can append from this hook. */
static __always_inline void xdpcap_take(void *ctx, struct __sk_buff *skb, const __u8 *data,
					const __u8 *data_end, __u32 wire_len, __u32 copyable,
					__u32 direction, __u32 queue)
{
	__u32 matched;
	int zero = 0;
	struct xdpcap_config *cfg;
	struct xdpcap_sample meta = {};
	__u64 wall;
	__u64 now;
	int ret;

	cfg = config.lookup(&zero);
	/* Attached but not yet (or no longer) capturing: the window is defined by this
	 * flag and its bounds, so every host's counters cover exactly its window. */
	if (!cfg || !cfg->enabled)
		return;
	now = bpf_ktime_get_ns();
	if (now < cfg->window_start_ns || (cfg->window_end_ns && now >= cfg->window_end_ns))
		return;
	count(direction, XDPCAP_SEEN);
	/* The filter runs first, as tcpdump's does: sampling picks among the matches. */
	if (skb)
		matched = xdpcap_filter_skb(skb, data, data_end, wire_len);
	else
		matched = xdpcap_filter(data, data_end, wire_len);
	if (!matched) {
		count(direction, XDPCAP_FILTERED_OUT);
		return;
	}
	if (cfg->sample_rate > 1 && bpf_get_prandom_u32() % cfg->sample_rate) {
		count(direction, XDPCAP_NOT_SAMPLED);
		return;
	}

	meta.ts_ns = now;
	meta.queue = queue;
	meta.direction = direction;
	/* The helper fails when asked for more than it can copy. */
	meta.cap_len = copyable < cfg->snaplen ? copyable : cfg->snaplen;
	if (meta.cap_len > XDPCAP_MAX_CAP_LEN)
		meta.cap_len = XDPCAP_MAX_CAP_LEN;

	wall = meta.ts_ns + cfg->realtime_offset_ns;
	meta.epb.block_type = 6;
	meta.epb.block_len = sizeof(meta.epb) + ((meta.cap_len + 3) & ~3U) +
			     XDPCAP_EPB_OPTIONS_LEN + 4;
	meta.epb.ts_high = wall >> 32;
	meta.epb.ts_low = (__u32)wall;
	meta.epb.cap_len = meta.cap_len;
	/* The true length, so a packet longer than the snap length keeps it. */
	meta.epb.orig_len = wire_len;

	/* bcc expands this to bpf_perf_event_output(ctx, samples, BPF_F_CURRENT_CPU |
	 * (u64)cap_len << 32, &meta, sizeof(meta)): the kernel appends cap_len bytes. */
	/* (bcc's rewriter wants the call as a statement of its own.) */
	ret = samples.perf_submit_skb(ctx, meta.cap_len, &meta, sizeof(meta));
	if (ret == 0)
		count(direction, XDPCAP_SAMPLED);
	else
		count(direction, XDPCAP_OUTPUT_FAILED);
}

int xdpcap_sampler(struct xdp_md *ctx)
{
	const __u8 *data = (const __u8 *)(long)ctx->data;
	const __u8 *data_end = (const __u8 *)(long)ctx->data_end;

	/* The XDP helper appends linear data only; bpf_xdp_get_buff_len counts the
	 * fragments of a multi-buffer frame too. */
	xdpcap_take(ctx, NULL, data, data_end, bpf_xdp_get_buff_len(ctx), data_end - data,
		    XDPCAP_INBOUND, ctx->rx_queue_index);
	return XDP_PASS;
}

int xdpcap_egress(struct __sk_buff *skb)
{
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *data_end = (const __u8 *)(long)skb->data_end;

	/* The skb helper copies paged data too: a GSO super-packet is captured as the stack
	 * handed it over, as tcpdump shows it. The filter reads the linear head directly
	 * (every header the stack built) and the rest with bpf_skb_load_bytes: an outgoing
	 * TCP segment's payload lies in page fragments, and `tcpdump -Q out` filters on it. */
	/* Queue 0: tc egress runs before the kernel picks the transmit queue. */
	xdpcap_take(skb, skb, data, data_end, skb->len, skb->len, XDPCAP_OUTBOUND, 0);
	return XDPCAP_TC_NEXT;
}
