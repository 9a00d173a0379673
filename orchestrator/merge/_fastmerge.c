/* The hot loop of `xdpcap merge`: a k-way merge of little-endian enhanced packet blocks.
 *
 * Python keeps the control plane (orchestrator/merge.py with the reader in
 * agent/pcapng_reader.py): it opens the files, reads chunks, parses section headers,
 * interface descriptions and statistics, renames interfaces and reports damage. This
 * module only moves packets. Each input hands it
 *   - `raw`: the reader's current chunk and the offset of the next unread block in it,
 *     with a table per local interface id: (out id, factor, addend), meaning
 *     ts_ns = raw_ts * factor + addend and the block is normalised by rewriting its
 *     interface id and timestamp in the copy written out;
 *   - `side`: packet blocks the Python reader already normalised (big-endian sections,
 *     classic pcap records, unusual resolutions), delivered before `raw`.
 * The merge takes the input with the smallest (timestamp, input index) - the order
 * mergecap writes - copies its block into the output and reads that input's next block.
 * Whenever the next block of an input is anything it does not fully trust (another
 * block type, an incomplete block, inconsistent lengths, an unknown interface, a
 * timestamp that does not fit 64 bits in ns) it stops before taking anything else and
 * returns NEED with that input: Python handles the block and calls `run()` again. A
 * packet earlier than the input's previous one stops it with DISORDER: the caller then
 * redoes the merge with the windowed reordering of the Python path.
 *
 * Lengths come from files and are never trusted: every block is checked against the
 * bytes present before any of it is read, in 64-bit arithmetic.
 *
 * Given a `Join` (the clock alignment's streaming pass, below), a Merger writes nothing:
 * it hands the join every packet in time order instead, and takes packets out of time
 * order as they come (the join's window absorbs small disorder).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BT_EPB 6u
#define EPB_MIN_BYTES 32u /* type, length, if id, ts hi, ts lo, cap, orig; trailer */
#define DEFAULT_OUT_BYTES (1u << 20)
/* A join returns to Python this often: matches are drained, ^C is seen. */
#define JOIN_BATCH 1000000ull

enum status { ST_DONE = 0, ST_FULL = 1, ST_NEED = 2, ST_DISORDER = 3 };
enum head { H_OK, H_NEED, H_END, H_DISORDER, H_BADSIDE };

typedef struct {
    uint32_t out_id;
    uint64_t factor;
    int64_t addend;
    int64_t drift_ppb; /* 0: none */
    int64_t drift_epoch;
    int usable;
} Iface;

typedef struct {
    Py_buffer raw;
    int has_raw;
    Py_ssize_t raw_pos;
    Py_buffer side;
    int has_side;
    Py_ssize_t side_pos;
    Iface *table;
    Py_ssize_t ntable;
    int ended; /* no raw buffer any more: the input ends with its side blocks */
    int done;
    int in_heap;
    /* The loaded head: the next block to write. */
    const uint8_t *src;
    uint32_t blen;
    int from_side;
    uint32_t out_id;
    uint64_t ts;
    int any;          /* a packet was loaded: last_ts is valid */
    uint64_t last_ts; /* the largest (= last) timestamp loaded */
    unsigned long long packets;
    int tolerant; /* a join's input: packets out of time order are taken as they come */
    /* Its packet marks (the join wrote them: packet_ids.py): the next (ordinal, id),
     * read a buffer at a time. */
    FILE *marks;
    uint64_t mark_ordinal, mark_id;
    uint64_t *mark_buf;
    size_t mark_at, mark_len;
} Input;

typedef struct {
    PyObject_HEAD
    Input *inputs;
    Py_ssize_t n;
    Py_ssize_t *heap;
    Py_ssize_t heap_len;
    Py_ssize_t out_bytes;
    struct Join *join; /* set: packets go to the clock alignment's join, nothing is written */
} Merger;

static inline uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* An enhanced packet block whose lengths agree with each other and with the `left`
 * bytes present; its length, else 0. */
static uint32_t checked_epb(const uint8_t *p, size_t left)
{
    if (left < EPB_MIN_BYTES || get_le32(p) != BT_EPB)
        return 0;
    uint32_t blen = get_le32(p + 4);
    uint64_t cap = get_le32(p + 20);
    if (blen < EPB_MIN_BYTES || (blen & 3u) || (uint64_t)blen > left || cap + EPB_MIN_BYTES > blen)
        return 0;
    if (get_le32(p + blen - 4) != blen)
        return 0;
    return blen;
}

/* t less what a clock drifting by `ppb` gained since `epoch`: t - floor((t - epoch) *
 * ppb / 1e9), as agent/clock.drift_gained_ns computes it; 0 unless in [0, 2^64). */
static int take_drift(uint64_t t, const Iface *iface, uint64_t *ts)
{
    const __int128 billion = 1000000000;
    __int128 gained = ((__int128)t - iface->drift_epoch) * iface->drift_ppb;
    __int128 quotient = gained / billion;
    if (gained % billion != 0 && gained < 0)
        quotient -= 1; /* Python's // rounds down, C's / toward zero */
    __int128 result = (__int128)t - quotient;
    if (result < 0 || result > (__int128)UINT64_MAX)
        return 0;
    *ts = (uint64_t)result;
    return 1;
}

/* raw * factor + addend (less a drift) when it lies in [0, 2^64); else 0 is returned. */
static int scale_ts(uint64_t raw, const Iface *iface, uint64_t *ts)
{
    uint64_t scaled;
    if (__builtin_mul_overflow(raw, iface->factor, &scaled))
        return 0;
    if (iface->addend >= 0) {
        if (__builtin_add_overflow(scaled, (uint64_t)iface->addend, ts))
            return 0;
    } else {
        /* -(addend + 1) + 1 avoids negating INT64_MIN. */
        uint64_t minus = (uint64_t)(-(iface->addend + 1)) + 1u;
        if (scaled < minus)
            return 0; /* before the epoch: Python clamps it */
        *ts = scaled - minus;
    }
    return iface->drift_ppb ? take_drift(*ts, iface, ts) : 1;
}

static void release_side(Input *in)
{
    if (in->has_side) {
        PyBuffer_Release(&in->side);
        in->has_side = 0;
    }
    in->side_pos = 0;
}

static void release_raw(Input *in)
{
    if (in->has_raw) {
        PyBuffer_Release(&in->raw);
        in->has_raw = 0;
    }
    in->raw_pos = 0;
    PyMem_RawFree(in->table);
    in->table = NULL;
    in->ntable = 0;
}

static enum head load_head(Input *in)
{
    uint64_t ts;
    if (in->has_side) {
        size_t left = (size_t)(in->side.len - in->side_pos);
        if (left > 0) {
            const uint8_t *p = (const uint8_t *)in->side.buf + in->side_pos;
            uint32_t blen = checked_epb(p, left);
            if (!blen)
                return H_BADSIDE;
            ts = (uint64_t)get_le32(p + 12) << 32 | get_le32(p + 16);
            in->src = p;
            in->blen = blen;
            in->from_side = 1;
            goto loaded;
        }
        release_side(in);
    }
    if (in->ended)
        return H_END;
    if (!in->has_raw || in->ntable == 0)
        return H_NEED;
    {
        const uint8_t *p = (const uint8_t *)in->raw.buf + in->raw_pos;
        uint32_t blen = checked_epb(p, (size_t)(in->raw.len - in->raw_pos));
        if (!blen)
            return H_NEED;
        uint32_t local = get_le32(p + 8);
        if ((Py_ssize_t)local >= in->ntable || !in->table[local].usable)
            return H_NEED;
        uint64_t raw_ts = (uint64_t)get_le32(p + 12) << 32 | get_le32(p + 16);
        if (!scale_ts(raw_ts, &in->table[local], &ts))
            return H_NEED;
        in->src = p;
        in->blen = blen;
        in->from_side = 0;
        in->out_id = in->table[local].out_id;
    }
loaded:
    if (in->any && ts < in->last_ts && !in->tolerant)
        return H_DISORDER;
    in->ts = ts;
    in->last_ts = ts;
    in->any = 1;
    return H_OK;
}

/* ------------------------------------------------------------------ the heap */
static inline int before(const Merger *m, Py_ssize_t a, Py_ssize_t b)
{
    uint64_t ta = m->inputs[a].ts, tb = m->inputs[b].ts;
    return ta < tb || (ta == tb && a < b);
}

static void sift_down(Merger *m, Py_ssize_t at)
{
    Py_ssize_t *h = m->heap, len = m->heap_len, item = h[at];
    for (;;) {
        Py_ssize_t child = 2 * at + 1;
        if (child >= len)
            break;
        if (child + 1 < len && before(m, h[child + 1], h[child]))
            child++;
        if (!before(m, h[child], item))
            break;
        h[at] = h[child];
        at = child;
    }
    h[at] = item;
}

static void heap_push(Merger *m, Py_ssize_t index)
{
    Py_ssize_t *h = m->heap, at = m->heap_len++;
    while (at > 0) {
        Py_ssize_t parent = (at - 1) / 2;
        if (!before(m, index, h[parent]))
            break;
        h[at] = h[parent];
        at = parent;
    }
    h[at] = index;
    m->inputs[index].in_heap = 1;
}

static void heap_pop_root(Merger *m)
{
    m->inputs[m->heap[0]].in_heap = 0;
    m->heap[0] = m->heap[--m->heap_len];
    if (m->heap_len)
        sift_down(m, 0);
}


/* ===================================================================== the join
 * The clock alignment's streaming pass (orchestrator/follow/join.py says what it does;
 * its pure-Python twin there gives identical results). The Merger above, given a Join,
 * hands it every packet in order of (prior-corrected) time instead of writing it:
 *   identity - the bytes that identify a packet on every host, and the key of the
 *              exchange it asks or answers: the same bytes as merge/identity.py's,
 *              named by a 61-bit id (observe.key_id);
 *   groups   - the sightings of one key whose times chain within the matching window,
 *              held in a hash table while the window can still add to them;
 *   pairs    - when a group closes, the bounds it gives each ordered host pair go into
 *              that pair's summary: a count, a uniform sample and the tightest bound
 *              per time bucket ("floor").
 * Memory is the window's sightings plus a fixed size per host pair.
 */
#define MAX_KEY 88 /* the longest identity: IPv6 + TCP header + 32 bytes of payload */
/* The matching window, MAX_COPIES, the sample's and the floor's sizes come from
 * clock/constraints.py through Join(): one definition. */
#define MAX_COPIES_LIMIT 64 /* what the saturating counts and the stack arrays allow */
#define LATEST_NS (1ULL << 62)
#define INLINE_SIGHTINGS 2
#define PAYLOAD_PREFIX 32
#define DIR_IN 1
#define DIR_OUT 2
/* What a match record carries of its packet's first sighting (journeys: its addresses,
 * ports, and the receivers' filters run on it): enough for Ethernet + VLAN + IPv6 + a TCP
 * header with options. Held per group in the window only when matches are kept. */
#define HEAD_BYTES 128
enum { KIND_PACKET = 0, KIND_EXCHANGE = 1 };
enum { ROLE_NONE = 0, ROLE_QUESTION = 1, ROLE_ANSWER = 2 };
enum { BOUND_SAME = 0, BOUND_ANSWER = 1 };

/* -------------------------------------------------------------- identity */
typedef struct {
    uint8_t packet[MAX_KEY];
    uint8_t exchange[MAX_KEY];
    size_t packet_len, exchange_len;
    int role; /* ROLE_NONE: no exchange key */
} Identity;

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int is_ip_ethertype(unsigned t) { return t == 0x0800 || t == 0x86DD; }

/* The IP packet inside a frame (observe._ip_payload); NULL when there is none. */
static const uint8_t *ip_payload(uint32_t linktype, const uint8_t *f, size_t len, size_t *iplen)
{
    if (linktype == 1) {
        size_t at = 12;
        unsigned ethertype = len >= 14 ? be16(f + at) : 0;
        while ((ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100) &&
               len >= at + 6) {
            at += 4;
            ethertype = be16(f + at);
        }
        if (!is_ip_ethertype(ethertype))
            return NULL;
        *iplen = len - (at + 2);
        return f + at + 2;
    }
    if (linktype == 101 || linktype == 228 || linktype == 229) {
        *iplen = len;
        return f;
    }
    if (linktype == 113 && len >= 16 && is_ip_ethertype(be16(f + 14))) {
        *iplen = len - 16;
        return f + 16;
    }
    return NULL;
}

/* Append `n` bytes to a key being built (never more than MAX_KEY in all). */
#define PUT(buf, at, src, n)                                                                   \
    do {                                                                                       \
        memcpy((buf) + (at), (src), (n));                                                      \
        (at) += (n);                                                                           \
    } while (0)

/* A key's 61-bit id: the key and its length byte after it, read as a little-endian
 * number, modulo the prime 2^61 - 1 (merge/identity.py: key_id). Horner's rule from the
 * top word down, with 2^64 = 8 (mod 2^61 - 1). */
#define ID_PRIME ((1ULL << 61) - 1)

