/* The one wire contract between the sampler's programs and user space.
 *
 * Mirrored once in Python (agent/contract.py); tests/unit/test_contract.py checks
 * that both sides agree on every size and offset.
 */
#ifndef XDPCAP_SAMPLER_H
#define XDPCAP_SAMPLER_H

#include <linux/types.h>

/* Every option an EPB written by the agent carries, after the padded packet bytes:
 * epb_flags (8 bytes), epb_queue (8 bytes) and opt_endofopt (4 bytes). The program
 * needs its length to fill in the block length; the agent writes the options. */
#define XDPCAP_EPB_OPTIONS_LEN 20
/* A sample that knows the owner's XDP verdict (through its xdpcap hook) also carries
 * epb_verdict: option head (4), type byte 2 (eBPF XDP) and the u64 action, padded to 4. */
#define XDPCAP_EPB_VERDICT_LEN 16

/* The head of a pcapng enhanced packet block, filled in by the program: user space
 * copies it out of the ring together with the packet bytes that follow it, instead
 * of building it in Python for every packet (the agent's per-packet cost is what
 * bounds its rate). */
struct xdpcap_epb_head {
	__u32 block_type;  /* 6: enhanced packet block */
	__u32 block_len;   /* head, padded packet, options, trailing length */
	__u32 if_id;       /* 0: a host's capture file has one interface */
	__u32 ts_high;     /* wall clock in nanoseconds (if_tsresol 9), upper half */
	__u32 ts_low;
	__u32 cap_len;
	__u32 orig_len;    /* whole packet, fragments included */
} __attribute__((packed));

/* Which way a packet went, in samples and counters: the index of its direction. */
enum xdpcap_direction {
	XDPCAP_INBOUND = 0,    /* on receive: our XDP program, or tc ingress after another's */
	XDPCAP_OUTBOUND = 1,   /* tc egress, what the stack hands the device */
	XDPCAP_DIRECTIONS = 2,
};

/* Counter sets: one per direction, then one per XDP action for packets seen through
 * the owner's xdpcap hook (inbound, verdict known), so the accounting closes per
 * verdict. The set for action a is XDPCAP_SET_VERDICT + a. */
#define XDPCAP_SET_VERDICT XDPCAP_DIRECTIONS
#define XDPCAP_XDP_ACTIONS 5  /* XDP_ABORTED .. XDP_REDIRECT: the hook map's slots */
#define XDPCAP_COUNTER_SETS (XDPCAP_DIRECTIONS + XDPCAP_XDP_ACTIONS)

/* Metadata in front of every sample; the kernel appends cap_len packet bytes, so
 * `epb` and the packet are one contiguous EPB up to its options. */
struct xdpcap_sample {
	__u64 ts_ns;       /* bpf_ktime_get_ns(), CLOCK_MONOTONIC: the order across CPUs */
	__u32 cap_len;     /* bytes appended: min(snaplen, what the hook can copy) */
	/* With cap_len, queue and direction select the EPB's trailer (epb_queue, epb_flags). */
	__u16 queue;       /* receive queue (inbound); 0 outbound (not yet chosen at tc) */
	__u8 direction;    /* enum xdpcap_direction */
	__u8 verdict;      /* the owner's XDP action + 1 (through its hook); 0: not known */
	/* The process key: the socket cookie of the local socket that sent or receives the
	 * packet (0: none found, or attribution off). User space turns it into EPB comments
	 * through the `procs` table; the program has not counted those in epb.block_len. */
	__u64 cookie;
	struct xdpcap_epb_head epb;
} __attribute__((packed));

/* The most packet bytes one sample can carry: a perf record's size is a u16, and holds
 * its 8-byte header, the raw data's u32 size, this metadata and the bytes, padded to 8.
 * GSO super-packets on tc egress (and merged frames in skb-mode XDP) can be longer;
 * past it, a record's size would wrap. */
#define XDPCAP_MAX_CAP_LEN (65528 - 8 - 4 - (__u32)sizeof(struct xdpcap_sample))

/* Per-run settings, written by user space into the single-entry `config` map
 * before the program is attached, so one compiled program serves every run. */
struct xdpcap_config {
	__u32 enabled;      /* 0 until the capture window opens, 0 again when it closes */
	__u32 snaplen;      /* largest number of packet bytes per sample */
	__u32 sample_rate;  /* keep 1 packet in sample_rate; 0 and 1 keep every packet */
	/* Through a hook the owner program may serve several interfaces: only packets
	 * received on this one are taken (0: any). Also keeps the next field aligned. */
	__u32 ifindex;
	__u64 realtime_offset_ns;  /* CLOCK_REALTIME - CLOCK_MONOTONIC when the window opened */
	/* The window in CLOCK_MONOTONIC (0: open-ended): packets outside it are not even
	 * counted. Set ahead of time, the window opens and closes on every host at the
	 * same instant, however late each agent's own process gets to run. */
	__u64 window_start_ns;
	__u64 window_end_ns;
	/* Process attribution (XDPCAP_PROCESS_* bits): on, and which selections apply. */
	__u32 process;
	__u32 select_pid;       /* the host's PID (its initial PID namespace) to keep */
	/* offsetof(struct sock_common, skc_cookie) on the running kernel, read from its BTF:
	 * the headers the sampler is compiled with may be another kernel's. */
	__u32 cookie_offset;
	__u32 filename_offset;  /* offsetof(struct linux_binprm, filename), likewise */
	char select_comm[16];   /* the process name to keep, as the kernel's comm (15 bytes) */
} __attribute__((packed));

