/* xdpcap_hook.h: make your XDP program capturable by xdpcap, with every verdict.
 *
 * The hook is the one cloudflare/xdpcap uses, so programs already instrumented for
 * it work unchanged: a BPF_MAP_TYPE_PROG_ARRAY with 4-byte keys and values and one
 * slot per XDP action (XDP_ABORTED = 0 ... XDP_REDIRECT = 4), pinned on a bpffs. At
 * every exit the program tail-calls the slot of its verdict, then returns it:
 *
 *   - no capture running: the slot is empty, the tail call falls through and the
 *     verdict stands, at the cost of one map lookup;
 *   - during a capture: xdpcap has put a program of its own in each slot; it samples
 *     the packet as it leaves yours (after any rewrite) and returns the same verdict.
 *
 * libbpf-style programs (clang -target bpf, <bpf/bpf_helpers.h> included first):
 *
 *   XDPCAP_HOOK(xdpcap_hook);
 *
 *   SEC("xdp")
 *   int lb(struct xdp_md *ctx)
 *   {
 *           if (drop_it(ctx))
 *                   return xdpcap_exit(ctx, &xdpcap_hook, XDP_DROP);
 *           return xdpcap_exit(ctx, &xdpcap_hook, XDP_PASS);
 *   }
 *
 * and pin the map when loading, e.g. `bpftool prog load lb.o /sys/fs/bpf/lb pinmaps
 * /sys/fs/bpf/lb_maps` (XDPCAP_HOOK_PINNED pins it by name in libbpf's default folder
 * instead). Then: `xdpcap capture -i IF --xdp-hook /sys/fs/bpf/lb_maps/xdpcap_hook`, or
 * no flag at all: xdpcap finds a pinned hook map of the program on the interface.
 *
 * bcc programs: bcc rewrites map calls only in the file it compiles, never inside a
 * macro or an included header, so the exit is written out where it happens:
 *
 *   XDPCAP_HOOK_BCC(xdpcap_hook);
 *   ...
 *           xdpcap_hook.call(ctx, XDP_DROP);
 *           return XDP_DROP;
 *
 * (pin it from user space: `b["xdpcap_hook"].pin(...)` or bpftool's `map pin id`).
 *
 * Each program in a prog array must match its owner's type, JIT state and frags
 * support (and, since kernel 6.18, its expected attach type); xdpcap loads its slot
 * programs to match yours.
 */
#ifndef XDPCAP_HOOK_H
#define XDPCAP_HOOK_H

/* One slot per XDP action: the key is the action itself. */
#define XDPCAP_HOOK_SLOTS 5

#ifdef BPF_PROG_ARRAY /* bcc's helpers define it: a bcc program */

#define XDPCAP_HOOK_BCC(name) BPF_PROG_ARRAY(name, XDPCAP_HOOK_SLOTS)

#else /* libbpf style: BTF-defined maps, bpf_tail_call from <bpf/bpf_helpers.h> */

#define XDPCAP_HOOK_FIELDS                                   \
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);              \
	__uint(key_size, sizeof(__u32));                    \
	__uint(value_size, sizeof(__u32));                  \
	__uint(max_entries, XDPCAP_HOOK_SLOTS)

/* The hook map, to pin yourself (bpftool's pinmaps, or bpf_map__pin). */
#define XDPCAP_HOOK(name) \
	struct {                 \
		XDPCAP_HOOK_FIELDS; \
	} name SEC(".maps")

/* The hook map, pinned by libbpf under its own name in the object's pin root
 * (/sys/fs/bpf unless the loader says otherwise). */
#define XDPCAP_HOOK_PINNED(name)                   \
	struct {                                   \
		XDPCAP_HOOK_FIELDS;                \
		__uint(pinning, LIBBPF_PIN_BY_NAME); \
	} name SEC(".maps")

/* Return `action` from your XDP program through the hook: `return xdpcap_exit(ctx,
 * &hook, XDP_PASS);`. An action outside the map's slots falls through as well. */
static __always_inline int xdpcap_exit(struct xdp_md *ctx, void *hook, int action)
{
	bpf_tail_call(ctx, hook, action);
	return action;
}

#endif
#endif