static uint64_t key_id(const uint8_t *key, size_t len)
{
    uint8_t data[MAX_KEY + 8] = {0};
    memcpy(data, key, len);
    data[len] = (uint8_t)len;
    uint64_t h = 0;
    for (size_t word = (len + 1 + 7) / 8; word-- > 0;) {
        uint64_t w;
        memcpy(&w, data + 8 * word, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        unsigned __int128 x = (unsigned __int128)h * 8 + w; /* < 2^65 */
        uint64_t r = (uint64_t)(x & ID_PRIME) + (uint64_t)(x >> 61);
        r = (r & ID_PRIME) + (r >> 61);
        h = r >= ID_PRIME ? r - ID_PRIME : r;
    }
    return h;
}

static void exchange_key(Identity *id, uint8_t proto, const uint8_t *src, const uint8_t *dst,
                         size_t alen, const uint8_t *l4, size_t l4len)
{
    uint8_t *key = id->exchange;
    size_t at = 0;
    id->role = ROLE_NONE;
    if ((proto == 1 || proto == 58) && l4len >= 8) {
        uint8_t request = proto == 1 ? 8 : 128, reply = proto == 1 ? 0 : 129;
        if (l4[0] != request && l4[0] != reply)
            return;
        int question = l4[0] == request;
        PUT(key, at, "echo", 4);
        PUT(key, at, question ? src : dst, alen);
        PUT(key, at, question ? dst : src, alen);
        PUT(key, at, l4 + 4, 4);
        id->role = question ? ROLE_QUESTION : ROLE_ANSWER;
    } else if (proto == 6 && l4len >= 14) {
        unsigned flags = l4[13] & 0x12;
        if (flags == 0x02) {
            PUT(key, at, "syn", 3);
            PUT(key, at, src, alen);
            PUT(key, at, dst, alen);
            PUT(key, at, l4, 8); /* ports, then seq as sent */
            id->role = ROLE_QUESTION;
        } else if (flags == 0x12) {
            uint32_t ack = be32(l4 + 8) - 1u;
            uint8_t seq[4] = {(uint8_t)(ack >> 24), (uint8_t)(ack >> 16), (uint8_t)(ack >> 8),
                              (uint8_t)ack};
            PUT(key, at, "syn", 3);
            PUT(key, at, dst, alen);
            PUT(key, at, src, alen);
            PUT(key, at, l4 + 2, 2);
            PUT(key, at, l4, 2);
            PUT(key, at, seq, 4);
            id->role = ROLE_ANSWER;
        }
    } else if (proto == 17 && l4len >= 12) {
        unsigned sport = be16(l4), dport = be16(l4 + 2), qr = l4[10] >> 7;
        if (dport == 53 && qr == 0) {
            PUT(key, at, "dns", 3);
            PUT(key, at, src, alen);
            PUT(key, at, dst, alen);
            PUT(key, at, l4, 2);
            PUT(key, at, l4 + 8, 2);
            id->role = ROLE_QUESTION;
        } else if (sport == 53 && qr == 1) {
            PUT(key, at, "dns", 3);
            PUT(key, at, dst, alen);
            PUT(key, at, src, alen);
            PUT(key, at, l4 + 2, 2);
            PUT(key, at, l4 + 8, 2);
            id->role = ROLE_ANSWER;
        }
    }
    id->exchange_len = at;
}

/* observe.identify in C: 0 when the frame is not IP (or too short to tell). */
static int identify(uint32_t linktype, const uint8_t *frame, size_t len, Identity *id)
{
    size_t iplen, l4len;
    const uint8_t *ip = ip_payload(linktype, frame, len, &iplen), *l4, *src, *dst;
    uint8_t *stable = id->packet, proto;
    size_t at = 0, alen;
    if (!ip || iplen < 1)
        return 0;
    if (ip[0] >> 4 == 4 && iplen >= 20) {
        size_t ihl = (size_t)(ip[0] & 0x0F) * 4;
        if (ihl < 20 || iplen < ihl)
            return 0;
        proto = ip[9];
        src = ip + 12;
        dst = ip + 16;
        alen = 4;
        int first_fragment = (be16(ip + 6) & 0x1FFF) == 0;
        l4 = ip + ihl;
        l4len = first_fragment ? iplen - ihl : 0; /* a later fragment: no transport header */
        stable[at++] = 4;
        stable[at++] = proto;
        PUT(stable, at, src, 8);
        PUT(stable, at, ip + 4, 4); /* identification, flags and fragment offset */
    } else if (ip[0] >> 4 == 6 && iplen >= 40) {
        proto = ip[6];
        src = ip + 8;
        dst = ip + 24;
        alen = 16;
        l4 = ip + 40;
        l4len = iplen - 40;
        stable[at++] = 6;
        stable[at++] = proto;
        PUT(stable, at, src, 32);
        stable[at++] = ip[1] & 0x0F;
        PUT(stable, at, ip + 2, 2);
    } else {
        return 0;
    }
    /* The transport header without its checksum, then at most 32 bytes of payload. */
    const uint8_t *payload = l4;
    size_t payload_len = l4len;
    if (proto == 6 && l4len >= 20) {
        size_t offset = (size_t)(l4[12] >> 4) * 4;
        if (offset < 20)
            offset = 20;
        PUT(stable, at, l4, 16);
        PUT(stable, at, l4 + 18, 2);
        payload = l4 + (offset < l4len ? offset : l4len);
        payload_len = offset < l4len ? l4len - offset : 0;
    } else if (proto == 17 && l4len >= 8) {
        PUT(stable, at, l4, 6);
        payload = l4 + 8;
        payload_len = l4len - 8;
    } else if ((proto == 1 || proto == 58) && l4len >= 8) {
        PUT(stable, at, l4, 2);
        PUT(stable, at, l4 + 4, 4);
        payload = l4 + 8;
        payload_len = l4len - 8;
    }
    PUT(stable, at, payload, payload_len < PAYLOAD_PREFIX ? payload_len : PAYLOAD_PREFIX);
    id->packet_len = at;
    exchange_key(id, proto, src, dst, alen, l4, l4len);
    return 1;
}

/* ------------------------------------------------------ the join's state */
typedef struct {
    int64_t aligned; /* the host's time less its prior: what the window compares */
    uint32_t host;
    uint8_t dir;
    uint8_t role;
    uint16_t iface; /* the output interface id (saturating): in the padding, free */
} Sighting;

typedef struct {
    uint64_t id;        /* the key's id */
    uint32_t last_seq;  /* the FIFO entry of its latest sighting; the next free group when free */
    uint16_t copies;    /* all seen, stored or not; these three saturate past max_copies */
    uint8_t questions, answers;
    uint8_t kind;
    uint8_t held; /* sightings stored */
    uint8_t has_jhead; /* jheads[index] is set: a sighting of it left a host (journeys) */
    Sighting inline_[INLINE_SIGHTINGS];
    Sighting *more; /* all max_held of them once inline_ is full */
} Group;           /* 64 bytes: one cache line */
_Static_assert(sizeof(Group) == 64, "a group is one cache line");

/* A sighting in the window, oldest first. A key seen once so far is its entry alone (a
 * "single"): no group is made for it, the table points at the entry. Most keys of
 * traffic the hosts do not share stay single until they leave the window, so they cost
 * this entry and a table slot instead of a 64-byte group; the second sighting makes
 * the group (group_from_single). */
typedef struct {
    Sighting seen;
    uint64_t id; /* a single's key (a group's is in the group) */
    /* A group's entry: its sequence number (the group's latest while the group's
     * last_seq is this). A single's: its packet's ordinal (mod 2^32). */
    uint32_t seq;
    uint32_t group; /* the group's index, or one of the three below */
} Entry;            /* 32 bytes */
_Static_assert(sizeof(Entry) == 32, "an entry is half a cache line");

#define SINGLE_PACKET UINT32_MAX
#define SINGLE_EXCHANGE (UINT32_MAX - 1)
#define SUPERSEDED (UINT32_MAX - 2) /* a single made a group: the group holds it now */

static inline int is_single(uint32_t group) { return group >= SINGLE_EXCHANGE; }

typedef struct {
    uint32_t hash;
    uint32_t entry; /* group index + 1; SINGLE_REF | a single's FIFO index; 0 = empty */
} Slot;

/* A single's FIFO index (mod 2^31) in a table slot: the FIFO holds fewer than 2^31
 * entries, so the live singles' indexes differ. */
#define SINGLE_REF 0x80000000u
#define MAX_GROUPS 0x7FFFFFFFu

/* An address as journeys key it (packed, 4 or 16 bytes). */
typedef struct {
    uint8_t len; /* 4 or 16 */
    uint8_t bytes[16];
} JAddr;

/* What journeys read of a packet's head (journeys._parse), per group: 44 bytes where
 * the head itself is 132 (kept too only when a receiver's filter must run on it). */
typedef struct {
    JAddr src, dst;
    uint8_t parsed, proto;
    int32_t sport, dport; /* -1: none */
} JHead;

#define PIPELINE 16
#define HEAD_SLOT (4 + HEAD_BYTES)
typedef struct {
    int64_t aligned;
    uint32_t host;
    uint8_t dir;
    uint8_t identified;
    uint8_t in_time; /* a time the join can hold (LATEST_NS) */
    uint8_t role;    /* of the exchange: ROLE_NONE when there is none */
    uint32_t packet_hash, exchange_hash;
    uint64_t packet_id, exchange_id;
    uint16_t iface;
    uint16_t head_len; /* bytes of head (copied only when matches are kept) */
    uint64_t ordinal;  /* its index among its host's packets: the file's order */
    uint32_t linktype;
    uint8_t head[HEAD_BYTES]; /* copied: the block's chunk may be gone when it is processed */
    JHead jhead;              /* parsed here, with journeys */
} Pending;

typedef struct {
    int64_t from, to;
} TimePair;

typedef struct {
    uint64_t count;
    uint32_t nsamples;
    int floor_started;
    int64_t floor_origin, floor_width;
    TimePair *samples;  /* Join.samples of them, after the struct */
    TimePair *floor;    /* Join.floor_buckets */
    uint8_t *floor_used;
} PairSummary;

/* Packet marks: which of a host's packets the merge gives epb_packetid (seen at two
 * capture points or more), in the host's file order, written to a file as the pass goes.
 * A packet's slot waits in a ring until no group can claim it any more: a group that is
 * not ambiguous holds at most max_copies sightings chained within the window, so it
 * closes within max_copies windows of the pass's time when its first sighting came
 * (`marks_horizon`, with a window to spare). Checkpoints say from which ordinal on the
 * packets came at which pass time. Memory: the horizon's packets, 8 bytes each. */
typedef struct {
    uint64_t base;         /* the ordinal of slots[head]: everything before it is written */
    uint64_t *slots;       /* id + 1 of a sighting seen at two points or more; 0: none */
    size_t head, len, cap; /* a ring; cap a power of two */
    uint64_t *cp_ordinal;  /* checkpoints: from cp_ordinal[k] on, packets came at */
    int64_t *cp_now;       /* pass time cp_now[k] or later (a ring of cp_cap) */
    size_t cp_head, cp_len, cp_cap;
    FILE *out;
} HostMarks;

/* The closer: a second thread that does what a closed group leaves to do, the clock
 * bounds it gives (pair summaries) and its journey (jr_close), in the order the groups
 * closed (so with the same dice as one thread: results are identical). The join's own
 * thread copies each job (the group's sightings, interfaces already as file indexes,
 * its journey head) into a ring of fixed slots and goes on reading; the pair summaries
 * and the journeys' state belong to the closer until finish() stops it. */
typedef struct {
    uint8_t kind;     /* KIND_PACKET or KIND_EXCHANGE */
    uint8_t n;        /* sightings, after the job's head */
    uint8_t bounds;   /* same_packet_bounds or answer_bounds */
    uint8_t journeys; /* jr_close */
    uint8_t has_head; /* the head slot (HEAD_SLOT bytes) follows the sightings */
    JHead jhead;
} CloseJob;

#define CLOSER_SLOTS 512

typedef struct {
    uint8_t *ring;
    size_t slot_bytes;
    size_t next;                     /* the join's: the next slot it fills */
    _Atomic size_t produced, consumed; /* jobs handed over, and done */
    _Atomic int closer_waits, join_waits, stop;
    pthread_mutex_t lock;
    pthread_cond_t more, room;
    pthread_t thread;
    int started, sync_ready;
} Closer;

typedef struct Join {
    PyObject_HEAD
    Py_ssize_t hosts;
    int64_t *priors;
    uint32_t *linktypes; /* by output interface id */
    Py_ssize_t nlinktypes;
    Group *groups;
    uint8_t *heads; /* per group (keep_matches): u16 length, u16 link type, HEAD_BYTES */
    uint32_t ngroups, groups_cap;
    int32_t free_group;
    Slot *table;
    uint32_t table_cap, table_used;
    Entry *fifo;       /* a ring of fifo_cap (a power of two) */
    uint64_t fifo_first; /* the oldest entry's index: entry k is fifo[k % fifo_cap] */
    size_t fifo_len, fifo_cap;
    size_t held_high_water;
    uint32_t seq; /* compared for equality only: wrapping is harmless */
    int64_t now;
    int any;
    uint64_t rng;
    PairSummary **pairs; /* [(from * hosts + to) * 2 + bound kind] */
    int keep_matches;
    uint8_t *matches;
    size_t matches_len, matches_cap;
    unsigned long long sightings, identified;
    /* Inside the loop: 1 out of memory, 2 a marks file not written (raised by the Merger's
     * run() and finish()); the closer thread sets it too. */
    _Atomic int failed;
    Pending pending[PIPELINE];
    unsigned pending_head, pending_len;
    int closing_all; /* finish(): every group closes, the table is emptied at once */
    int64_t window;  /* constraints.MATCH_WINDOW_NS */
    uint32_t max_copies, max_held; /* constraints.MAX_COPIES; questions and answers */
    uint32_t samples, floor_buckets;
    int64_t floor_start;
    struct JState *journeys; /* journeys_setup(): the journeys' state, kept in C */
    JHead *jheads;           /* per group, with journeys */
    int keep_heads;          /* heads per group: matches kept, or a journeys filter to run */
    uint16_t *file_index;    /* by output interface id: its index in its host's file */
    Py_ssize_t nfile_index;
    /* Each held sighting's ordinal (mod 2^32) when matches or marks are kept: two per group
     * here while its sightings are inline, then after its `more` sightings. */
    uint32_t *ordinals;
    uint64_t *taken, *processed; /* per host: packets taken, and processed, so far */
    HostMarks *marks;            /* per host, when the merge's packet ids are wanted */
    int64_t marks_horizon;
    unsigned marks_since_flush;
    unsigned long long marked_packets, late_marks;
    size_t marks_high_water; /* the most slots one host's ring held */
    unsigned long long shared_groups;  /* groups closed seen on two hosts or interfaces */
    int shared_seen; /* a key met on a second host: the hint, long before a group closes */
    Closer closer;
} Join;

static PyTypeObject JoinType;

/* splitmix64: the reservoirs' dice; follow/join.py rolls the same ones. */
static uint64_t next_random(Join *j)
{
    uint64_t z = (j->rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline Sighting *sightings_of(Group *g) { return g->more ? g->more : g->inline_; }

/* Where an id goes in the table (only the table's layout depends on it, never a
 * result): ids of similar keys differ by multiples of 8^k, so they are mixed first. */
static inline uint32_t id_hash(uint64_t id, uint8_t kind)
{
    uint64_t z = (id ^ (uint64_t)kind << 62) * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(z >> 32);
}

/* ------------------------------------------------------- pair summaries */
static int64_t tightness(const TimePair *p) { return p->to - p->from; }

static void floor_add(const Join *j, PairSummary *s, int64_t from, int64_t to)
{
    uint32_t buckets = j->floor_buckets;
    if (!s->floor_started) {
        s->floor_started = 1;
        s->floor_origin = from;
        s->floor_width = j->floor_start;
    }
    int64_t since = from > s->floor_origin ? from - s->floor_origin : 0;
    while (since / s->floor_width >= buckets) {
        /* The capture outgrew the buckets: twice as wide, neighbours merged. */
        for (uint32_t i = 0; i < buckets / 2; i++) {
            uint32_t a = 2 * i, b = 2 * i + 1;
            int take_b = s->floor_used[b] &&
                         (!s->floor_used[a] || tightness(&s->floor[b]) < tightness(&s->floor[a]));
            s->floor[i] = s->floor[take_b ? b : a];
            s->floor_used[i] = s->floor_used[a] | s->floor_used[b];
        }
        memset(s->floor_used + buckets / 2, 0, buckets / 2);
        s->floor_width *= 2;
    }
    int64_t k = since / s->floor_width;
    TimePair value = {from, to};
    if (!s->floor_used[k] || tightness(&value) < tightness(&s->floor[k])) {
        s->floor[k] = value;
        s->floor_used[k] = 1;
    }
}

/* One block: the summary, its sample, its floor and the floor's flags. */
static PairSummary *new_summary(const Join *j)
{
    size_t samples = (size_t)j->samples * sizeof(TimePair);
    size_t floor = (size_t)j->floor_buckets * sizeof(TimePair);
    PairSummary *s = PyMem_RawCalloc(1, sizeof *s + samples + floor + j->floor_buckets);
    if (s) {
        s->samples = (TimePair *)(s + 1);
        s->floor = (TimePair *)((char *)s->samples + samples);
        s->floor_used = (uint8_t *)s->floor + floor;
    }
    return s;
}

static void pair_add(Join *j, uint32_t from_host, uint32_t to_host, int bound, int64_t from,
                     int64_t to)
{
    size_t slot = ((size_t)from_host * (size_t)j->hosts + to_host) * 2 + (size_t)bound;
    PairSummary *s = j->pairs[slot];
    if (!s) {
        s = new_summary(j);
        if (!s) {
            j->failed = 1;
            return;
        }
        j->pairs[slot] = s;
    }
    s->count++;
    TimePair value = {from, to};
    if (s->nsamples < j->samples) {
        s->samples[s->nsamples++] = value;
    } else {
        uint64_t at = next_random(j) % s->count;
        if (at < j->samples)
            s->samples[at] = value;
    }
    floor_add(j, s, from, to);
}

/* ------------------------------------------------ packet marks */
static inline uint16_t file_iface(const Join *j, uint16_t out_id)
{
    return out_id < j->nfile_index ? j->file_index[out_id] : out_id;
}

/* Where a group's held sightings keep their ordinals (j->ordinals is set). */
static inline uint32_t *ordinals_of(const Join *j, Group *g, uint32_t index)
{
    return g->more ? (uint32_t *)(g->more + j->max_held)
                   : j->ordinals + (size_t)index * INLINE_SIGHTINGS;
}

/* A held sighting's whole ordinal from its low 32 bits: the latest one its host's
 * packets reached with those bits (a held sighting is never 2^32 packets old). */
static inline uint64_t full_ordinal(const Join *j, uint32_t host, uint32_t low)
{
    uint64_t processed = j->processed[host];
    return processed - (uint32_t)((uint32_t)processed - low);
}

/* Two capture points (hosts, or interfaces of one host) saw the packet (`s`' interfaces
 * are file indexes: file_iface). */
static int two_points(const Sighting *s, int n)
{
    for (int i = 1; i < n; i++)
        if (s[i].host != s[0].host || s[i].iface != s[0].iface)
            return 1;
    return 0;
}

/* The same, of a group's own sightings (interfaces as output ids). */
static int seen_at_two_points(const Join *j, const Sighting *s, int n)
{
    for (int i = 1; i < n; i++)
        if (s[i].host != s[0].host || file_iface(j, s[i].iface) != file_iface(j, s[0].iface))
            return 1;
    return 0;
}

static int ring_grow(void **ring, size_t head, size_t len, size_t *cap, size_t size)
{
    size_t grown_cap = *cap ? *cap * 2 : 1024;
    uint8_t *grown = PyMem_RawMalloc(grown_cap * size);
    if (!grown)
        return -1;
    for (size_t k = 0; k < len; k++)
        memcpy(grown + k * size, (uint8_t *)*ring + ((head + k) & (*cap - 1)) * size, size);
    PyMem_RawFree(*ring);
    *ring = grown;
    *cap = grown_cap;
    return 0;
}

/* Write host `m`'s slots before `limit` out: (ordinal, id) for each marked one. */
static int marks_write(HostMarks *m, uint64_t limit)
{
    uint64_t record[2 * 256];
    size_t n = 0;
    while (m->base < limit && m->len) {
        uint64_t slot = m->slots[m->head];
        if (slot) {
            record[2 * n] = m->base;
            record[2 * n + 1] = slot - 1;
            if (++n == 256) {
                if (fwrite(record, 16, n, m->out) != n)
                    return -1;
                n = 0;
            }
        }
        m->head = (m->head + 1) & (m->cap - 1);
        m->len--;
        m->base++;
    }
    if (n && fwrite(record, 16, n, m->out) != n)
        return -1;
    return 0;
}

/* Every slot no group can claim any more goes out (all of them with `all`). */
static void marks_flush(Join *j, int all)
{
    for (Py_ssize_t h = 0; h < j->hosts; h++) {
        HostMarks *m = &j->marks[h];
        uint64_t limit = m->base + m->len;
        if (!all) {
            while (m->cp_len >= 2 &&
                   m->cp_now[(m->cp_head + 1) & (m->cp_cap - 1)] + j->marks_horizon < j->now) {
                m->cp_head = (m->cp_head + 1) & (m->cp_cap - 1);
                m->cp_len--;
            }
            limit = m->cp_len ? m->cp_ordinal[m->cp_head] : m->base;
        }
        if (marks_write(m, limit) < 0) {
            j->failed = 2;
            return;
        }
    }
}

/* A packet of `host` reaches the join's time (join_process): its slot, and a checkpoint
 * when the pass's time moved on by an eighth of a window since the last one. */
static void marks_take(Join *j, uint32_t host, uint64_t ordinal)
{
    HostMarks *m = &j->marks[host];
    if (ordinal != m->base + m->len) /* the Merger hands each input's packets in order */
        return;
    if (m->len == m->cap) {
        if (ring_grow((void **)&m->slots, m->head, m->len, &m->cap, sizeof *m->slots) < 0) {
            j->failed = 1;
            return;
        }
        m->head = 0;
    }
    m->slots[(m->head + m->len++) & (m->cap - 1)] = 0;
    if (m->len > j->marks_high_water)
        j->marks_high_water = m->len;
    if (m->cp_len &&
        j->now - m->cp_now[(m->cp_head + m->cp_len - 1) & (m->cp_cap - 1)] < j->window / 8)
        return;
    if (m->cp_len == m->cp_cap) {
        size_t cap = m->cp_cap;
        if (ring_grow((void **)&m->cp_ordinal, m->cp_head, m->cp_len, &cap, 8) < 0 ||
            ring_grow((void **)&m->cp_now, m->cp_head, m->cp_len, &m->cp_cap, 8) < 0) {
            j->failed = 1;
            return;
        }
        m->cp_head = 0;
    }
    size_t at = (m->cp_head + m->cp_len++) & (m->cp_cap - 1);
    m->cp_ordinal[at] = ordinal;
    m->cp_now[at] = j->now;
}

/* A closed packet group seen at two points or more: each held sighting gets its id. */
static void mark_group(Join *j, Group *g, uint32_t index)
{
    Sighting *s = sightings_of(g);
    const uint32_t *low = ordinals_of(j, g, index);
    j->marked_packets++;
    for (int i = 0; i < g->held; i++) {
        HostMarks *m = &j->marks[s[i].host];
        uint64_t ordinal = full_ordinal(j, s[i].host, low[i]);
        if (ordinal < m->base || ordinal >= m->base + m->len) {
            j->late_marks++; /* written out already: the horizon was wrong (never seen) */
            continue;
        }
        m->slots[(m->head + (ordinal - m->base)) & (m->cap - 1)] = g->id + 1;
    }
}

/* ------------------------------------------------ closing a group: bounds */
static inline int64_t host_time(const Join *j, const Sighting *s)
{
    return s->aligned + j->priors[s->host];
}

static inline int within_window(const Join *j, int64_t a, int64_t b)
{
    return (a > b ? a - b : b - a) <= j->window;
}

/* A packet seen leaving one host and arriving at others: for each receiver (in host
 * order), its copy nearest in time is this packet's arrival. */
static void same_packet_bounds(Join *j, Sighting *s, int n)
{
    for (int i = 0; i < n; i++) {
        if (s[i].dir != DIR_OUT)
            continue;
        uint32_t receivers[2 * MAX_COPIES_LIMIT];
        int nreceivers = 0;
        for (int k = 0; k < n; k++) {
            if (s[k].dir != DIR_IN || s[k].host == s[i].host ||
                !within_window(j, s[k].aligned, s[i].aligned))
                continue;
            int known = 0;
            for (int r = 0; r < nreceivers; r++)
                known |= receivers[r] == s[k].host;
            if (!known) {
                int at = nreceivers++;
                while (at > 0 && receivers[at - 1] > s[k].host) {
                    receivers[at] = receivers[at - 1];
                    at--;
                }
                receivers[at] = s[k].host;
            }
        }
        for (int r = 0; r < nreceivers; r++) {
            int best = -1;
            int64_t best_gap = 0;
            for (int k = 0; k < n; k++) {
                if (s[k].dir != DIR_IN || s[k].host != receivers[r] ||
                    !within_window(j, s[k].aligned, s[i].aligned))
                    continue;
                int64_t gap = s[k].aligned - s[i].aligned;
                gap = gap < 0 ? -gap : gap;
                if (best < 0 || gap < best_gap) {
                    best = k;
                    best_gap = gap;
                }
            }
            pair_add(j, s[i].host, receivers[r], BOUND_SAME, host_time(j, &s[i]),
                     host_time(j, &s[best]));
        }
    }
}

/* An answer seen after its question on another host. */
static void answer_bounds(Join *j, Sighting *s, int n)
{
    for (int a = 0; a < n; a++) {
        if (s[a].role != ROLE_ANSWER)
            continue;
        for (int q = 0; q < n; q++) {
            if (s[q].role != ROLE_QUESTION || s[q].host == s[a].host ||
                !within_window(j, s[a].aligned, s[q].aligned))
                continue;
            pair_add(j, s[q].host, s[a].host, BOUND_ANSWER, host_time(j, &s[q]),
                     host_time(j, &s[a]));
        }
    }
}

/* A match record for join.py's iterator (join.MATCH_HEAD, MATCH_SIGHTING): the packet
 * id, the number of sightings, the link type and length of its head; then (time on the
 * host, host, direction, interface, ordinal) of each sighting; then the head's bytes,
 * padded to 8: the start of the frame of its first sighting. */
#define MATCH_SIGHTING_BYTES 24
static void keep_match(Join *j, Group *g, uint32_t index)
{
    const uint8_t *slot = j->heads + (size_t)index * HEAD_SLOT;
    uint32_t head_len = slot[0] | (uint32_t)slot[1] << 8;
    size_t need = 16 + (size_t)g->held * MATCH_SIGHTING_BYTES + ((head_len + 7u) & ~7u);
    if (j->matches_len + need > j->matches_cap) {
        size_t cap = j->matches_cap ? j->matches_cap * 2 : 1 << 16;
        while (cap < j->matches_len + need)
            cap *= 2;
        uint8_t *grown = PyMem_RawRealloc(j->matches, cap);
        if (!grown) {
            j->failed = 1;
            return;
        }
        j->matches = grown;
        j->matches_cap = cap;
    }
    uint8_t *p = j->matches + j->matches_len;
    memset(p, 0, need);
    put_le32(p, (uint32_t)g->id);
    put_le32(p + 4, (uint32_t)(g->id >> 32));
    put_le32(p + 8, g->held);
    memcpy(p + 12, slot + 2, 2); /* link type */
    memcpy(p + 14, slot, 2);     /* head length */
    Sighting *s = sightings_of(g);
    const uint32_t *low = ordinals_of(j, g, index);
    for (int i = 0; i < g->held; i++) {
        uint8_t *r = p + 16 + MATCH_SIGHTING_BYTES * i;
        uint64_t t = (uint64_t)host_time(j, &s[i]);
        uint64_t ordinal = full_ordinal(j, s[i].host, low[i]);
        put_le32(r, (uint32_t)t);
        put_le32(r + 4, (uint32_t)(t >> 32));
        put_le32(r + 8, s[i].host);
        r[12] = s[i].dir;
        r[14] = (uint8_t)s[i].iface;
        r[15] = (uint8_t)(s[i].iface >> 8);
        put_le32(r + 16, (uint32_t)ordinal);
        put_le32(r + 20, (uint32_t)(ordinal >> 32));
    }
    memcpy(p + 16 + MATCH_SIGHTING_BYTES * (size_t)g->held, slot + 4, head_len);
    j->matches_len += need;
}


/* ============================================================ journeys in C
 * follow/journeys.py's per-packet work, done when a packet group closes (the Python
 * engine calls `Journeys.__call__` at the same moment: the two give identical state).
 * What it keeps (journeys.py says why each is bounded):
 *   - per host: first and last time seen, sightings inbound;
 *   - per ordered host pair (sender, receiver): arrived, duplicated, a uniform sample of
 *     (t_send, t_recv) and the widest gap;
 *   - per flow (sender, destination address): reordered, the latest send time arrived,
 *     the first examples of lost packets, and the lost packets' send times: exactly up to
 *     `exact` of them, then all of them in a histogram of `buckets` time buckets whose
 *     width doubles as the flow's span grows (journeys.LostTimes);
 *   - per host, residence: a count, a sample and the max.
 * Addresses (packed, 4 or 16 bytes) map to hosts in a small hash table, as journeys.py's
 * `owner` dict (declared ones first, then learned ones, in insertion order). */

typedef struct {
    int64_t t_send;
    JAddr src;
    uint8_t proto;
    int32_t sport, dport; /* -1: none */
} JExample;

typedef struct {
    uint32_t sender;
    JAddr dst;
    int has_latest;
    int64_t latest_sent;
    uint64_t reordered;
    int64_t *exact; /* lost send times while `nexact` <= exact (then NULL: the histogram) */
    uint32_t nexact, exact_cap;
    uint64_t *counts; /* the histogram, once the exact times outgrew their room */
    int64_t origin, width;
    JExample *examples;
    uint32_t nexamples;
} JFlow;

typedef struct {
    uint64_t arrived, duplicated;
    uint32_t nsamples;
    int has_widest;
    TimePair widest;
    TimePair samples[]; /* JState.samples */
} JPair;

typedef struct {
    uint64_t count;
    int64_t max;
    uint32_t nsamples;
    int64_t samples[]; /* JState.samples */
} JResidence;

typedef struct {
    uint8_t *code; /* sock_filter: u16 code, u8 jt, u8 jf, u32 k (little-endian) */
    uint32_t len;
} JProgram;

typedef struct JState {
    Py_ssize_t hosts;
    uint32_t samples, examples, exact, buckets;
    uint64_t rng;
    /* per host */
    uint8_t *declared;
    int8_t *inbound_flag; /* -1: inferred, 0: does not capture inbound, 1: does */
    JProgram *ether, *raw;
    int64_t *first, *last;
    uint8_t *seen;
    uint64_t *inbound;
    /* The same four for the keys seen once (singles): kept by the join's thread, which
     * closes those itself, and added to the closer's in journeys_state(). */
    int64_t *lone_first, *lone_last;
    uint8_t *lone_seen;
    uint64_t *lone_inbound;
    JResidence **residence;
    JPair **pairs; /* [sender * hosts + receiver] */
    /* addresses -> host, in insertion order */
    JAddr *addrs;
    int32_t *addr_host;
    uint32_t naddrs, addrs_cap;
    uint32_t *addr_table; /* index + 1; 0 empty */
    uint32_t addr_table_cap;
    /* flows, in creation order */
    JFlow *flows;
    uint32_t nflows, flows_cap;
    uint32_t *flow_table;
    uint32_t flow_table_cap;
} JState;

static void jr_free(JState *r);

static uint64_t jr_random(JState *r)
{
    uint64_t z = (r->rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint32_t addr_hash(const JAddr *a, uint32_t extra)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ extra;
    for (int i = 0; i < a->len; i++)
        h = (h ^ a->bytes[i]) * 0x100000001b3ULL;
    h ^= a->len;
    h *= 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(h >> 32);
}

static int addr_eq(const JAddr *a, const JAddr *b)
{
    return a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

static int addr_table_grow(JState *r)
{
    uint32_t cap = r->addr_table_cap ? r->addr_table_cap * 2 : 64;
    uint32_t *table = PyMem_RawCalloc(cap, sizeof *table);
    if (!table)
        return -1;
    for (uint32_t i = 0; i < r->naddrs; i++) {
        uint32_t at = addr_hash(&r->addrs[i], 0) & (cap - 1);
        while (table[at])
            at = (at + 1) & (cap - 1);
        table[at] = i + 1;
    }
    PyMem_RawFree(r->addr_table);
    r->addr_table = table;
    r->addr_table_cap = cap;
    return 0;
}

/* The owner of an address: -1 when none. */
static int32_t owner_of(const JState *r, const JAddr *a)
{
    uint32_t mask = r->addr_table_cap - 1, at = addr_hash(a, 0) & mask;
    for (;;) {
        uint32_t e = r->addr_table[at];
        if (!e)
            return -1;
        if (addr_eq(&r->addrs[e - 1], a))
            return r->addr_host[e - 1];
        at = (at + 1) & mask;
    }
}

/* owner.setdefault(a, host) (replace: owner[a] = host). */
static int owner_set(JState *r, const JAddr *a, int32_t host, int replace)
{
    if ((r->naddrs + 1) * 2 > r->addr_table_cap && addr_table_grow(r) < 0)
        return -1;
    uint32_t mask = r->addr_table_cap - 1, at = addr_hash(a, 0) & mask;
    for (;;) {
        uint32_t e = r->addr_table[at];
        if (!e)
            break;
        if (addr_eq(&r->addrs[e - 1], a)) {
            if (replace)
                r->addr_host[e - 1] = host;
            return 0;
        }
        at = (at + 1) & mask;
    }
    if (r->naddrs == r->addrs_cap) {
        uint32_t cap = r->addrs_cap ? r->addrs_cap * 2 : 64;
        JAddr *addrs = PyMem_RawRealloc(r->addrs, cap * sizeof *addrs);
        if (!addrs)
            return -1;
        r->addrs = addrs;
        int32_t *hosts = PyMem_RawRealloc(r->addr_host, cap * sizeof *hosts);
        if (!hosts)
            return -1;
        r->addr_host = hosts;
        r->addrs_cap = cap;
    }
    r->addrs[r->naddrs] = *a;
    r->addr_host[r->naddrs] = host;
    r->addr_table[at] = ++r->naddrs;
    return 0;
}

static int flow_table_grow(JState *r)
{
    uint32_t cap = r->flow_table_cap ? r->flow_table_cap * 2 : 256;
    uint32_t *table = PyMem_RawCalloc(cap, sizeof *table);
    if (!table)
        return -1;
    for (uint32_t i = 0; i < r->nflows; i++) {
        uint32_t at = addr_hash(&r->flows[i].dst, r->flows[i].sender) & (cap - 1);
        while (table[at])
            at = (at + 1) & (cap - 1);
        table[at] = i + 1;
    }
    PyMem_RawFree(r->flow_table);
    r->flow_table = table;
    r->flow_table_cap = cap;
    return 0;
}

static JFlow *flow_of(JState *r, uint32_t sender, const JAddr *dst)
{
    if ((r->nflows + 1) * 2 > r->flow_table_cap && flow_table_grow(r) < 0)
        return NULL;
    uint32_t mask = r->flow_table_cap - 1, at = addr_hash(dst, sender) & mask;
    for (;;) {
        uint32_t e = r->flow_table[at];
        if (!e)
            break;
        JFlow *f = &r->flows[e - 1];
        if (f->sender == sender && addr_eq(&f->dst, dst))
            return f;
        at = (at + 1) & mask;
    }
    if (r->nflows == r->flows_cap) {
        uint32_t cap = r->flows_cap ? r->flows_cap * 2 : 64;
        JFlow *flows = PyMem_RawRealloc(r->flows, cap * sizeof *flows);
        if (!flows)
            return NULL;
        r->flows = flows;
        r->flows_cap = cap;
    }
    JFlow *f = &r->flows[r->nflows];
    memset(f, 0, sizeof *f);
    f->sender = sender;
    f->dst = *dst;
    r->flow_table[at] = ++r->nflows;
    return f;
}

/* journeys.LostTimes.add: exact while there is room, then the histogram. */
static void hist_fold(JState *r, JFlow *f, int64_t t)
{
    int64_t since = t > f->origin ? t - f->origin : 0;
    while (since / f->width >= (int64_t)r->buckets) {
        for (uint32_t i = 0; i < r->buckets / 2; i++)
            f->counts[i] = f->counts[2 * i] + f->counts[2 * i + 1];
        memset(f->counts + r->buckets / 2, 0, (r->buckets / 2) * sizeof *f->counts);
        f->width *= 2;
    }
    f->counts[since / f->width]++;
}

static int lost_time(JState *r, JFlow *f, int64_t t)
{
    if (!f->counts && f->nexact < r->exact) {
        if (f->nexact == f->exact_cap) {
            uint32_t cap = f->exact_cap ? f->exact_cap * 2 : 16;
            if (cap > r->exact)
                cap = r->exact;
            int64_t *grown = PyMem_RawRealloc(f->exact, cap * sizeof *grown);
            if (!grown)
                return -1;
            f->exact = grown;
            f->exact_cap = cap;
        }
        f->exact[f->nexact++] = t;
        return 0;
    }
    if (!f->counts) {
        f->counts = PyMem_RawCalloc(r->buckets, sizeof *f->counts);
        if (!f->counts)
            return -1;
        int64_t lo = f->exact[0], hi = f->exact[0];
        for (uint32_t i = 1; i < f->nexact; i++) {
            lo = f->exact[i] < lo ? f->exact[i] : lo;
            hi = f->exact[i] > hi ? f->exact[i] : hi;
        }
        f->origin = lo;
        f->width = 1;
        while (hi - lo >= f->width * (int64_t)r->buckets)
            f->width *= 2;
        for (uint32_t i = 0; i < f->nexact; i++)
            hist_fold(r, f, f->exact[i]);
        PyMem_RawFree(f->exact);
        f->exact = NULL;
        f->nexact = f->exact_cap = 0;
    }
    hist_fold(r, f, t);
    return 0;
}

/* ------------------------------------------------ cBPF (merge/cbpf_run.py) */
#define CBPF_MAX_STEPS (1 << 16)
#define CBPF_UNKNOWN (-1)

/* The value of the first `size` bytes at `offset` (big-endian); 0 past the frame (reject),
 * CBPF_UNKNOWN past the bytes held of a longer frame. */
static int cbpf_load(const uint8_t *frame, uint64_t len, uint64_t wire, uint64_t offset,
                     unsigned size, uint32_t *value)
{
    if (offset + size > len)
        return wire > len && offset + size <= wire ? CBPF_UNKNOWN : 0;
    uint32_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v = v << 8 | frame[offset + i];
    *value = v;
    return 1;
}

/* 1: the program accepts the frame, 0: it does not (unknowns accept: cbpf_run.selects). */
static int cbpf_selects(const JProgram *prog, const uint8_t *frame, uint32_t len, uint32_t wire)
{
    uint32_t a = 0, x = 0, mem[16] = {0};
    uint32_t pc = 0;
    for (int step = 0; step < CBPF_MAX_STEPS; step++) {
        if (pc >= prog->len)
            return 1; /* cannot happen with a checked program: not ours to judge */
        const uint8_t *insn = prog->code + 8 * (size_t)pc;
        uint16_t code = (uint16_t)(insn[0] | insn[1] << 8);
        uint8_t jt = insn[2], jf = insn[3];
        uint32_t k = get_le32(insn + 4);
        unsigned klass = code & 0x07, mode = code & 0xE0, size = code & 0x18, op = code & 0xF0;
        pc++;
        if (klass == 6) /* RET */
            return ((mode == 0x10) ? a : k) != 0;
        if (klass == 0 || klass == 1) { /* LD, LDX */
            uint32_t value;
            if (mode == 0x00) {
                value = k;
            } else if (mode == 0x80) {
                value = wire;
            } else if (mode == 0x60) {
                value = mem[k & 15];
            } else if (mode == 0xA0) {
                uint32_t byte;
                int got = cbpf_load(frame, len, wire, k, 1, &byte);
                if (got != 1)
                    return got == CBPF_UNKNOWN;
                value = (byte & 0x0F) * 4;
            } else {
                uint64_t offset = mode == 0x20 ? k : (uint32_t)(x + k);
                unsigned bytes = size == 0x00 ? 4 : size == 0x08 ? 2 : 1;
                int got = cbpf_load(frame, len, wire, offset, bytes, &value);
                if (got != 1)
                    return got == CBPF_UNKNOWN;
            }
            if (klass == 0)
                a = value;
            else
                x = value;
        } else if (klass == 2) { /* ST */
            mem[k & 15] = a;
        } else if (klass == 3) { /* STX */
            mem[k & 15] = x;
        } else if (klass == 4) { /* ALU */
            uint32_t v = (code & 0x08) ? x : k;
            switch (op) {
            case 0x00: a += v; break;
            case 0x10: a -= v; break;
            case 0x20: a *= v; break;
            case 0x30: if (!v) return 0; a /= v; break;
            case 0x90: if (!v) return 0; a %= v; break;
            case 0x40: a |= v; break;
            case 0x50: a &= v; break;
            case 0x60: a = v < 32 ? a << v : 0; break;
            case 0x70: a = v < 32 ? a >> v : 0; break;
            case 0x80: a = (uint32_t)-a; break;
            case 0xA0: a ^= v; break;
            default: return 1;
            }
        } else if (klass == 5) { /* JMP */
            if (op == 0x00) {
                pc = pc + k; /* signed k: wraps as libpcap's does */
                continue;
            }
            uint32_t v = (code & 0x08) ? x : k;
            int taken = op == 0x10 ? a == v : op == 0x20 ? a > v : op == 0x30 ? a >= v
                      : op == 0x40 ? (a & v) != 0 : 0;
            pc += taken ? jt : jf;
        } else if (klass == 7) { /* MISC */
            if ((code & 0xF8) == 0x00)
                x = a;
            else
                a = x;
        }
    }
    return 1; /* past the step budget: unknown */
}

/* journeys._parse: (source, destination, protocol, ports) of the head's IP packet. */
static int jr_parse(uint32_t linktype, const uint8_t *head, size_t len, JAddr *src, JAddr *dst,
                    uint8_t *proto, int32_t *sport, int32_t *dport)
{
    size_t iplen, l4len;
    const uint8_t *ip = ip_payload(linktype, head, len, &iplen), *l4;
    if (!ip || iplen < 1)
        return 0;
    if (ip[0] >> 4 == 4 && iplen >= 20) {
        size_t ihl = (size_t)(ip[0] & 0x0F) * 4;
        *proto = ip[9];
        src->len = dst->len = 4;
        memcpy(src->bytes, ip + 12, 4);
        memcpy(dst->bytes, ip + 16, 4);
        l4 = ip + (ihl < iplen ? ihl : iplen);
        l4len = ihl < iplen ? iplen - ihl : 0;
        if (be16(ip + 6) & 0x1FFF)
            l4len = 0; /* a later fragment: no ports */
    } else if (ip[0] >> 4 == 6 && iplen >= 40) {
        *proto = ip[6];
        src->len = dst->len = 16;
        memcpy(src->bytes, ip + 8, 16);
        memcpy(dst->bytes, ip + 24, 16);
        l4 = ip + 40;
        l4len = iplen - 40;
    } else {
        return 0;
    }
    if ((*proto == 6 || *proto == 17 || *proto == 132) && l4len >= 4) {
        *sport = be16(l4);
        *dport = be16(l4 + 2);
    } else {
        *sport = *dport = -1;
    }
    return 1;
}


static JPair *jr_pair(JState *r, uint32_t sender, uint32_t receiver)
{
    JPair **slot = &r->pairs[(size_t)sender * (size_t)r->hosts + receiver];
    if (!*slot)
        *slot = PyMem_RawCalloc(1, sizeof(JPair) + r->samples * sizeof(TimePair));
    return *slot;
}

/* A host seen at `t`: its first and last times, and its count of received packets. */
static inline void jr_saw(int64_t *first, int64_t *last, uint8_t *seen, uint64_t *inbound,
                          uint32_t h, int64_t t, uint8_t dir)
{
    if (!seen[h] || t < first[h])
        first[h] = t;
    if (!seen[h] || t > last[h])
        last[h] = t;
    seen[h] = 1;
    inbound[h] += dir == DIR_IN;
}

/* Journeys.__call__ for one closed packet group (sightings in the join's order, their
 * interfaces as file indexes; `slot` its head when kept): on the closer thread. */
static int jr_close(Join *j, const Sighting *s, int n, const JHead *head, const uint8_t *slot)
{
    JState *r = j->journeys;
    int outbound = 0;
    for (int i = 0; i < n; i++) {
        jr_saw(r->first, r->last, r->seen, r->inbound, s[i].host, host_time(j, &s[i]), s[i].dir);
        outbound |= s[i].dir == DIR_OUT;
    }
    if (n > 1 && two_points(s, n)) {
        /* Residence: arrived on one interface of a host, left by another. */
        for (int i = 0; i < n; i++) {
            if (s[i].dir != DIR_IN)
                continue;
            int64_t t_in = host_time(j, &s[i]), leaving = 0;
            int found = 0;
            for (int o = 0; o < n; o++) {
                if (s[o].host != s[i].host || s[o].dir != DIR_OUT || s[o].iface == s[i].iface)
                    continue;
                int64_t t = host_time(j, &s[o]);
                if (t >= t_in && (!found || t < leaving)) {
                    leaving = t;
                    found = 1;
                }
            }
            if (!found)
                continue;
            int64_t gap = leaving - t_in;
            JResidence **slot = &r->residence[s[i].host];
            if (!*slot && !(*slot = PyMem_RawCalloc(1, sizeof(JResidence) +
                                                        r->samples * sizeof(int64_t))))
                return -1;
            JResidence *held = *slot;
            held->count++;
            held->max = gap > held->max ? gap : held->max;
            if (held->nsamples < r->samples) {
                held->samples[held->nsamples++] = gap;
            } else {
                uint64_t at = jr_random(r) % held->count;
                if (at < r->samples)
                    held->samples[at] = gap;
            }
            break;
        }
    }
    if (!outbound)
        return 0;
    /* The legs. */
    if (!head->parsed)
        return 0;
    JAddr src = head->src, dst = head->dst;
    uint8_t proto = head->proto;
    int32_t sport = head->sport, dport = head->dport;
    /* The head's bytes (a receiver's filter runs on them): kept when a filter may. */
    uint32_t head_len = slot ? (slot[0] | (uint32_t)slot[1] << 8) : 0;
    uint32_t linktype = slot ? (slot[2] | (uint32_t)slot[3] << 8) : 0;
    /* Hosts by direction, ascending (the Python engine sorts them too). */
    uint32_t in_hosts[2 * MAX_COPIES_LIMIT], out_hosts[2 * MAX_COPIES_LIMIT];
    int nin = 0, nout = 0;
    for (int i = 0; i < n; i++) {
        uint32_t *list = s[i].dir == DIR_IN ? in_hosts : s[i].dir == DIR_OUT ? out_hosts : NULL;
        int *count = s[i].dir == DIR_IN ? &nin : &nout;
        if (!list)
            continue;
        int known = 0;
        for (int k = 0; k < *count; k++)
            known |= list[k] == s[i].host;
        if (known)
            continue;
        int at = (*count)++;
        while (at > 0 && list[at - 1] > s[i].host) {
            list[at] = list[at - 1];
            at--;
        }
        list[at] = s[i].host;
    }
    int ends = 0;
    uint32_t end = 0;
    for (int a = 0; a < nout; a++) {
        int forwarded = 0;
        for (int b = 0; b < nin; b++)
            forwarded |= in_hosts[b] == out_hosts[a];
        if (!forwarded && !r->declared[out_hosts[a]] && owner_set(r, &src, (int32_t)out_hosts[a], 0) < 0)
            return -1;
    }
    for (int b = 0; b < nin; b++) {
        int forwarded = 0;
        for (int a = 0; a < nout; a++)
            forwarded |= in_hosts[b] == out_hosts[a];
        if (!forwarded) {
            ends++;
            end = in_hosts[b];
        }
    }
    if (ends == 1 && !r->declared[end] && owner_set(r, &dst, (int32_t)end, 0) < 0)
        return -1;
    int32_t receiver = owner_of(r, &dst);
    /* What the receiver saw arrive: its count and the earliest. */
    int narrivals = 0;
    int64_t t_recv = 0;
    if (receiver >= 0)
        for (int k = 0; k < n; k++)
            if (s[k].host == (uint32_t)receiver && s[k].dir == DIR_IN) {
                int64_t t = host_time(j, &s[k]);
                t_recv = !narrivals++ || t < t_recv ? t : t_recv;
            }
    int capture = -1; /* whether the receiver would have captured it: asked once */
    for (int i = 0; i < n; i++) {
        if (s[i].dir != DIR_OUT || (int32_t)s[i].host == receiver)
            continue;
        uint32_t sender = s[i].host;
        int64_t t_send = host_time(j, &s[i]);
        if (narrivals) {
            JPair *pair = jr_pair(r, sender, (uint32_t)receiver);
            if (!pair)
                return -1;
            pair->arrived++;
            pair->duplicated += (uint64_t)(narrivals - 1);
            TimePair value = {t_send, t_recv};
            if (pair->nsamples < r->samples) {
                pair->samples[pair->nsamples++] = value;
            } else {
                uint64_t at = jr_random(r) % pair->arrived;
                if (at < r->samples)
                    pair->samples[at] = value;
            }
            if (!pair->has_widest || t_recv - t_send > pair->widest.to - pair->widest.from) {
                pair->widest = value;
                pair->has_widest = 1;
            }
            JFlow *flow = flow_of(r, sender, &dst);
            if (!flow)
                return -1;
            if (flow->has_latest && t_send < flow->latest_sent) {
                flow->reordered++;
            } else {
                flow->latest_sent = t_send;
                flow->has_latest = 1;
            }
            continue;
        }
        if (receiver >= 0) {
            if (capture < 0) {
                int flag = r->inbound_flag[receiver];
                const JProgram *prog = !slot             ? NULL
                                       : linktype == 1   ? &r->ether[receiver]
                                       : linktype == 101 ? &r->raw[receiver]
                                                         : NULL;
                if (flag == 0)
                    capture = 0;
                else if (!prog || !prog->code)
                    capture = 1;
                else
                    capture = cbpf_selects(prog, slot + 4, head_len,
                                           head_len < HEAD_BYTES ? head_len : HEAD_BYTES + 1);
            }
            if (!capture)
                continue;
        }
        JFlow *flow = flow_of(r, sender, &dst);
        if (!flow || lost_time(r, flow, t_send) < 0)
            return -1;
        if (flow->nexamples < r->examples) {
            if (!flow->examples &&
                !(flow->examples = PyMem_RawMalloc(r->examples * sizeof(JExample))))
                return -1;
            JExample *e = &flow->examples[flow->nexamples++];
            e->t_send = t_send;
            e->src = src;
            e->proto = proto;
            e->sport = sport;
            e->dport = dport;
        }
    }
    return 0;
}

static void table_remove(Join *j, uint32_t hash, uint32_t ref);

/* ------------------------------------------------------------ the closer */
#define CLOSE_JOB_BYTES ((sizeof(CloseJob) + 7) & ~(size_t)7)

static inline Sighting *job_sightings(CloseJob *job)
{
    return (Sighting *)((uint8_t *)job + CLOSE_JOB_BYTES);
}

static void closer_do(Join *j, CloseJob *job)
{
    Sighting *s = job_sightings(job);
    if (job->bounds) {
        if (job->kind == KIND_PACKET)
            same_packet_bounds(j, s, job->n);
        else
            answer_bounds(j, s, job->n);
    }
    if (job->journeys) {
        const uint8_t *head = job->has_head ? (const uint8_t *)(s + job->n) : NULL;
        if (jr_close(j, s, job->n, &job->jhead, head) < 0)
            j->failed = 1;
    }
}

#define CLOSER_SPIN 2000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Jobs up to `done` are done: the join may reuse their slots. */
static void closer_release(Closer *c, size_t done)
{
    atomic_store(&c->consumed, done);
    if (atomic_load(&c->join_waits)) {
        pthread_mutex_lock(&c->lock);
        pthread_cond_signal(&c->room);
        pthread_mutex_unlock(&c->lock);
    }
}

/* The closer thread: each job in turn until stopped with none left. A side that waits
 * says so (closer_waits, join_waits) before it looks again under the lock; the other
 * side publishes, then looks whether to signal: neither misses the other. */
static void *closer_main(void *arg)
{
    Join *j = arg;
    Closer *c = &j->closer;
    size_t done = atomic_load(&c->consumed);
    for (;;) {
        size_t ready = atomic_load(&c->produced);
        /* The next batch is usually microseconds away: look a while before sleeping. */
        for (int spin = 0; done == ready && spin < CLOSER_SPIN; spin++) {
            cpu_relax();
            ready = atomic_load_explicit(&c->produced, memory_order_acquire);
        }
        if (done == ready) {
            pthread_mutex_lock(&c->lock);
            atomic_store(&c->closer_waits, 1);
            while (done == (ready = atomic_load(&c->produced)) && !atomic_load(&c->stop))
                pthread_cond_wait(&c->more, &c->lock);
            atomic_store(&c->closer_waits, 0);
            pthread_mutex_unlock(&c->lock);
            if (done == ready)
                return NULL; /* stopped, nothing left */
        }
        while (done != ready) {
            closer_do(j, (CloseJob *)(c->ring + (done % CLOSER_SLOTS) * c->slot_bytes));
            if (!(++done & 255))
                closer_release(c, done);
        }
        closer_release(c, done);
    }
}

static int closer_start(Join *j)
{
    Closer *c = &j->closer;
    if (!c->ring) { /* (again after a stop: the same ring, the counts go on) */
        size_t bytes = CLOSE_JOB_BYTES + j->max_held * sizeof(Sighting) + HEAD_SLOT;
        c->slot_bytes = (bytes + 63) & ~(size_t)63;
        c->ring = PyMem_RawMalloc(CLOSER_SLOTS * c->slot_bytes);
        if (!c->ring)
            return -1;
    }
    if (pthread_create(&c->thread, NULL, closer_main, j) != 0)
        return -1;
    c->started = 1;
    return 0;
}

/* The jobs filled so far are the closer's (every CLOSER_BATCH jobs, and when the join
 * returns to Python: a wake-up per job would cost more than the job). */
#define CLOSER_BATCH 64

static void closer_publish(Join *j)
{
    Closer *c = &j->closer;
    if (!c->started || atomic_load(&c->produced) == c->next)
        return;
    atomic_store(&c->produced, c->next);
    if (atomic_load(&c->closer_waits)) {
        pthread_mutex_lock(&c->lock);
        pthread_cond_signal(&c->more);
        pthread_mutex_unlock(&c->lock);
    }
}

/* Every job handed over is done, and the thread is gone (before anyone reads what it
 * kept: pairs(), journeys_state()). */
static void closer_stop(Join *j)
{
    Closer *c = &j->closer;
    if (!c->started)
        return;
    closer_publish(j);
    pthread_mutex_lock(&c->lock);
    atomic_store(&c->stop, 1);
    pthread_cond_signal(&c->more);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    c->started = 0;
    atomic_store(&c->stop, 0);
}

/* Hand a closed group's remaining work to the closer (waiting while its ring is full). */
static void closer_submit(Join *j, Group *g, uint32_t index, int bounds, int journeys)
{
    Closer *c = &j->closer;
    if (!c->started && closer_start(j) < 0) {
        j->failed = 1;
        return;
    }
    if (c->next - atomic_load(&c->consumed) == CLOSER_SLOTS) {
        closer_publish(j);
        pthread_mutex_lock(&c->lock);
        atomic_store(&c->join_waits, 1);
        while (c->next - atomic_load(&c->consumed) == CLOSER_SLOTS)
            pthread_cond_wait(&c->room, &c->lock);
        atomic_store(&c->join_waits, 0);
        pthread_mutex_unlock(&c->lock);
    }
    CloseJob *job = (CloseJob *)(c->ring + (c->next % CLOSER_SLOTS) * c->slot_bytes);
    Sighting *from = sightings_of(g), *to = job_sightings(job);
    job->kind = g->kind;
    job->n = g->held;
    job->bounds = (uint8_t)bounds;
    job->journeys = (uint8_t)journeys;
    job->has_head = 0;
    for (int i = 0; i < g->held; i++) {
        to[i] = from[i];
        to[i].iface = file_iface(j, from[i].iface); /* the closer reads no join table */
    }
    if (journeys) {
        if (g->has_jhead)
            job->jhead = j->jheads[index];
        else
            job->jhead.parsed = 0; /* no leg: nothing left a host (jr_close asks no more) */
        if (j->keep_heads) {
            memcpy(to + g->held, j->heads + (size_t)index * HEAD_SLOT, HEAD_SLOT);
            job->has_head = 1;
        }
    }
    if (!(++c->next % CLOSER_BATCH))
        closer_publish(j);
}

static int hosts_differ(const Sighting *s, int n)
{
    for (int i = 1; i < n; i++)
        if (s[i].host != s[0].host)
            return 1;
    return 0;
}

static void close_group(Join *j, uint32_t index)
{
    Group *g = &j->groups[index];
    Sighting *s = sightings_of(g);
    int bounds = 0, journeys = 0;
    if (g->kind == KIND_PACKET) {
        int clear = g->copies <= j->max_copies; /* past it the key is ambiguous */
        bounds = g->copies >= 2 && clear;
        if (clear && g->held > 1 && seen_at_two_points(j, s, g->held)) {
            j->shared_groups++;
            if (j->marks)
                mark_group(j, g, index);
        }
        if (j->keep_matches && clear) {
            if (j->journeys)
                journeys = 1;
            else
                keep_match(j, g, index);
        }
    } else {
        bounds = g->questions && g->answers && g->questions <= j->max_copies &&
                 g->answers <= j->max_copies;
        j->shared_groups += bounds && hosts_differ(s, g->held);
    }
    if (bounds || journeys)
        closer_submit(j, g, index, bounds, journeys);
    if (!j->closing_all) /* at the end the table goes as a whole */
        table_remove(j, id_hash(g->id, g->kind), index + 1);
    PyMem_RawFree(g->more);
    g->more = NULL;
    g->last_seq = (uint32_t)j->free_group; /* no FIFO entry refers to it any more */
    j->free_group = (int32_t)index;
}

/* ------------------------------------------------------------ the table */
/* Linear probing over (hash, group index + 1) slots: a probe and a deletion read the
 * slots alone, and touch a group (far away in memory) only when the hashes agree. */
static int table_grow(Join *j)
{
    uint32_t cap = j->table_cap ? j->table_cap * 2 : 1024;
    Slot *table = PyMem_RawCalloc(cap, sizeof *table);
    if (!table)
        return -1;
    for (uint32_t i = 0; i < j->table_cap; i++) {
        Slot slot = j->table[i];
        if (!slot.entry)
            continue;
        uint32_t at = slot.hash & (cap - 1);
        while (table[at].entry)
            at = (at + 1) & (cap - 1);
        table[at] = slot;
    }
    PyMem_RawFree(j->table);
    j->table = table;
    j->table_cap = cap;
    return 0;
}

static inline uint8_t single_kind(uint32_t group)
{
    return group == SINGLE_PACKET ? KIND_PACKET : KIND_EXCHANGE;
}

static inline Entry *single_entry(const Join *j, uint32_t ref)
{
    return &j->fifo[ref & ~SINGLE_REF & (j->fifo_cap - 1)];
}

/* The slot holding (id, kind), or the empty slot where it belongs. */
static uint32_t table_slot(Join *j, uint64_t id, uint8_t kind, uint32_t hash)
{
    uint32_t mask = j->table_cap - 1, at = hash & mask;
    for (;;) {
        Slot slot = j->table[at];
        if (!slot.entry)
            return at;
        if (slot.hash == hash) {
            if (slot.entry & SINGLE_REF) {
                const Entry *e = single_entry(j, slot.entry);
                if (e->id == id && single_kind(e->group) == kind)
                    return at;
            } else {
                const Group *g = &j->groups[slot.entry - 1];
                if (g->id == id && g->kind == kind)
                    return at;
            }
        }
        at = (at + 1) & mask;
    }
}

/* Take out the slot that holds `ref` (a group's index + 1, or a single's reference). */
static void table_remove(Join *j, uint32_t hash, uint32_t ref)
{
    uint32_t mask = j->table_cap - 1, hole = hash & mask;
    while (j->table[hole].entry != ref)
        hole = (hole + 1) & mask;
    /* Backward-shift deletion keeps linear probing free of tombstones. */
    uint32_t at = hole;
    for (;;) {
        at = (at + 1) & mask;
        Slot slot = j->table[at];
        if (!slot.entry)
            break;
        uint32_t home = slot.hash & mask;
        if (((at - home) & mask) >= ((at - hole) & mask)) {
            j->table[hole] = slot;
            hole = at;
        }
    }
    j->table[hole].entry = 0;
    j->table_used--;
}

static int32_t new_group(Join *j)
{
    if (j->free_group >= 0) {
        int32_t index = j->free_group;
        j->free_group = (int32_t)j->groups[index].last_seq;
        return index;
    }
    if (j->ngroups == j->groups_cap) {
        uint32_t cap = j->groups_cap ? j->groups_cap * 2 : 1024;
        if (cap > MAX_GROUPS) /* an index + 1 must stay clear of SINGLE_REF */
            return -1;
        Group *grown = PyMem_RawRealloc(j->groups, (size_t)cap * sizeof *grown);
        if (!grown)
            return -1;
        j->groups = grown;
        if (j->keep_heads) {
            uint8_t *heads = PyMem_RawRealloc(j->heads, (size_t)cap * HEAD_SLOT);
            if (!heads)
                return -1;
            j->heads = heads;
        }
        if (j->journeys) {
            JHead *jheads = PyMem_RawRealloc(j->jheads, (size_t)cap * sizeof *jheads);
            if (!jheads)
                return -1;
            j->jheads = jheads;
        }
        if (j->ordinals) {
            uint32_t *ordinals =
                PyMem_RawRealloc(j->ordinals, (size_t)cap * INLINE_SIGHTINGS * sizeof *ordinals);
            if (!ordinals)
                return -1;
            j->ordinals = ordinals;
        }
        j->groups_cap = cap;
    }
    return (int32_t)j->ngroups++;
}

/* --------------------------------------------------- the window (FIFO) */
static int fifo_push(Join *j, const Entry *entry)
{
    if (j->fifo_len == j->fifo_cap) {
        size_t cap = j->fifo_cap ? j->fifo_cap * 2 : 4096;
        if (cap > SINGLE_REF)
            return -1;
        /* Grown in place (a large block is remapped, not copied: its pages stay, and no
         * new ones are touched before they are used). Every entry keeps its index modulo
         * the capacity, which a single's slot names it by: those whose index has the
         * old capacity's bit set move up by it. The ring is full: every position holds
         * one entry. */
        Entry *grown = PyMem_RawRealloc(j->fifo, cap * sizeof *grown);
        if (!grown)
            return -1;
        size_t old = j->fifo_cap;
        for (uint64_t k = j->fifo_first; k < j->fifo_first + j->fifo_len; k++)
            if (k & old)
                grown[(k & (old - 1)) + old] = grown[k & (old - 1)];
        j->fifo = grown;
        j->fifo_cap = cap;
    }
    j->fifo[(j->fifo_first + j->fifo_len) & (j->fifo_cap - 1)] = *entry;
    j->fifo_len++;
    if (j->fifo_len > j->held_high_water)
        j->held_high_water = j->fifo_len;
    return 0;
}

#define EXPIRE_AHEAD 8

/* A key seen once leaves the window: what a group of one sighting would leave to do.
 * No clock bound, no mark (one capture point); a journey of one sighting that did not
 * leave a host (singles never did, with journeys) only tells when its host was seen. */
static void close_single(Join *j, const Entry *e, uint64_t index)
{
    JState *r = j->journeys;
    uint8_t kind = single_kind(e->group);
    if (r && kind == KIND_PACKET)
        jr_saw(r->lone_first, r->lone_last, r->lone_seen, r->lone_inbound, e->seen.host,
               host_time(j, &e->seen), e->seen.dir);
    if (!j->closing_all)
        table_remove(j, id_hash(e->id, kind), SINGLE_REF | (uint32_t)(index & ~SINGLE_REF));
}

/* Close every key whose latest sighting is older than `before` (all with `all`). */
static void expire(Join *j, int64_t before, int all)
{
    uint64_t mask = j->fifo_cap - 1;
    while (j->fifo_len) {
        Entry *e = &j->fifo[j->fifo_first & mask];
        if (!all && e->seen.aligned >= before)
            break;
        Entry entry = *e;
        uint64_t index = j->fifo_first++;
        j->fifo_len--;
        if (j->fifo_len > EXPIRE_AHEAD) {
            /* What this loop reaches a few turns later: two seconds old, not cached. */
            const Entry *ahead = &j->fifo[(j->fifo_first + EXPIRE_AHEAD) & mask];
            if (is_single(ahead->group)) {
                __builtin_prefetch(&j->table[id_hash(ahead->id, single_kind(ahead->group)) &
                                             (j->table_cap - 1)]);
            } else if (ahead->group != SUPERSEDED) {
                __builtin_prefetch(&j->groups[ahead->group]);
                if (j->jheads) /* what journeys read of it when it closes */
                    __builtin_prefetch(&j->jheads[ahead->group]);
            }
        }
        if (is_single(entry.group))
            close_single(j, &entry, index);
        else if (entry.group != SUPERSEDED && j->groups[entry.group].last_seq == entry.seq)
            close_group(j, entry.group);
    }
}

/* Whether a key's first sighting may stay a single: unless its group would keep the
 * head's bytes (matches kept, or a receiver's filter to run) or a journey head (a packet
 * leaving a host), all a group's first sighting holds is in the entry. */
static inline int may_be_single(const Join *j, uint8_t kind, uint8_t dir)
{
    if (kind == KIND_EXCHANGE)
        return 1;
    return !j->keep_heads && !(j->journeys && dir == DIR_OUT);
}

/* The second sighting of a single's key: the group it would have been all along. */
static int32_t group_from_single(Join *j, Entry *e)
{
    int32_t index = new_group(j);
    if (index < 0)
        return -1;
    Group *g = &j->groups[index];
    memset(g, 0, sizeof *g);
    g->id = e->id;
    g->kind = single_kind(e->group);
    g->copies = 1;
    g->questions = e->seen.role == ROLE_QUESTION;
    g->answers = e->seen.role == ROLE_ANSWER;
    g->held = 1;
    g->inline_[0] = e->seen;
    if (j->ordinals)
        j->ordinals[(size_t)index * INLINE_SIGHTINGS] = e->seq; /* the ordinal */
    e->group = SUPERSEDED; /* (the second sighting's entry is the group's latest) */
    return index;
}

static void add_sighting(Join *j, uint64_t id, uint8_t kind, uint32_t hash, Sighting seen,
                         const Pending *p)
{
    if ((j->table_used + 1) * 2 > j->table_cap && table_grow(j) < 0) {
        j->failed = 1;
        return;
    }
    uint32_t slot = table_slot(j, id, kind, hash), ref = j->table[slot].entry;
    int32_t index;
    if (!ref && may_be_single(j, kind, seen.dir)) {
        uint64_t at = j->fifo_first + j->fifo_len;
        Entry entry = {seen, id, (uint32_t)p->ordinal,
                       kind == KIND_PACKET ? SINGLE_PACKET : SINGLE_EXCHANGE};
        if (fifo_push(j, &entry) < 0) {
            j->failed = 1;
            return;
        }
        j->table[slot].hash = hash;
        j->table[slot].entry = SINGLE_REF | (uint32_t)(at & ~SINGLE_REF);
        j->table_used++;
        return;
    }
    if (ref & SINGLE_REF) {
        index = group_from_single(j, single_entry(j, ref));
        if (index < 0) {
            j->failed = 1;
            return;
        }
        j->table[slot].entry = (uint32_t)index + 1;
    } else if (ref) {
        index = (int32_t)ref - 1;
    } else {
        index = new_group(j);
        if (index < 0) {
            j->failed = 1;
            return;
        }
        Group *fresh = &j->groups[index];
        memset(fresh, 0, sizeof *fresh);
        fresh->id = id;
        fresh->kind = kind;
        if (j->keep_heads && kind == KIND_PACKET) {
            uint8_t *slot = j->heads + (size_t)index * HEAD_SLOT;
            slot[0] = (uint8_t)p->head_len;
            slot[1] = (uint8_t)(p->head_len >> 8);
            slot[2] = (uint8_t)p->linktype;
            slot[3] = (uint8_t)(p->linktype >> 8);
            memcpy(slot + 4, p->head, p->head_len);
        }
        j->table[slot].hash = hash;
        j->table[slot].entry = (uint32_t)index + 1;
        j->table_used++;
    }
    Group *g = &j->groups[index];
    /* Only a packet that left a host has legs: its journey head is written then (most
     * groups never need theirs, and pages never written are never the process's). */
    if (j->journeys && kind == KIND_PACKET && seen.dir == DIR_OUT && !g->has_jhead) {
        j->jheads[index] = p->jhead;
        g->has_jhead = 1;
    }
    /* Counts saturate: past max_copies only "more than max_copies" matters. */
    g->copies += g->copies < UINT16_MAX;
    g->questions += seen.role == ROLE_QUESTION && g->questions < UINT8_MAX;
    g->answers += seen.role == ROLE_ANSWER && g->answers < UINT8_MAX;
    /* Past max_copies the key is ambiguous and skipped: its sightings need not be kept. */
    int ambiguous = kind == KIND_PACKET
                        ? g->copies > j->max_copies
                        : g->questions > j->max_copies || g->answers > j->max_copies;
    if (g->held && sightings_of(g)[0].host != seen.host)
        j->shared_seen = 1;
    if (!ambiguous && g->held < j->max_held) {
        if (g->held == INLINE_SIGHTINGS && !g->more) {
            /* The sightings, then their ordinals (ordinals_of). */
            g->more = PyMem_RawMalloc(j->max_held * (sizeof(Sighting) + 4));
            if (!g->more) {
                j->failed = 1;
                return;
            }
            memcpy(g->more, g->inline_, sizeof g->inline_);
            if (j->ordinals)
                memcpy(g->more + j->max_held, j->ordinals + (size_t)index * INLINE_SIGHTINGS,
                       INLINE_SIGHTINGS * 4);
        }
        if (j->ordinals)
            ordinals_of(j, g, (uint32_t)index)[g->held] = (uint32_t)p->ordinal;
        sightings_of(g)[g->held++] = seen;
    }
    g->last_seq = ++j->seq;
    Entry entry = {seen, 0, g->last_seq, (uint32_t)index};
    if (fifo_push(j, &entry) < 0)
        j->failed = 1;
}

/* A sighting on its way into the table: its key's slot and group are fetched from
 * memory PIPELINE sightings ahead of their use, which is what the join waits for most
 * (the table and the groups are megabytes, touched at random). The order of the
 * sightings does not change. */
static void prefetch_slot(Join *j, uint32_t hash)
{
    __builtin_prefetch(&j->table[hash & (j->table_cap - 1)]);
}

static void prefetch_group(Join *j, uint32_t hash)
{
    Slot slot = j->table[hash & (j->table_cap - 1)];
    if (slot.entry && slot.hash == hash)
        __builtin_prefetch(slot.entry & SINGLE_REF ? (const void *)single_entry(j, slot.entry)
                                                   : (const void *)&j->groups[slot.entry - 1]);
}

#define MARKS_FLUSH_EVERY 4096 /* packets between two looks at what can be written */

static void join_process(Join *j, const Pending *p)
{
    j->processed[p->host] = p->ordinal + 1;
    if (p->in_time) {
        if (!j->any || p->aligned > j->now)
            j->now = p->aligned;
        j->any = 1;
    }
    if (j->marks)
        marks_take(j, p->host, p->ordinal);
    if (!p->in_time)
        return;
    expire(j, j->now - j->window, 0);
    if (j->marks && ++j->marks_since_flush >= MARKS_FLUSH_EVERY) {
        j->marks_since_flush = 0;
        marks_flush(j, 0);
    }
    if (!p->identified)
        return;
    Sighting seen = {p->aligned, p->host, p->dir, ROLE_NONE, p->iface};
    add_sighting(j, p->packet_id, KIND_PACKET, p->packet_hash, seen, p);
    if (p->role != ROLE_NONE) {
        seen.role = p->role;
        add_sighting(j, p->exchange_id, KIND_EXCHANGE, p->exchange_hash, seen, p);
    }
}

static void join_drain(Join *j)
{
    for (unsigned i = 0; i < j->pending_len; i++)
        join_process(j, &j->pending[(j->pending_head + i) % PIPELINE]);
    j->pending_head = j->pending_len = 0;
}

/* epb_flags (option 2): bits 0-1 the direction; 0 when absent. */
static uint8_t epb_direction(const uint8_t *block, uint32_t blen, uint32_t cap)
{
    uint8_t dir = 0;
    size_t at = 28 + (((size_t)cap + 3) & ~(size_t)3), end = (size_t)blen - 4;
    while (at + 4 <= end) {
        unsigned code = block[at] | block[at + 1] << 8, len = block[at + 2] | block[at + 3] << 8;
        if (code == 0 || at + 4 + len > end)
            break;
        if (code == 2 && len == 4)
            dir = block[at + 4] & 3;
        at += 4 + ((len + 3u) & ~3u);
    }
    return dir;
}

/* One packet, in order of aligned time: the Merger's hook. */
static void join_take(Join *j, Py_ssize_t host, const uint8_t *block, uint32_t blen,
                      uint32_t out_id, uint64_t aligned)
{
    j->sightings++;
    Pending *p;
    if (j->pending_len == PIPELINE) {
        p = &j->pending[j->pending_head];
        join_process(j, p); /* the oldest goes in; its place takes the newest */
        j->pending_head = (j->pending_head + 1) % PIPELINE;
    } else {
        p = &j->pending[(j->pending_head + j->pending_len++) % PIPELINE];
    }
    /* Past 2^62 ns (the year 2116) a time is damage: aligned and host times must stay
     * far inside int64. join.LATEST_NS says the same to the Python engine. */
    p->in_time = aligned <= LATEST_NS;
    p->aligned = (int64_t)aligned;
    p->host = (uint32_t)host;
    p->ordinal = j->taken[host]++;
    uint32_t cap = get_le32(block + 20);
    Identity id;
    p->identified = p->in_time && (Py_ssize_t)out_id < j->nlinktypes &&
                    identify(j->linktypes[out_id], block + 28, cap, &id);
    if (p->identified) {
        j->identified++;
        p->dir = epb_direction(block, blen, cap);
        p->iface = out_id > UINT16_MAX ? UINT16_MAX : (uint16_t)out_id;
        if (j->keep_matches) {
            p->linktype = j->linktypes[out_id];
            p->head_len = (uint16_t)(cap < HEAD_BYTES ? cap : HEAD_BYTES);
            if (j->keep_heads)
                memcpy(p->head, block + 28, p->head_len);
            if (j->journeys) {
                JHead *h = &p->jhead;
                h->parsed = (uint8_t)jr_parse(p->linktype, block + 28, p->head_len, &h->src,
                                              &h->dst, &h->proto, &h->sport, &h->dport);
            }
        }
        p->packet_id = key_id(id.packet, id.packet_len);
        p->packet_hash = id_hash(p->packet_id, KIND_PACKET);
        prefetch_slot(j, p->packet_hash);
        p->role = (uint8_t)id.role;
        if (id.role != ROLE_NONE) {
            p->exchange_id = key_id(id.exchange, id.exchange_len);
            p->exchange_hash = id_hash(p->exchange_id, KIND_EXCHANGE);
            prefetch_slot(j, p->exchange_hash);
        }
    }
    if (j->pending_len > PIPELINE / 2) {
        const Pending *half = &j->pending[(j->pending_head + j->pending_len - 1 - PIPELINE / 2) %
                                          PIPELINE];
        if (half->identified) {
            prefetch_group(j, half->packet_hash);
            if (half->role != ROLE_NONE)
                prefetch_group(j, half->exchange_hash);
        }
    }
}

/* ------------------------------------------------------------ its methods */
/* A file named by a Python path (str, bytes or os.PathLike), opened with `mode`; NULL
 * with OSError set, naming it. (The join's marks files, and the merge's.) */
static FILE *open_path(PyObject *name, const char *mode)
{
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(name, &path))
        return NULL;
    FILE *f = fopen(PyBytes_AS_STRING(path), mode);
    Py_DECREF(path);
    if (!f)
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
    return f;
}

/* `marks`: one path per host, where its packet marks go (merge/packet_ids.py reads them). */
static int open_marks(Join *self, PyObject *marks)
{
    PyObject *seq = PySequence_Fast(marks, "marks must be a sequence of paths");
    if (!seq)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != self->hosts) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "marks needs one path per host");
        return -1;
    }
    self->marks = PyMem_RawCalloc((size_t)self->hosts + 1, sizeof(HostMarks));
    if (!self->marks) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    self->marks_horizon = (int64_t)(self->max_copies + 1) * self->window;
    for (Py_ssize_t h = 0; h < self->hosts; h++) {
        FILE *out = open_path(PySequence_Fast_GET_ITEM(seq, h), "wb");
        if (!out) {
            Py_DECREF(seq);
            return -1;
        }
        setvbuf(out, NULL, _IOFBF, 1 << 16);
        self->marks[h].out = out;
    }
    Py_DECREF(seq);
    return 0;
}

/* Every mark written, every marks file closed: 0, or -1 when one was not written. */
static int close_marks(Join *self)
{
    int failed = 0;
    if (!self->marks)
        return 0;
    for (Py_ssize_t h = 0; h < self->hosts; h++) {
        HostMarks *m = &self->marks[h];
        if (m->out && fclose(m->out) != 0)
            failed = 1;
        m->out = NULL;
        PyMem_RawFree(m->slots);
        PyMem_RawFree(m->cp_ordinal);
        PyMem_RawFree(m->cp_now);
        m->slots = NULL;
        m->cp_ordinal = NULL;
        m->cp_now = NULL;
        m->len = m->cap = m->cp_len = m->cp_cap = 0;
    }
    return failed ? -1 : 0;
}

static int Join_init(Join *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"priors",        "keep_matches",   "window_ns",
                             "max_copies",    "samples",        "floor_buckets",
                             "floor_start_ns", "marks",         NULL};
    PyObject *priors, *marks = Py_None;
    int keep = 0;
    /* Out of range until given: all five are required (constraints.py has the values). */
    long long window = -1, floor_start = 0;
    unsigned int max_copies = 0, samples = 0, buckets = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p$LIIILO", kwlist, &priors, &keep, &window,
                                     &max_copies, &samples, &buckets, &floor_start, &marks))
        return -1;
    if (window < 0 || max_copies < 1 || max_copies > MAX_COPIES_LIMIT || samples < 1 ||
        buckets < 2 || buckets % 2 || floor_start < 1) {
        PyErr_SetString(PyExc_ValueError, "Join needs window_ns, max_copies, samples, "
                                          "floor_buckets (even) and floor_start_ns, in range");
        return -1;
    }
    if (self->priors) {
        PyErr_SetString(PyExc_RuntimeError, "Join already initialised");
        return -1;
    }
    PyObject *seq = PySequence_Fast(priors, "priors must be a sequence of ints");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    self->priors = PyMem_RawCalloc((size_t)n + 1, sizeof(int64_t));
    self->pairs = PyMem_RawCalloc((size_t)n * (size_t)n * 2 + 1, sizeof(PairSummary *));
    if (!self->priors || !self->pairs) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        self->priors[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (self->priors[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    self->hosts = n;
    self->free_group = -1;
    self->keep_matches = keep;
    self->keep_heads = keep;
    self->window = window;
    self->max_copies = max_copies;
    self->max_held = 2 * max_copies;
    self->samples = samples;
    self->floor_buckets = buckets;
    self->floor_start = floor_start;
    if (pthread_mutex_init(&self->closer.lock, NULL) != 0 ||
        pthread_cond_init(&self->closer.more, NULL) != 0 ||
        pthread_cond_init(&self->closer.room, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "Join: no thread synchronisation");
        return -1;
    }
    self->closer.sync_ready = 1;
    self->taken = PyMem_RawCalloc((size_t)n + 1, sizeof(uint64_t));
    self->processed = PyMem_RawCalloc((size_t)n + 1, sizeof(uint64_t));
    if (!self->taken || !self->processed) {
        PyErr_NoMemory();
        return -1;
    }
    if (marks != Py_None && open_marks(self, marks) < 0)
        return -1;
    if (keep || self->marks) {
        self->ordinals = PyMem_RawMalloc(INLINE_SIGHTINGS * sizeof(uint32_t));
        if (!self->ordinals) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return table_grow(self) < 0 ? (PyErr_NoMemory(), -1) : 0;
}

static void Join_dealloc(Join *self)
{
    closer_stop(self);
    PyMem_RawFree(self->closer.ring);
    if (self->closer.sync_ready) {
        pthread_mutex_destroy(&self->closer.lock);
        pthread_cond_destroy(&self->closer.more);
        pthread_cond_destroy(&self->closer.room);
    }
    if (self->pairs)
        for (Py_ssize_t i = 0; i < self->hosts * self->hosts * 2; i++)
            PyMem_RawFree(self->pairs[i]);
    for (uint32_t i = 0; i < self->ngroups; i++)
        PyMem_RawFree(self->groups[i].more);
    PyMem_RawFree(self->pairs);
    PyMem_RawFree(self->priors);
    PyMem_RawFree(self->linktypes);
    PyMem_RawFree(self->groups);
    PyMem_RawFree(self->heads);
    PyMem_RawFree(self->jheads);
    PyMem_RawFree(self->table);
    PyMem_RawFree(self->fifo);
    PyMem_RawFree(self->matches);
    jr_free(self->journeys);
    PyMem_RawFree(self->file_index);
    close_marks(self);
    PyMem_RawFree(self->marks);
    PyMem_RawFree(self->ordinals);
    PyMem_RawFree(self->taken);
    PyMem_RawFree(self->processed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Output interface `out_id` has `linktype`: the table (one entry per output interface,
 * UINT32_MAX for none yet: not identified) grows as needed. -1 with an exception set. */
static int set_linktype(uint32_t **linktypes, Py_ssize_t *n, Py_ssize_t out_id,
                        unsigned int linktype)
{
    if (out_id < 0 || out_id > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "interface id out of range");
        return -1;
    }
    if (out_id >= *n) {
        uint32_t *grown = PyMem_RawRealloc(*linktypes, ((size_t)out_id + 1) * sizeof *grown);
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = *n; i <= out_id; i++)
            grown[i] = UINT32_MAX;
        *linktypes = grown;
        *n = out_id + 1;
    }
    (*linktypes)[out_id] = linktype;
    return 0;
}

static PyObject *Join_add_interface(Join *self, PyObject *args)
{
    Py_ssize_t out_id;
    unsigned int linktype;
    int file_index = -1;
    if (!PyArg_ParseTuple(args, "nI|i", &out_id, &linktype, &file_index))
        return NULL;
    if (set_linktype(&self->linktypes, &self->nlinktypes, out_id, linktype) < 0)
        return NULL;
    if (file_index >= 0 && out_id <= UINT16_MAX) {
        if (out_id >= self->nfile_index) {
            uint16_t *grown =
                PyMem_RawRealloc(self->file_index, ((size_t)out_id + 1) * sizeof *grown);
            if (!grown)
                return PyErr_NoMemory();
            for (Py_ssize_t i = self->nfile_index; i <= out_id; i++)
                grown[i] = (uint16_t)i; /* unnamed: itself, as join.py's file_index.get */
            self->file_index = grown;
            self->nfile_index = out_id + 1;
        }
        self->file_index[out_id] = (uint16_t)(file_index > UINT16_MAX ? UINT16_MAX : file_index);
    }
    Py_RETURN_NONE;
}

static PyObject *Join_finish(Join *self, PyObject *Py_UNUSED(ignored))
{
    join_drain(self);
    self->closing_all = 1;
    expire(self, 0, 1);
    self->closing_all = 0;
    closer_stop(self);
    memset(self->table, 0, (size_t)self->table_cap * sizeof *self->table);
    self->table_used = 0;
    if (self->marks && !self->failed)
        marks_flush(self, 1);
    if (close_marks(self) < 0 && !self->failed)
        self->failed = 2;
    if (self->failed == 2)
        return PyErr_Format(PyExc_OSError, "packet marks: a file could not be written");
    if (self->failed)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Join_matches(Join *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyBytes_FromStringAndSize((const char *)self->matches,
                                              (Py_ssize_t)self->matches_len);
    if (out)
        self->matches_len = 0;
    return out;
}

static PyObject *time_pairs(const TimePair *values, const uint8_t *used, size_t n)
{
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (used && !used[i])
            continue;
        PyObject *item = Py_BuildValue("(LL)", (long long)values[i].from, (long long)values[i].to);
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

static PyObject *Join_pairs(Join *self, PyObject *Py_UNUSED(ignored))
{
    closer_stop(self); /* (finish() did: what the closer keeps is read after it) */
    PyObject *result = PyList_New(0);
    if (!result)
        return NULL;
    for (Py_ssize_t slot = 0; slot < self->hosts * self->hosts * 2; slot++) {
        PairSummary *s = self->pairs[slot];
        if (!s)
            continue;
        Py_ssize_t pair = slot / 2;
        PyObject *samples = time_pairs(s->samples, NULL, s->nsamples);
        PyObject *floor =
            samples ? time_pairs(s->floor, s->floor_used, self->floor_buckets) : NULL;
        PyObject *item = floor ? Py_BuildValue("(nniKNN)", pair / self->hosts,
                                               pair % self->hosts, (int)(slot % 2),
                                               (unsigned long long)s->count, samples, floor)
                               : NULL;
        if (!item) {
            Py_XDECREF(samples);
            Py_XDECREF(floor);
            Py_DECREF(result);
            return NULL;
        }
        if (PyList_Append(result, item) < 0) {
            Py_DECREF(item);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(item);
    }
    return result;
}


static void jr_free(JState *r)
{
    if (!r)
        return;
    for (uint32_t i = 0; i < r->nflows; i++) {
        PyMem_RawFree(r->flows[i].exact);
        PyMem_RawFree(r->flows[i].counts);
        PyMem_RawFree(r->flows[i].examples);
    }
    for (Py_ssize_t i = 0; i < r->hosts; i++) {
        PyMem_RawFree(r->residence[i]);
        PyMem_RawFree(r->ether[i].code);
        PyMem_RawFree(r->raw[i].code);
    }
    for (Py_ssize_t i = 0; i < r->hosts * r->hosts; i++)
        PyMem_RawFree(r->pairs[i]);
    PyMem_RawFree(r->flows);
    PyMem_RawFree(r->flow_table);
    PyMem_RawFree(r->addrs);
    PyMem_RawFree(r->addr_host);
    PyMem_RawFree(r->addr_table);
    PyMem_RawFree(r->declared);
    PyMem_RawFree(r->inbound_flag);
    PyMem_RawFree(r->ether);
    PyMem_RawFree(r->raw);
    PyMem_RawFree(r->first);
    PyMem_RawFree(r->last);
    PyMem_RawFree(r->seen);
    PyMem_RawFree(r->inbound);
    PyMem_RawFree(r->lone_first);
    PyMem_RawFree(r->lone_last);
    PyMem_RawFree(r->lone_seen);
    PyMem_RawFree(r->lone_inbound);
    PyMem_RawFree(r->residence);
    PyMem_RawFree(r->pairs);
    PyMem_RawFree(r);
}

static int jr_program(PyObject *obj, JProgram *prog)
{
    if (obj == Py_None)
        return 0;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view.len % 8 || !view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "a filter program is 8-byte instructions");
        return -1;
    }
    prog->code = PyMem_RawMalloc((size_t)view.len);
    if (!prog->code) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(prog->code, view.buf, (size_t)view.len);
    prog->len = (uint32_t)(view.len / 8);
    PyBuffer_Release(&view);
    return 0;
}

static int jr_addr(PyObject *obj, JAddr *a)
{
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(obj, &buf, &len) < 0)
        return -1;
    if (len != 4 && len != 16) {
        PyErr_SetString(PyExc_ValueError, "an address is 4 or 16 bytes");
        return -1;
    }
    memset(a, 0, sizeof *a);
    a->len = (uint8_t)len;
    memcpy(a->bytes, buf, (size_t)len);
    return 0;
}

static PyObject *Join_journeys_setup(Join *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"hosts", "samples", "examples", "exact", "buckets", "seed", NULL};
    PyObject *hosts;
    unsigned int samples = 0, examples = 0, exact = 0, buckets = 0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O$IIIIK", kwlist, &hosts, &samples,
                                     &examples, &exact, &buckets, &seed))
        return NULL;
    if (!self->keep_matches || self->journeys || self->sightings || samples < 1 || exact < 1 || buckets < 2 ||
        buckets % 2) {
        PyErr_SetString(PyExc_ValueError, "journeys_setup: once, on a Join that keeps "
                                          "matches; samples, exact >= 1, buckets even");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(hosts, "hosts must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != self->hosts) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "journeys_setup: one entry per host");
        return NULL;
    }
    JState *r = PyMem_RawCalloc(1, sizeof *r);
    if (!r) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    size_t hn = (size_t)n + 1;
    r->hosts = n;
    r->samples = samples;
    r->examples = examples;
    r->exact = exact;
    r->buckets = buckets;
    r->rng = seed;
    r->declared = PyMem_RawCalloc(hn, 1);
    r->inbound_flag = PyMem_RawCalloc(hn, 1);
    r->ether = PyMem_RawCalloc(hn, sizeof(JProgram));
    r->raw = PyMem_RawCalloc(hn, sizeof(JProgram));
    r->first = PyMem_RawCalloc(hn, sizeof(int64_t));
    r->last = PyMem_RawCalloc(hn, sizeof(int64_t));
    r->seen = PyMem_RawCalloc(hn, 1);
    r->inbound = PyMem_RawCalloc(hn, sizeof(uint64_t));
    r->lone_first = PyMem_RawCalloc(hn, sizeof(int64_t));
    r->lone_last = PyMem_RawCalloc(hn, sizeof(int64_t));
    r->lone_seen = PyMem_RawCalloc(hn, 1);
    r->lone_inbound = PyMem_RawCalloc(hn, sizeof(uint64_t));
    r->residence = PyMem_RawCalloc(hn, sizeof(JResidence *));
    r->pairs = PyMem_RawCalloc(hn * hn, sizeof(JPair *));
    if (!r->declared || !r->inbound_flag || !r->ether || !r->raw || !r->first || !r->last ||
        !r->seen || !r->inbound || !r->lone_first || !r->lone_last || !r->lone_seen ||
        !r->lone_inbound || !r->residence || !r->pairs ||
        addr_table_grow(r) < 0 || flow_table_grow(r) < 0) {
        Py_DECREF(seq);
        jr_free(r);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t h = 0; h < n; h++) {
        PyObject *addresses, *ether, *raw;
        int flag;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, h), "OiOO", &addresses, &flag,
                              &ether, &raw))
            goto fail;
        r->inbound_flag[h] = (int8_t)(flag < 0 ? -1 : flag != 0);
        if (jr_program(ether, &r->ether[h]) < 0 || jr_program(raw, &r->raw[h]) < 0)
            goto fail;
        PyObject *list = PySequence_Fast(addresses, "addresses must be a sequence");
        if (!list)
            goto fail;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(list); i++) {
            JAddr a;
            if (jr_addr(PySequence_Fast_GET_ITEM(list, i), &a) < 0 ||
                owner_set(r, &a, (int32_t)h, 0) < 0) {
                Py_DECREF(list);
                if (!PyErr_Occurred())
                    PyErr_NoMemory();
                goto fail;
            }
            r->declared[h] = 1;
        }
        Py_DECREF(list);
    }
    Py_DECREF(seq);
    self->journeys = r;
    /* The heads' bytes only when a receiver has a filter to run on them. */
    self->keep_heads = 0;
    for (Py_ssize_t h = 0; h < n; h++)
        self->keep_heads |= r->ether[h].code || r->raw[h].code;
    Py_RETURN_NONE;
