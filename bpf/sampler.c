/* xdpcap's packet sampler, compiled at run time by bcc: one program per capture point,
 * all around one helper, sharing the maps, the filter and the clock.
 *
 *   xdpcap_sampler  XDP, on receive (inbound)
 *   xdpcap_egress   tc egress (tcx link, or a clsact filter on older kernels): what the
 *                   stack hands the device (outbound)
 *   xdpcap_ingress  tc ingress, where another XDP program owns the interface: what it
 *                   passed to the stack (inbound; its drops, redirects and TX are not seen)
 *   xdpcap_aborted, xdpcap_drop, xdpcap_pass, xdpcap_tx, xdpcap_redirect
 *                   one per slot of the owner's xdpcap hook map (bpf/xdpcap_hook.h): the
 *                   owner tail-calls the slot of its verdict at its exit; each returns
 *                   that verdict unchanged, and its samples carry it (inbound)
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
 * No program ever changes traffic: XDP returns XDP_PASS, a slot program the action
 * the owner chose, tc returns "unspecified" (the next program runs, and the packet
 * goes on as if we were not there).
 */
#include "sampler.h"
#include "xdpcap_filter.h"

#define XDPCAP_TC_NEXT -1  /* TCX_NEXT for a tcx link, TC_ACT_UNSPEC for a clsact filter */

BPF_PERF_OUTPUT(samples);
BPF_PERCPU_ARRAY(counters, __u64, XDPCAP_COUNTER_SETS * XDPCAP_COUNTER_MAX);
BPF_ARRAY(config, struct xdpcap_config, 1);

static __always_inline void count(__u32 set, __u32 index)
{
	__u32 slot = set * XDPCAP_COUNTER_MAX + index;
	__u64 *value = counters.lookup(&slot);

	if (value)
		*value += 1;  /* per-CPU slot: no atomic needed */
}

/* One packet at any capture point. `ctx` is the program's context, which the perf helper
 * takes; `skb` the same context on tc (NULL on XDP: a constant, so the compiler keeps
 * only one filter call in each program); [data, data_end) the bytes the filter reads
 * directly; `wire_len` the packet's whole length; `copyable` how many bytes the helper
 * can append from this hook; `set` the
 * counter set (a direction, or XDPCAP_SET_VERDICT + the owner's action); `verdict`
 * that action + 1, or 0; `ifindex` the receiving interface where the hook can be shared
 * by several (0: not checked). */
static __always_inline void xdpcap_take(void *ctx, struct __sk_buff *skb, const __u8 *data,
					const __u8 *data_end, __u32 wire_len, __u32 copyable,
					__u32 set, __u32 verdict, __u32 queue, __u32 ifindex)
{
	__u32 direction = set == XDPCAP_OUTBOUND ? XDPCAP_OUTBOUND : XDPCAP_INBOUND;
	int zero = 0;
	__u32 matched;
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
	if (ifindex && cfg->ifindex && ifindex != cfg->ifindex)
		return;  /* the owner's packet from another interface: not this capture's */
	now = bpf_ktime_get_ns();
	if (now < cfg->window_start_ns || (cfg->window_end_ns && now >= cfg->window_end_ns))
		return;
	count(set, XDPCAP_SEEN);
	/* The filter runs first, as tcpdump's does: sampling picks among the matches. */
	if (skb)
		matched = xdpcap_filter_skb(skb, data, data_end, wire_len);
	else
		matched = xdpcap_filter(data, data_end, wire_len);
	if (!matched) {
		count(set, XDPCAP_FILTERED_OUT);
		return;
	}
	if (cfg->sample_rate > 1 && bpf_get_prandom_u32() % cfg->sample_rate) {
		count(set, XDPCAP_NOT_SAMPLED);
		return;
	}

	meta.ts_ns = now;
	meta.queue = queue;
	meta.direction = direction;
	meta.verdict = verdict;
	/* The helper fails when asked for more than it can copy. */
	meta.cap_len = copyable < cfg->snaplen ? copyable : cfg->snaplen;
	if (meta.cap_len > XDPCAP_MAX_CAP_LEN)
		meta.cap_len = XDPCAP_MAX_CAP_LEN;

	wall = meta.ts_ns + cfg->realtime_offset_ns;
	meta.epb.block_type = 6;
	meta.epb.block_len = sizeof(meta.epb) + ((meta.cap_len + 3) & ~3U) +
			     XDPCAP_EPB_OPTIONS_LEN + (verdict ? XDPCAP_EPB_VERDICT_LEN : 0) + 4;
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
		count(set, XDPCAP_SAMPLED);
	else
		count(set, XDPCAP_OUTPUT_FAILED);
}

int xdpcap_sampler(struct xdp_md *ctx)
{
	const __u8 *data = (const __u8 *)(long)ctx->data;
	const __u8 *data_end = (const __u8 *)(long)ctx->data_end;

	/* The XDP helper appends linear data only; bpf_xdp_get_buff_len counts the
	 * fragments of a multi-buffer frame too. */
	xdpcap_take(ctx, NULL, data, data_end, bpf_xdp_get_buff_len(ctx), data_end - data,
		    XDPCAP_INBOUND, 0, ctx->rx_queue_index, 0);
	return XDP_PASS;
}

/* Through the owner's hook: the packet as it leaves the owner, after any rewrite. */
static __always_inline int xdpcap_slot(struct xdp_md *ctx, __u32 action)
{
	const __u8 *data = (const __u8 *)(long)ctx->data;
	const __u8 *data_end = (const __u8 *)(long)ctx->data_end;

	xdpcap_take(ctx, NULL, data, data_end, bpf_xdp_get_buff_len(ctx), data_end - data,
		    XDPCAP_SET_VERDICT + action, action + 1, ctx->rx_queue_index,
		    ctx->ingress_ifindex);
	return action;  /* the owner's verdict stands */
}

/* One function per slot, written out: bcc finds programs by their definitions. */
int xdpcap_aborted(struct xdp_md *ctx)
{
	return xdpcap_slot(ctx, XDP_ABORTED);
}

int xdpcap_drop(struct xdp_md *ctx)
{
	return xdpcap_slot(ctx, XDP_DROP);
}

int xdpcap_pass(struct xdp_md *ctx)
{
	return xdpcap_slot(ctx, XDP_PASS);
}

int xdpcap_tx(struct xdp_md *ctx)
{
	return xdpcap_slot(ctx, XDP_TX);
}

int xdpcap_redirect(struct xdp_md *ctx)
{
	return xdpcap_slot(ctx, XDP_REDIRECT);
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
	xdpcap_take(skb, skb, data, data_end, skb->len, skb->len, XDPCAP_OUTBOUND, 0, 0, 0);
	return XDPCAP_TC_NEXT;
}

int xdpcap_ingress(struct __sk_buff *skb)
{
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *data_end = (const __u8 *)(long)skb->data_end;
	/* The stack records the receive queue plus one (0: none recorded). */
	__u32 queue = skb->queue_mapping ? skb->queue_mapping - 1 : 0;

	/* At tc ingress the mac header is pushed back: data starts at the frame, as in XDP.
	 * What arrives here is what the interface's XDP program passed to the stack. */
	xdpcap_take(skb, skb, data, data_end, skb->len, skb->len, XDPCAP_INBOUND, 0, queue, 0);
	return XDPCAP_TC_NEXT;
}
