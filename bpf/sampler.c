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
 *   xdpcap_xdp_exception, xdpcap_xdp_redirect, xdpcap_xdp_redirect_err
 *                   raw tracepoints, after another XDP program: count what it aborted and
 *                   redirected on the capture's interface (packets tc ingress never sees)
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
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "sampler.h"
#include "xdpcap_filter.h"

#define XDPCAP_TC_NEXT -1  /* TCX_NEXT for a tcx link, TC_ACT_UNSPEC for a clsact filter */

BPF_PERF_OUTPUT(samples);
BPF_PERCPU_ARRAY(counters, __u64, XDPCAP_COUNTER_SETS * XDPCAP_COUNTER_MAX);
BPF_ARRAY(config, struct xdpcap_config, 1);
/* Process attribution: which process each socket belongs to (filled by the programs at
 * the end of this file, and by the agent for sockets older than the capture), bounded
 * by LRU eviction. */
BPF_TABLE("lru_hash", __u64, struct xdpcap_proc, procs, 65536);
BPF_TABLE("lru_hash", __u32, struct xdpcap_exec, execs, 4096);
BPF_HASH(select_cgroups, __u64, __u8, 1024);  /* --container: its cgroups' ids */
/* After another XDP program: which device to watch, and what its program did there. */
BPF_ARRAY(owner_watch, struct xdpcap_owner_watch, 1);
BPF_PERCPU_ARRAY(owner_events, __u64, XDPCAP_OWNER_EVENTS);

/* The cookie of a socket the kernel handed us: read at its offset in sock_common on the
 * running kernel (the config's, from BTF). The whole head is read at a constant size and
 * the cookie taken from it: the verifier forbids arithmetic on a socket pointer. A cookie
 * is 0 until something asks for it: our cgroup hooks and the agent's sock_diag do. */
#define XDPCAP_SOCK_HEAD 256
static __always_inline __u64 xdpcap_sock_cookie(void *sk, __u32 offset)
{
	__u8 head[XDPCAP_SOCK_HEAD];

	if (offset > XDPCAP_SOCK_HEAD - 8)
		return 0;
	if (bpf_probe_read_kernel(head, sizeof(head), sk))
		return 0;
	return *(__u64 *)(head + (offset & (XDPCAP_SOCK_HEAD - 8)));
}

/* The local socket an arriving packet is for (TCP: the connection, else its listener;
 * UDP: the bound or connected socket), in the receiving interface's namespace; 0 when
 * none, or for anything but the first fragment of IPv4/IPv6 TCP or UDP over Ethernet. */