fail:
    Py_DECREF(seq);
    jr_free(r);
    return NULL;
}

static PyObject *opt_time(int has, int64_t t)
{
    return has ? PyLong_FromLongLong(t) : Py_NewRef(Py_None);
}

static PyObject *port(int32_t p) { return p < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(p); }

/* Append Py_BuildValue(...) to list, stealing; -1 on failure. */
static int append_new(PyObject *list, PyObject *item)
{
    if (!item)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* Everything journeys.py's result() needs, after finish(). */
static PyObject *Join_journeys_state(Join *self, PyObject *Py_UNUSED(ignored))
{
    closer_stop(self);
    JState *r = self->journeys;
    if (!r) {
        PyErr_SetString(PyExc_RuntimeError, "no journeys_setup");
        return NULL;
    }
    Py_ssize_t n = r->hosts;
    /* The singles' spans join the groups' (once: they are cleared as they are added). */
    for (Py_ssize_t h = 0; h < n; h++) {
        if (r->lone_seen[h]) {
            jr_saw(r->first, r->last, r->seen, r->inbound, (uint32_t)h, r->lone_first[h], 0);
            jr_saw(r->first, r->last, r->seen, r->inbound, (uint32_t)h, r->lone_last[h], 0);
        }
        r->inbound[h] += r->lone_inbound[h];
        r->lone_seen[h] = 0;
        r->lone_inbound[h] = 0;
    }
    PyObject *out = PyDict_New(), *first = PyList_New(0), *last = PyList_New(0),
             *inbound = PyList_New(0), *owner = PyList_New(0), *pairs = PyList_New(0),
             *flows = PyList_New(0), *residence = PyList_New(0);
    if (!out || !first || !last || !inbound || !owner || !pairs || !flows || !residence)
        goto fail;
    for (Py_ssize_t h = 0; h < n; h++) {
        if (append_new(first, opt_time(r->seen[h], r->first[h])) < 0 ||
            append_new(last, opt_time(r->seen[h], r->last[h])) < 0 ||
            append_new(inbound, PyLong_FromUnsignedLongLong(r->inbound[h])) < 0)
            goto fail;
        JResidence *held = r->residence[h];
        if (held) {
            PyObject *samples = PyList_New(held->nsamples);
            if (!samples)
                goto fail;
            for (uint32_t i = 0; i < held->nsamples; i++)
                PyList_SET_ITEM(samples, i, PyLong_FromLongLong(held->samples[i]));
            if (append_new(residence, Py_BuildValue("(nKNL)", h, (unsigned long long)held->count,
                                                    samples, (long long)held->max)) < 0)
                goto fail;
        }
    }
    for (uint32_t i = 0; i < r->naddrs; i++)
        if (append_new(owner, Py_BuildValue("(y#i)", r->addrs[i].bytes,
                                            (Py_ssize_t)r->addrs[i].len, r->addr_host[i])) < 0)
            goto fail;
    for (Py_ssize_t slot = 0; slot < n * n; slot++) {
        JPair *p = r->pairs[slot];
        if (!p)
            continue;
        /* (t_send, t_recv) int64 pairs as bytes: 16 bytes a sample, not two Python ints. */
        PyObject *samples = PyBytes_FromStringAndSize((const char *)p->samples,
                                                      (Py_ssize_t)p->nsamples * 16);
        if (!samples)
            goto fail;
        if (append_new(pairs, Py_BuildValue("(nnKKN(LL))", slot / n, slot % n,
                                            (unsigned long long)p->arrived,
                                            (unsigned long long)p->duplicated, samples,
                                            (long long)p->widest.from,
                                            (long long)p->widest.to)) < 0)
            goto fail;
    }
    for (uint32_t i = 0; i < r->nflows; i++) {
        JFlow *f = &r->flows[i];
        PyObject *exact = PyList_New(f->nexact), *hist, *examples = PyList_New(0);
        if (!exact || !examples) {
            Py_XDECREF(exact);
            Py_XDECREF(examples);
            goto fail;
        }
        for (uint32_t k = 0; k < f->nexact; k++)
            PyList_SET_ITEM(exact, k, PyLong_FromLongLong(f->exact[k]));
        if (f->counts) {
            PyObject *counts = PyList_New(r->buckets);
            if (!counts) {
                Py_DECREF(exact);
                Py_DECREF(examples);
                goto fail;
            }
            for (uint32_t k = 0; k < r->buckets; k++)
                PyList_SET_ITEM(counts, k, PyLong_FromUnsignedLongLong(f->counts[k]));
            hist = Py_BuildValue("(LLN)", (long long)f->origin, (long long)f->width, counts);
        } else {
            hist = Py_NewRef(Py_None);
        }
        for (uint32_t k = 0; k < f->nexamples && hist; k++) {
            JExample *e = &f->examples[k];
            if (append_new(examples, Py_BuildValue("(Ly#iNN)", (long long)e->t_send, e->src.bytes,
                                                   (Py_ssize_t)e->src.len, (int)e->proto,
                                                   port(e->sport), port(e->dport))) < 0) {
                Py_CLEAR(hist);
            }
        }
        if (!hist) {
            Py_DECREF(exact);
            Py_DECREF(examples);
            goto fail;
        }
        if (append_new(flows, Py_BuildValue("(ny#NKNNN)", (Py_ssize_t)f->sender, f->dst.bytes,
                                            (Py_ssize_t)f->dst.len,
                                            opt_time(f->has_latest, f->latest_sent),
                                            (unsigned long long)f->reordered, exact, hist,
                                            examples)) < 0)
            goto fail;
    }
    if (PyDict_SetItemString(out, "first", first) < 0 ||
        PyDict_SetItemString(out, "last", last) < 0 ||
        PyDict_SetItemString(out, "inbound", inbound) < 0 ||
        PyDict_SetItemString(out, "owner", owner) < 0 ||
        PyDict_SetItemString(out, "pairs", pairs) < 0 ||
        PyDict_SetItemString(out, "flows", flows) < 0 ||
        PyDict_SetItemString(out, "residence", residence) < 0)
        goto fail;
    Py_DECREF(first);
    Py_DECREF(last);
    Py_DECREF(inbound);
    Py_DECREF(owner);
    Py_DECREF(pairs);
    Py_DECREF(flows);
    Py_DECREF(residence);
    return out;
fail:
    Py_XDECREF(out);
    Py_XDECREF(first);
    Py_XDECREF(last);
    Py_XDECREF(inbound);
    Py_XDECREF(owner);
    Py_XDECREF(pairs);
    Py_XDECREF(flows);
    Py_XDECREF(residence);
    if (!PyErr_Occurred())
        PyErr_NoMemory();
    return NULL;
}

static PyObject *Join_stats(Join *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{s:K,s:K,s:n,s:n,s:K,s:K,s:n,s:K,s:i}", "sightings", self->sightings,
                         "identified", self->identified, "held_high_water",
                         (Py_ssize_t)self->held_high_water, "held", (Py_ssize_t)self->fifo_len,
                         "marked_packets", self->marked_packets, "late_marks", self->late_marks,
                         "marks_high_water", (Py_ssize_t)self->marks_high_water, "shared_groups",
                         self->shared_groups, "shared_seen", self->shared_seen);
}