/* xdpcap_config.process */
#define XDPCAP_PROCESS_ON (1U << 0)         /* look up each sample's socket */
#define XDPCAP_SELECT_PID (1U << 1)         /* keep only packets of select_pid */
#define XDPCAP_SELECT_COMM (1U << 2)        /* ... of processes named select_comm */
#define XDPCAP_SELECT_CGROUP (1U << 3)      /* ... in a cgroup of `select_cgroups` */
#define XDPCAP_SELECT_ANY (XDPCAP_SELECT_PID | XDPCAP_SELECT_COMM | XDPCAP_SELECT_CGROUP)

/* A value of the `procs` table (LRU hash, socket cookie -> process), filled by the
 * cgroup socket hooks, the accept probe and, for sockets older than the capture, by
 * the agent from /proc. */
struct xdpcap_proc {
	__u32 pid;        /* thread group id in the initial PID namespace */
	__u32 _pad;
	__u64 cgroup_id;  /* the process's cgroup v2 id (the cgroup folder's inode) */
	char comm[16];
} __attribute__((packed));

/* A value of the `execs` table (LRU hash, pid -> what it executed), from sched_process_exec:
 * the command of a process that exited before the agent could read /proc. */
#define XDPCAP_EXEC_PATH_LEN 128
struct xdpcap_exec {
	char path[XDPCAP_EXEC_PATH_LEN];
} __attribute__((packed));

/* Indexes of the per-CPU `counters` map, one set per direction (and per verdict, see
 * XDPCAP_SET_VERDICT): the counter for set s is at s * XDPCAP_COUNTER_MAX + index.
 * seen = filtered_out + not_sampled + sampled + output_failed, in each set. */
enum xdpcap_counter {
	XDPCAP_SEEN = 0,
	XDPCAP_SAMPLED = 1,        /* handed to the perf buffer */
	XDPCAP_NOT_SAMPLED = 2,    /* skipped by 1-in-N sampling (after the filter) */
	XDPCAP_OUTPUT_FAILED = 3,  /* perf buffer full: the sample is lost, and counted */
	XDPCAP_FILTERED_OUT = 4,   /* the capture filter did not match */
	XDPCAP_COUNTER_MAX = 5,
};

/* After another XDP program (no hook; inbound at tc ingress), what the owner did with the
 * packets we cannot see is counted from its tracepoints (xdp:xdp_exception,
 * xdp:xdp_redirect*), for the capture's interface only: the tracepoints fire for every
 * device of every namespace, so the program matches the device's ifindex and its
 * namespace's cookie, read at their offsets on the running kernel (from its BTF). Set by
 * user space in the single-entry `owner_watch` map; ifindex 0: nothing is counted. */
struct xdpcap_owner_watch {
	__u32 ifindex;
	__u32 ifindex_offset;  /* offsetof(struct net_device, ifindex) */
	__u32 net_offset;      /* offsetof(struct net_device, nd_net): the struct net pointer */
	__u32 cookie_offset;   /* offsetof(struct net, net_cookie) */
	__u64 netns_cookie;    /* the capture's namespace (SO_NETNS_COOKIE) */
} __attribute__((packed));

/* Indexes of the per-CPU `owner_events` array. */
enum xdpcap_owner_event {
	XDPCAP_OWNER_ABORTED = 0,          /* xdp_exception with XDP_ABORTED */
	XDPCAP_OWNER_EXCEPTION = 1,        /* xdp_exception with another action: a failed
					    * XDP_TX or redirect, or an invalid action */
	XDPCAP_OWNER_REDIRECTED = 2,       /* xdp_redirect (and xdp_redirect_map, older kernels) */
	XDPCAP_OWNER_REDIRECT_FAILED = 3,  /* xdp_redirect_err (and xdp_redirect_map_err) */
	XDPCAP_OWNER_EVENTS = 4,
};

/* The sampler includes "xdpcap_filter.h", which the agent generates: from a checked
 * cBPF program (agent/filter/to_c.py), or match-all functions when the capture has no
 * filter. It defines
 *   __u32 xdpcap_filter(const __u8 *pkt, const __u8 *pkt_end, __u32 wire_len);
 *   __u32 xdpcap_filter_skb(struct __sk_buff *skb, const __u8 *pkt,
 *                           const __u8 *pkt_end, __u32 wire_len);
 * (XDP and tc); non-zero keeps the packet. */

#endif
