/* A cooperating XDP program for the tests, built the way users build theirs (clang,
 * libbpf's headers, bpf/xdpcap_hook.h): UDP to port 7001 is dropped, 7002 passed,
 * 7003 sent back out (XDP_TX), 7004 aborted, 7006 redirected back out of the interface
 * it came in on (bpf_redirect: XDP_REDIRECT); everything else passes. Every exit goes
 * through the xdpcap hook. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "bpf/xdpcap_hook.h"

XDPCAP_HOOK(xdpcap_hook);

static __always_inline int verdict_for(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	switch (bpf_ntohs(udp->dest)) {
	case 7001:
		return XDP_DROP;
	case 7003:
		return XDP_TX;
	case 7004:
		return XDP_ABORTED;
	case 7006:
		return bpf_redirect(ctx->ingress_ifindex, 0);
	default:
		return XDP_PASS;
	}
}

/* -DCOOP_FRAGS: a multi-buffer program, which the programs in its prog array must be too. */
#ifdef COOP_FRAGS
SEC("xdp.frags")
#else
SEC("xdp")
#endif
int coop(struct xdp_md *ctx)
{
	return xdpcap_exit(ctx, &xdpcap_hook, verdict_for(ctx));
}

char LICENSE[] SEC("license") = "GPL";