static PyMethodDef Join_methods[] = {
    {"add_interface", (PyCFunction)Join_add_interface, METH_VARARGS,
     "add_interface(out_id, linktype): the link type of an output interface id."},
    {"finish", (PyCFunction)Join_finish, METH_NOARGS,
     "finish(): close every group still open (the inputs ended)."},
    {"matches", (PyCFunction)Join_matches, METH_NOARGS,
     "matches() -> bytes: the match records kept since the last call (keep_matches)."},
    {"pairs", (PyCFunction)Join_pairs, METH_NOARGS,
     "pairs() -> [(from, to, kind, count, samples, floor)]: each ordered host pair's "
     "summary; kind 0 same packet, 1 answer; samples and floor are (t_from, t_to) lists."},
    {"stats", (PyCFunction)Join_stats, METH_NOARGS,
     "stats() -> dict: sightings, identified, held, held_high_water, marked_packets, "
     "late_marks, marks_high_water, shared_groups, shared_seen."},
    {"journeys_setup", (PyCFunction)(void (*)(void))Join_journeys_setup,
     METH_VARARGS | METH_KEYWORDS,
     "journeys_setup(hosts, *, samples, examples, exact, buckets, seed): keep the journeys "
     "in C (follow/journeys.py) instead of match records; hosts: per host (declared "
     "addresses, captures inbound -1/0/1, ether program, raw program)."},
    {"journeys_state", (PyCFunction)Join_journeys_state, METH_NOARGS,
     "journeys_state() -> dict: what the journeys kept (after finish())."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject JoinType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xdpcap.orchestrator._fastmerge.Join",
    .tp_basicsize = sizeof(Join),
    .tp_dealloc = (destructor)Join_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Join(priors, keep_matches, *, window_ns, max_copies, samples, floor_buckets, "
              "floor_start_ns): the clock alignment's streaming join; a Merger given it "
              "feeds it (see orchestrator/follow/join.py).",
    .tp_methods = Join_methods,
    .tp_init = (initproc)Join_init,
    .tp_new = PyType_GenericNew,
};

PyDoc_STRVAR(identify_doc,
"identify(linktype, frame) -> (packet, question, answer) | None\n--\n\n"
"merge.identity.identify's keys, computed in C (tests compare the two).");

static PyObject *py_identify(PyObject *Py_UNUSED(module), PyObject *args)
{
    unsigned int linktype;
    Py_buffer frame;
    if (!PyArg_ParseTuple(args, "Iy*", &linktype, &frame))
        return NULL;
    Identity id;
    int ok = identify(linktype, frame.buf, (size_t)frame.len, &id);
    PyBuffer_Release(&frame);
    if (!ok)
        Py_RETURN_NONE;
    const char *exchange = (const char *)id.exchange;
    Py_ssize_t size = (Py_ssize_t)id.packet_len, xsize = (Py_ssize_t)id.exchange_len;
    if (id.role == ROLE_QUESTION)
        return Py_BuildValue("(y#y#O)", id.packet, size, exchange, xsize, Py_None);
    if (id.role == ROLE_ANSWER)
        return Py_BuildValue("(y#Oy#)", id.packet, size, Py_None, exchange, xsize);
    return Py_BuildValue("(y#OO)", id.packet, size, Py_None, Py_None);
}

/* ------------------------------------------------------- packet ids (journeys) */
#define OPT_PACKETID 5
#define PACKETID_GROWTH 20 /* the option (4 + 8), opt_endofopt (4) and the trailer (4) */

#define MARK_RECORDS 4096 /* read at a time: 64 KiB */

/* Input `in`'s next mark, or none (the end of its marks file: `marks` is NULL). */
static void next_mark(Input *in)
{
    if (in->mark_at == in->mark_len) {
        in->mark_at = 0;
        in->mark_len = in->marks ? fread(in->mark_buf, 16, MARK_RECORDS, in->marks) : 0;
        if (!in->mark_len) {
            if (in->marks)
                fclose(in->marks);
            in->marks = NULL;
            return;
        }
    }
    in->mark_ordinal = in->mark_buf[2 * in->mark_at];
    in->mark_id = in->mark_buf[2 * in->mark_at + 1];
    in->mark_at++;
}

/* Where epb_packetid goes in `block` (the offset of opt_endofopt, or the end of the
 * options); 0 when it cannot: options damaged, or an epb_packetid of its own. */
static size_t packet_id_at(const uint8_t *block, uint32_t blen)
{
    uint32_t cap = get_le32(block + 20);
    size_t at = 28 + (((size_t)cap + 3) & ~(size_t)3), end = (size_t)blen - 4;
    while (at + 4 <= end) {
        unsigned code = block[at] | block[at + 1] << 8, len = block[at + 2] | block[at + 3] << 8;
        if (code == 0)
            break;
        if (code == OPT_PACKETID || at + 4 + len > end)
            return 0;
        at += 4 + ((len + 3u) & ~3u);
    }
    return at > end ? 0 : at;
}

/* The block's first `at` bytes, then epb_packetid, opt_endofopt and the trailer: the
 * new length. */
static uint32_t write_with_packet_id(uint8_t *dst, const uint8_t *src, size_t at, uint64_t id)
{
    uint32_t blen = (uint32_t)(at + PACKETID_GROWTH);
    memcpy(dst, src, at);
    uint8_t *o = dst + at;
    put_le32(o, OPT_PACKETID | 8u << 16);
    put_le32(o + 4, (uint32_t)id);
    put_le32(o + 8, (uint32_t)(id >> 32));
    put_le32(o + 12, 0); /* opt_endofopt */
    put_le32(o + 16, blen);
    put_le32(dst + 4, blen);
    return blen;
}

/* ------------------------------------------------------------------- methods */
/* `marks`: per input, the path of its packet marks (packet_ids.py) or None. */
static int open_input_marks(Merger *self, PyObject *marks)
{
    PyObject *seq = PySequence_Fast(marks, "marks must be a sequence of paths or None");
    if (!seq)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != self->n) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "marks needs one entry per input");
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (item == Py_None)
            continue;
        FILE *f = open_path(item, "rb");
        if (!f) {
            Py_DECREF(seq);
            return -1;
        }
        self->inputs[i].mark_buf = PyMem_RawMalloc(MARK_RECORDS * 16);
        if (!self->inputs[i].mark_buf) {
            fclose(f);
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        setvbuf(f, NULL, _IONBF, 0); /* mark_buf is its buffer */
        self->inputs[i].marks = f;
        next_mark(&self->inputs[i]);
    }
    Py_DECREF(seq);
    return 0;
}