static __always_inline __u64 xdpcap_inbound_cookie(void *ctx, const __u8 *data,
						   const __u8 *data_end, __u32 offset)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	const __u8 *l4;
	__u32 tuple_len;
	__u64 cookie;
	__u8 proto;

	if (data + ETH_HLEN > data_end)
		return 0;
	if (*(__be16 *)(data + 12) == bpf_htons(ETH_P_IP)) {
		const struct iphdr *ip = (const void *)(data + ETH_HLEN);

		if ((const __u8 *)(ip + 1) > data_end || ip->frag_off & bpf_htons(0x1fff))
			return 0;
		proto = ip->protocol;
		l4 = (const __u8 *)ip + ip->ihl * 4;
		tuple.ipv4.saddr = ip->saddr;
		tuple.ipv4.daddr = ip->daddr;
		if (l4 + 4 > data_end)
			return 0;
		tuple.ipv4.sport = *(const __be16 *)l4;
		tuple.ipv4.dport = *(const __be16 *)(l4 + 2);
		tuple_len = sizeof(tuple.ipv4);
	} else if (*(__be16 *)(data + 12) == bpf_htons(ETH_P_IPV6)) {
		const struct ipv6hdr *ip6 = (const void *)(data + ETH_HLEN);

		if ((const __u8 *)(ip6 + 1) + 4 > data_end)
			return 0;
		proto = ip6->nexthdr;  /* extension headers: not looked through */
		l4 = (const __u8 *)(ip6 + 1);
		__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
		tuple.ipv6.sport = *(const __be16 *)l4;
		tuple.ipv6.dport = *(const __be16 *)(l4 + 2);
		tuple_len = sizeof(tuple.ipv6);
	} else {
		return 0;
	}
	if (proto == IPPROTO_TCP)
		sk = bpf_sk_lookup_tcp(ctx, &tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	else if (proto == IPPROTO_UDP)
		sk = bpf_sk_lookup_udp(ctx, &tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	else
		return 0;
	if (!sk)
		return 0;
	cookie = xdpcap_sock_cookie(sk, offset);
	bpf_sk_release(sk);
	return cookie;
}

/* The packet's local socket: on egress the skb's own (0 for forwarded packets), on
 * ingress the one the stack will deliver it to. */
static __always_inline __u64 xdpcap_cookie(void *ctx, struct __sk_buff *skb, const __u8 *data,
					   const __u8 *data_end, __u32 direction, __u32 offset)
{
	if (skb && direction == XDPCAP_OUTBOUND)
		return bpf_get_socket_cookie(skb);
	return xdpcap_inbound_cookie(ctx, data, data_end, offset);
}

/* Whether the packet's process is one --pid/--comm/--container asked for (always, when
 * none was asked). A packet whose socket is not known is not selected. */
static __always_inline int xdpcap_selected(struct xdpcap_config *cfg, __u64 cookie)
{
	struct xdpcap_proc *proc;
	__u64 cgroup_id;

	if (!(cfg->process & XDPCAP_SELECT_ANY))
		return 1;
	if (!cookie)
		return 0;
	proc = procs.lookup(&cookie);
	if (!proc)
		return 0;
	if (cfg->process & XDPCAP_SELECT_PID && proc->pid != cfg->select_pid)
		return 0;
	if (cfg->process & XDPCAP_SELECT_COMM &&
	    (*(__u64 *)proc->comm != *(__u64 *)cfg->select_comm ||
	     *(__u64 *)(proc->comm + 8) != *(__u64 *)(cfg->select_comm + 8)))
		return 0;
	if (cfg->process & XDPCAP_SELECT_CGROUP) {
		cgroup_id = proc->cgroup_id;
		if (!select_cgroups.lookup(&cgroup_id))
			return 0;
	}
	return 1;
}

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
	__u64 cookie = 0;
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
	/* Selection by process (--pid, --comm, --container) combines with the filter: a
	 * packet of another process is filtered out, like one the expression rejects. */
	if (matched && cfg->process & XDPCAP_PROCESS_ON) {
		cookie = xdpcap_cookie(ctx, skb, data, data_end, direction, cfg->cookie_offset);
		matched = xdpcap_selected(cfg, cookie);
	}
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
	meta.cookie = cookie;
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

/* ---- After another XDP program: what it did with the packets tc ingress never sees ---
 * Raw tracepoints (not BTF-typed tp_btf, which is a tracing program and refused where
 * fentry is): their first argument is the receiving net_device for each of them. */

/* Counts one owner event on the watched device, inside the capture window only. */
static __always_inline int xdpcap_owner_event(void *dev, __u32 event)
{
	int zero = 0;
	struct xdpcap_config *cfg = config.lookup(&zero);
	struct xdpcap_owner_watch *watch = owner_watch.lookup(&zero);
	__u64 now, cookie = 0;
	__u32 ifindex = 0;
	void *net = NULL;
	__u64 *value;

	if (!cfg || !cfg->enabled || !watch || !watch->ifindex)
		return 0;
	now = bpf_ktime_get_ns();
	if (now < cfg->window_start_ns || (cfg->window_end_ns && now >= cfg->window_end_ns))
		return 0;
	if (watch->ifindex_offset > 4096 || watch->net_offset > 4096 || watch->cookie_offset > 8192)
		return 0;
	if (bpf_probe_read_kernel(&ifindex, sizeof(ifindex), dev + watch->ifindex_offset) ||
	    ifindex != watch->ifindex)
		return 0;
	/* An ifindex is only unique within its namespace: the lab's hosts all have an eth0. */
	if (bpf_probe_read_kernel(&net, sizeof(net), dev + watch->net_offset) || !net ||
	    bpf_probe_read_kernel(&cookie, sizeof(cookie), net + watch->cookie_offset) ||
	    cookie != watch->netns_cookie)
		return 0;
	value = owner_events.lookup(&event);
	if (value)
		*value += 1;  /* per-CPU slot: no atomic needed */
	return 0;
}

/* xdp:xdp_exception (dev, xdp prog, act) */
int xdpcap_xdp_exception(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 act = ctx->args[2];

	return xdpcap_owner_event((void *)ctx->args[0],
				  act == XDP_ABORTED ? XDPCAP_OWNER_ABORTED : XDPCAP_OWNER_EXCEPTION);
}

/* xdp:xdp_redirect and xdp:xdp_redirect_map (dev, xdp prog, target, err, ...) */
int xdpcap_xdp_redirect(struct bpf_raw_tracepoint_args *ctx)
{
	return xdpcap_owner_event((void *)ctx->args[0], XDPCAP_OWNER_REDIRECTED);
}

/* xdp:xdp_redirect_err and xdp:xdp_redirect_map_err */
int xdpcap_xdp_redirect_err(struct bpf_raw_tracepoint_args *ctx)
{
	return xdpcap_owner_event((void *)ctx->args[0], XDPCAP_OWNER_REDIRECT_FAILED);
}

/* ---- Process attribution: the programs that fill `procs` and `execs` ----------------
 * Program types that load where tracing programs (fentry/fexit) are refused: cgroup
 * socket hooks on the root cgroup v2 (every process below it), sock_ops, a kretprobe
 * and a raw tracepoint. The agent loads and attaches them as BPF links or fd-owned perf
 * events, which go with its process, kill -9 included. */

/* The calling process owns `cookie`'s socket (it created, bound, connected or used it). */
static __always_inline void xdpcap_remember(__u64 cookie)
{
	struct xdpcap_proc proc = {};

	if (!cookie)
		return;
	proc.pid = bpf_get_current_pid_tgid() >> 32;
	proc.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(proc.comm, sizeof(proc.comm));
	procs.update(&cookie, &proc);
}

/* cgroup/sock_create: every new inet socket, in its creator's context. */
int xdpcap_sock_create(struct bpf_sock *sk)
{
	xdpcap_remember(bpf_get_socket_cookie(sk));
	return 1;  /* allowed: we only watch */
}

/* cgroup/sock_release: the socket is gone. */
int xdpcap_sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);

	procs.delete(&cookie);
	return 1;
}