static int Merger_init(Merger *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"inputs", "out_bytes", "join", "marks", NULL};
    Py_ssize_t n, out_bytes = DEFAULT_OUT_BYTES;
    PyObject *join = Py_None, *marks = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|nOO", kwlist, &n, &out_bytes, &join,
                                     &marks))
        return -1;
    if (join != Py_None && !PyObject_TypeCheck(join, &JoinType)) {
        PyErr_SetString(PyExc_TypeError, "join must be a Join or None");
        return -1;
    }
    if (n < 0 || n > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(Input)) {
        PyErr_SetString(PyExc_ValueError, "inputs out of range");
        return -1;
    }
    if (out_bytes < (Py_ssize_t)EPB_MIN_BYTES) {
        PyErr_SetString(PyExc_ValueError, "out_bytes too small");
        return -1;
    }
    if (self->inputs) {
        PyErr_SetString(PyExc_RuntimeError, "Merger already initialised");
        return -1;
    }
    self->inputs = PyMem_RawCalloc((size_t)n ? (size_t)n : 1, sizeof(Input));
    self->heap = PyMem_RawCalloc((size_t)n ? (size_t)n : 1, sizeof(Py_ssize_t));
    if (!self->inputs || !self->heap) {
        PyErr_NoMemory();
        return -1;
    }
    self->n = n;
    self->heap_len = 0;
    self->out_bytes = out_bytes;
    if (marks != Py_None && open_input_marks(self, marks) < 0)
        return -1;
    if (join != Py_None) {
        self->join = (Join *)Py_NewRef(join);
        for (Py_ssize_t i = 0; i < n; i++)
            self->inputs[i].tolerant = 1;
    }
    return 0;
}

static void Merger_dealloc(Merger *self)
{
    if (self->inputs) {
        for (Py_ssize_t i = 0; i < self->n; i++) {
            release_side(&self->inputs[i]);
            release_raw(&self->inputs[i]);
            if (self->inputs[i].marks)
                fclose(self->inputs[i].marks);
            PyMem_RawFree(self->inputs[i].mark_buf);
        }
    }
    PyMem_RawFree(self->inputs);
    PyMem_RawFree(self->heap);
    Py_XDECREF((PyObject *)self->join);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Input *get_input(Merger *self, Py_ssize_t i)
{
    if (!self->inputs) {
        PyErr_SetString(PyExc_RuntimeError, "Merger not initialised");
        return NULL;
    }
    if (i < 0 || i >= self->n) {
        PyErr_Format(PyExc_IndexError, "no input %zd", i);
        return NULL;
    }
    return &self->inputs[i];
}

/* One table entry: None, or (out id, factor, addend); values that do not fit leave the
 * interface to Python. */
static int parse_iface(PyObject *entry, Iface *iface)
{
    iface->usable = 0;
    if (entry == Py_None)
        return 0;
    Py_ssize_t size = PyTuple_Check(entry) ? PyTuple_GET_SIZE(entry) : 0;
    if (size != 3 && size != 5) {
        PyErr_SetString(PyExc_TypeError, "table entries are None, (out_id, factor, addend) "
                                         "or (out_id, factor, addend, drift_ppb, epoch)");
        return -1;
    }
    int overflow = 0;
    iface->drift_ppb = iface->drift_epoch = 0;
    if (size == 5) {
        long long ppb = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(entry, 3), &overflow);
        if (ppb == -1 && PyErr_Occurred())
            return -1;
        long long epoch = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(entry, 4), &overflow);
        if (epoch == -1 && PyErr_Occurred())
            return -1;
        /* A rate beyond a whole clock's worth is nonsense: Python's path handles it. */
        if (overflow || ppb < -1000000000LL || ppb > 1000000000LL)
            return 0;
        iface->drift_ppb = ppb;
        iface->drift_epoch = epoch;
    }
    unsigned long long out_id = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 0));
    if (out_id == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    unsigned long long factor = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 1));
    if (factor == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    long long addend = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(entry, 2), &overflow);
    if (addend == -1 && PyErr_Occurred())
        return -1;
    if (overflow || out_id > UINT32_MAX || factor == 0)
        return 0;
    iface->out_id = (uint32_t)out_id;
    iface->factor = factor;
    iface->addend = addend;
    iface->usable = 1;
    return 0;
}