/* cgroup bind, connect, UDP sendmsg and recvmsg (v4 and v6, one program loaded for each):
 * the process using a socket now, which may be another than its creator (fork, fd
 * passing). */
int xdpcap_sock_addr(struct bpf_sock_addr *ctx)
{
	xdpcap_remember(bpf_get_socket_cookie(ctx));
	return 1;
}

/* sock_ops: a connection the kernel established (an accepted one has no creator in
 * user space) gets its cookie now, so the accept probe below can read it. */
int xdpcap_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		bpf_get_socket_cookie(skops);
	return 1;
}

/* kretprobe inet_csk_accept: the accepted socket belongs to the accepting process. */
int xdpcap_accept(struct pt_regs *ctx)
{
	int zero = 0;
	struct xdpcap_config *cfg = config.lookup(&zero);
	void *sk = (void *)PT_REGS_RC(ctx);
	__u64 cookie = 0;

	if (!sk || !cfg || cfg->cookie_offset > 4096)
		return 0;
	bpf_probe_read_kernel(&cookie, sizeof(cookie), sk + cfg->cookie_offset);
	xdpcap_remember(cookie);
	return 0;
}

/* raw tracepoint sched_process_exec (task, old_pid, bprm): the path each process runs,
 * read through bprm->filename (at its offset on the running kernel, from the config). */
int xdpcap_exec(struct bpf_raw_tracepoint_args *ctx)
{
	int zero = 0;
	struct xdpcap_config *cfg = config.lookup(&zero);
	struct xdpcap_exec exec = {};
	const char *path = NULL;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;

	if (!cfg || cfg->filename_offset > 4096)
		return 0;
	if (bpf_probe_read_kernel(&path, sizeof(path), (void *)ctx->args[2] + cfg->filename_offset))
		return 0;
	bpf_probe_read_kernel_str(exec.path, sizeof(exec.path), path);
	execs.update(&pid, &exec);
	return 0;
}