PyDoc_STRVAR(set_input_doc,
"set_input(i, raw, pos, table, side=None)\n--\n\n"
"Give input `i` its reader's chunk `raw` (None: the input ends after `side`) with the\n"
"next block at `pos`, the fast table of the current section (None: no block of `raw`\n"
"may be read here) and `side`, normalised packet blocks to deliver first. Allowed only\n"
"while the input holds nothing unread: at the start and when `run()` named it.");

static PyObject *Merger_set_input(Merger *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"i", "raw", "pos", "table", "side", NULL};
    Py_ssize_t i, pos;
    PyObject *raw, *table, *side = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOnO|O", kwlist, &i, &raw, &pos, &table,
                                     &side))
        return NULL;
    Input *in = get_input(self, i);
    if (!in)
        return NULL;
    if (in->in_heap || (in->has_side && in->side_pos < in->side.len) || in->done) {
        PyErr_Format(PyExc_RuntimeError, "input %zd still has packets to merge", i);
        return NULL;
    }
    Py_buffer raw_view, side_view;
    int has_raw = 0, has_side = 0;
    Iface *parsed = NULL;
    Py_ssize_t ntable = 0;
    if (raw != Py_None) {
        if (PyObject_GetBuffer(raw, &raw_view, PyBUF_SIMPLE) < 0)
            return NULL;
        has_raw = 1;
        if (pos < 0 || pos > raw_view.len) {
            PyErr_Format(PyExc_ValueError, "pos %zd outside the buffer", pos);
            goto fail;
        }
        if (table != Py_None) {
            PyObject *seq = PySequence_Fast(table, "table must be a sequence or None");
            if (!seq)
                goto fail;
            ntable = PySequence_Fast_GET_SIZE(seq);
            parsed = PyMem_RawCalloc((size_t)ntable ? (size_t)ntable : 1, sizeof(Iface));
            if (!parsed) {
                Py_DECREF(seq);
                PyErr_NoMemory();
                goto fail;
            }
            for (Py_ssize_t k = 0; k < ntable; k++) {
                if (parse_iface(PySequence_Fast_GET_ITEM(seq, k), &parsed[k]) < 0) {
                    Py_DECREF(seq);
                    goto fail;
                }
            }
            Py_DECREF(seq);
        }
    }
    if (side != Py_None) {
        if (PyObject_GetBuffer(side, &side_view, PyBUF_SIMPLE) < 0)
            goto fail;
        has_side = 1;
    }
    release_side(in);
    release_raw(in);
    if (has_raw) {
        in->raw = raw_view;
        in->has_raw = 1;
        in->raw_pos = pos;
        in->table = parsed;
        in->ntable = ntable;
    }
    in->ended = !has_raw;
    if (has_side) {
        in->side = side_view;
        in->has_side = 1;
    }
    Py_RETURN_NONE;
fail:
    PyMem_RawFree(parsed);
    if (has_raw)
        PyBuffer_Release(&raw_view);
    return NULL;
}

PyDoc_STRVAR(state_doc,
"state(i) -> (pos, last_ts, packets)\n--\n\n"
"Input `i`'s offset of the next unread block of `raw`, the timestamp of its last packet\n"
"(None before the first) and the packets of it written so far.");

static PyObject *Merger_state(Merger *self, PyObject *arg)
{
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    Input *in = get_input(self, i);
    if (!in)
        return NULL;
    if (in->any)
        return Py_BuildValue("nKK", in->raw_pos, (unsigned long long)in->last_ts, in->packets);
    return Py_BuildValue("nOK", in->raw_pos, Py_None, in->packets);
}

PyDoc_STRVAR(run_doc,
"run() -> (out, packets, status, who)\n--\n\n"
"Merge until the output holds about `out_bytes`, an input needs Python, or all are done.\n"
"`out` is the merged blocks (`packets` of them); `status` is DONE, FULL (call again),\n"
"NEED (handle input `who`, then set_input and call again) or DISORDER (input `who`\n"
"went back in time; nothing of the packet was written).");

static PyObject *finish_run(PyObject *out, Py_ssize_t out_len, unsigned long long packets,
                            int status, Py_ssize_t who)
{
    if (_PyBytes_Resize(&out, out_len) < 0)
        return NULL;
    PyObject *result = Py_BuildValue("NKin", out, packets, status, who);
    return result;
}

/* Why the packet loop stopped, beyond run()'s statuses: it runs without the GIL (another
 * thread may work meanwhile: the journeys' results while the merge writes), so what needs
 * Python is done after it. */
enum stop { STOP_STATUS, STOP_GROW, STOP_BADSIDE, STOP_JOIN };

static PyObject *Merger_run(Merger *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->inputs) {
        PyErr_SetString(PyExc_RuntimeError, "Merger not initialised");
        return NULL;
    }
    Py_ssize_t cap = self->out_bytes, out_len = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (!out)
        return NULL;
    unsigned long long packets = 0;

    /* Every open input needs its head before anything can be written. */
    for (Py_ssize_t i = 0; i < self->n; i++) {
        Input *in = &self->inputs[i];
        if (in->done || in->in_heap)
            continue;
        switch (load_head(in)) {
        case H_OK:
            heap_push(self, i);
            break;
        case H_END:
            in->done = 1;
            release_side(in);
            release_raw(in);
            break;
        case H_NEED:
            return finish_run(out, 0, 0, ST_NEED, i);
        case H_DISORDER:
            return finish_run(out, 0, 0, ST_DISORDER, i);
        case H_BADSIDE:
            Py_DECREF(out);
            PyErr_Format(PyExc_ValueError, "input %zd: side buffer holds a bad block", i);
            return NULL;
        }
    }

    int status = ST_DONE;
    Py_ssize_t who = -1;
    enum stop stop = STOP_STATUS;
    for (;;) {
        uint8_t *base = (uint8_t *)PyBytes_AS_STRING(out);
        uint32_t grow = 0;
        Py_BEGIN_ALLOW_THREADS
        while (self->heap_len) {
            Py_ssize_t i = self->heap[0];
            Input *in = &self->inputs[i];
            uint32_t blen = in->blen;
            if (self->join) {
                uint32_t out_id = in->from_side ? get_le32(in->src + 8) : in->out_id;
                join_take(self->join, i, in->src, blen, out_id, in->ts);
                if (self->join->failed) {
                    stop = STOP_JOIN;
                    break;
                }
                *(in->from_side ? &in->side_pos : &in->raw_pos) += blen;
                in->packets++;
                packets++;
            } else {
                uint64_t packet_id = 0;
                size_t id_at = 0;
                while (in->marks && in->mark_ordinal < in->packets)
                    next_mark(in); /* never: marks come in file order, one per packet */
                if (in->marks && in->mark_ordinal == in->packets) {
                    id_at = packet_id_at(in->src, blen);
                    packet_id = in->mark_id;
                }
                uint32_t wlen = id_at ? (uint32_t)(id_at + PACKETID_GROWTH) : blen;
                if ((Py_ssize_t)wlen > cap - out_len) {
                    if (out_len) {
                        status = ST_FULL;
                        break;
                    }
                    /* One block larger than the whole output: room of its own (the GIL). */
                    stop = STOP_GROW;
                    grow = wlen;
                    break;
                }
                if (in->marks && in->mark_ordinal == in->packets)
                    next_mark(in);
                uint8_t *dst = base + out_len;
                if (id_at)
                    write_with_packet_id(dst, in->src, id_at, packet_id);
                else
                    memcpy(dst, in->src, blen);
                if (!in->from_side) {
                    put_le32(dst + 8, in->out_id);
                    put_le32(dst + 12, (uint32_t)(in->ts >> 32));
                    put_le32(dst + 16, (uint32_t)in->ts);
                    in->raw_pos += blen;
                } else {
                    in->side_pos += blen;
                }
                out_len += wlen;
                in->packets++;
                packets++;
            }
            int stopped = 0;
            switch (load_head(in)) {
            case H_OK:
                sift_down(self, 0);
                break;
            case H_END:
                heap_pop_root(self);
                in->done = 1;
                break;
            case H_NEED:
                heap_pop_root(self);
                status = ST_NEED;
                who = i;
                stopped = 1;
                break;
            case H_DISORDER:
                heap_pop_root(self);
                status = ST_DISORDER;
                who = i;
                stopped = 1;
                break;
            case H_BADSIDE:
                stop = STOP_BADSIDE;
                who = i;
                stopped = 1;
                break;
            }
            if (stopped)
                break;
            if (out_len >= self->out_bytes || (self->join && packets >= JOIN_BATCH)) {
                status = ST_FULL;
                break;
            }
        }
        if (self->join)
            closer_publish(self->join);
        Py_END_ALLOW_THREADS
        /* Inputs that ended let go of their buffers (Python objects: with the GIL). */
        for (Py_ssize_t k = 0; k < self->n; k++) {
            Input *in = &self->inputs[k];
            if (in->done && (in->has_raw || in->has_side)) {
                release_side(in);
                release_raw(in);
            }
        }
        if (stop != STOP_GROW)
            break;
        if (_PyBytes_Resize(&out, (Py_ssize_t)grow) < 0)
            return NULL;
        cap = (Py_ssize_t)grow;
        stop = STOP_STATUS;
    }
    switch (stop) {
    case STOP_JOIN:
        Py_DECREF(out);
        if (self->join->failed == 2)
            return PyErr_Format(PyExc_OSError, "packet marks: a file could not be written");
        return PyErr_NoMemory();
    case STOP_BADSIDE:
        Py_DECREF(out);
        return PyErr_Format(PyExc_ValueError, "input %zd: side buffer holds a bad block", who);
    default:
        return finish_run(out, out_len, packets, status, who);
    }
}

static PyMethodDef Merger_methods[] = {
    {"set_input", (PyCFunction)(void (*)(void))Merger_set_input, METH_VARARGS | METH_KEYWORDS,
     set_input_doc},
    {"state", (PyCFunction)Merger_state, METH_O, state_doc},
    {"run", (PyCFunction)Merger_run, METH_NOARGS, run_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Merger_doc,
"Merger(inputs, out_bytes=1 MiB, join=None, marks=None): k-way merge of normalised\n"
"enhanced packet blocks; to a Join (nothing written), or with epb_packetid where the\n"
"marks files (packet_ids.py, one path or None per input) say.");

static PyTypeObject MergerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xdpcap.orchestrator._fastmerge.Merger",
    .tp_basicsize = sizeof(Merger),
    .tp_dealloc = (destructor)Merger_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Merger_doc,
    .tp_methods = Merger_methods,
    .tp_init = (initproc)Merger_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *py_key_id(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "y*", &key))
        return NULL;
    if (key.len > MAX_KEY) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "longer than any key");
        return NULL;
    }
    uint64_t id = key_id(key.buf, (size_t)key.len);
    PyBuffer_Release(&key);
    return PyLong_FromUnsignedLongLong(id);
}

static PyMethodDef module_methods[] = {
    {"identify", py_identify, METH_VARARGS, identify_doc},
    {"key_id", py_key_id, METH_VARARGS,
     "key_id(key) -> int: merge.identity.key_id, computed in C (tests compare the two)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastmerge_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "xdpcap.orchestrator._fastmerge",
    .m_doc = "The C hot loop of xdpcap merge (see orchestrator/merge.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastmerge(void)
{
    if (PyType_Ready(&MergerType) < 0 || PyType_Ready(&JoinType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastmerge_module);
    if (!m)
        return NULL;
    Py_INCREF(&MergerType);
    Py_INCREF(&JoinType);
    if (PyModule_AddObject(m, "Merger", (PyObject *)&MergerType) < 0 ||
        PyModule_AddObject(m, "Join", (PyObject *)&JoinType) < 0 ||
        PyModule_AddIntConstant(m, "DONE", ST_DONE) < 0 ||
        PyModule_AddIntConstant(m, "FULL", ST_FULL) < 0 ||
        PyModule_AddIntConstant(m, "NEED", ST_NEED) < 0 ||
        PyModule_AddIntConstant(m, "DISORDER", ST_DISORDER) < 0) {
        Py_DECREF(&MergerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
