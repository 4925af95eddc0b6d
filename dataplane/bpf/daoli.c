//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * daoli's dataplane: two tcx ingress programs that map a container's
 * identity (network, IP, port) to its location (ServerIP, ServerPort) and
 * back, without encapsulation. See ../doc.go for the model, the maps and
 * their hazards.
 *
 * Port model. TCP and UDP have two ports. ICMP echo has one port-like
 * field, the identifier: it always carries the client's port (source port
 * of a request, destination port of a reply). The server's port of an ICMP
 * echo is 0 inside containers; on the wire it travels in the IPv4
 * identification field, and the ICMP code is set to WIRE_ICMP_CODE.
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "daoli.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define IP_OFF ETH_HLEN
#define IP_ID_OFF (IP_OFF + offsetof(struct iphdr, id))
#define IP_TTL_OFF (IP_OFF + offsetof(struct iphdr, ttl))
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_SADDR_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (IP_OFF + offsetof(struct iphdr, daddr))
/* The TCP checksum of a packet without IPv4 options. */
#define TCP_CSUM_OFF (IP_OFF + 20 + offsetof(struct tcphdr, check))

#define NS_PER_SEC 1000000000ULL
#define NS_PER_MSEC 1000000ULL

/* How long an idle CT_REV entry keeps its offset; ../doc.go (Conntrack)
 * gives the reasons. */
#define CT_TCP_ESTABLISHED (3600 * NS_PER_SEC)
#define CT_TCP_UNREPLIED (30 * NS_PER_SEC)   /* the backend never answered */
#define CT_TCP_HALF_CLOSED (120 * NS_PER_SEC) /* one FIN */
#define CT_TCP_CLOSED (2 * NS_PER_SEC)       /* both FINs, or a RST */
#define CT_TCP_REUSE (2 * NS_PER_MSEC) /* over, and needed by a new flow */
#define CT_UDP (30 * NS_PER_SEC)
#define CT_UDP_REUSE (1 * NS_PER_SEC) /* answered, and needed by a new flow */
#define CT_ICMP (60 * NS_PER_SEC)

/* TCP flags, byte 13 of the header. */
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

/* From linux/if_arp.h, which drags in libc headers. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

/* From linux/icmp.h, which drags in libc headers too. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_HLEN 8

struct icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};

/* pkt is what the programs parsed; everything later works on this copy. */
struct pkt {
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 sport; /* host order, see the port model above */
	__u16 dport;
	__u16 ip_id;   /* raw, as in the packet */
	__u16 icmp_id; /* raw */
	__u16 icmp_tc; /* raw type and code word */
	__u16 l4_off;
	__u16 csum_off;
	__u16 end; /* end of the IPv4 packet */
	__u8 proto;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 tcp_flags;
	__u8 ttl;
	__u8 pad;
	__u32 seq;     /* TCP, host order */
	__u32 ack;     /* TCP, host order */
	__u32 seg_len; /* TCP: sequence space taken (payload, SYN, FIN) */
};

/* quote is the start of the packet an ICMP error is about, as the error
 * quotes it: the IPv4 header (without options) and the first 8 bytes of
 * the TCP or UDP header. */
struct quote {
	struct iphdr ip;
	__be16 sport;
	__be16 dport;
	__be16 w2;
	__be16 w3; /* UDP: checksum */
};

struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);

	if (n)
		*n += 1;
}

static __always_inline int drop(__u32 reason)
{
	count_drop(reason);
	return TC_ACT_SHOT;
}

/* count adds a packet to endpoint id's counters. The value is this CPU's
 * own copy, so a plain add cannot race. */
static __always_inline void count(__u32 id, __u32 len, int rx)
{
	struct ep_stats *s = bpf_map_lookup_elem(&endpoint_stats, &id);

	if (!s)
		return;
	if (rx) {
		s->rx_packets++;
		s->rx_bytes += len;
	} else {
		s->tx_packets++;
		s->tx_bytes += len;
	}
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] &&
	       a[4] == b[4] && a[5] == b[5];
}

static __always_inline int is_request(const struct pkt *p)
{
	return p->proto == IPPROTO_ICMP && p->icmp_type == ICMP_ECHO;
}

static __always_inline int is_error(const struct pkt *p)
{
	return p->proto == IPPROTO_ICMP &&
	       (p->icmp_type == ICMP_DEST_UNREACH ||
		p->icmp_type == ICMP_TIME_EXCEEDED);
}

/* policy_allows says whether clients of network from may open flows to
 * the service (ip, port, proto) of network to. */
static __always_inline int policy_allows(__u32 from, __u32 to, __u32 ip,
					 __u16 port, __u8 proto)
{
	/* One key for both maps: a policy_key is an export_key's start. */
	struct export_key k = {
		.from = from, .to = to, .ip = ip, .port = port, .proto = proto,
	};
	enum policy_verdict *v = bpf_map_lookup_elem(&policies, &k);

	if (!v)
		return from == to;
	if (*v == POLICY_EXPORTS)
		return bpf_map_lookup_elem(&exports, &k) != NULL;
	return *v == POLICY_ALLOW;
}

/* ip_csum_ok says whether the option-less IPv4 header h sums to all
 * ones, as a header with a right checksum does. */
static __always_inline int ip_csum_ok(const struct iphdr *h)
{
	const __u16 *w = (const __u16 *)h;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*h) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/* parse_ipv4 fills p from the IPv4 packet after the Ethernet header. It
 * returns 0, or -1 with *reason set. With strict (a container's packet)
 * it also refuses IPv4 options (DROP_IP_OPTIONS) and a header checksum
 * that is wrong (DROP_BAD_CHECKSUM): daoli's own wire packets may carry
 * an option, a container's never need one. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p,
				      __u32 *reason, const int strict)
{
	struct iphdr ip;
	__u32 end;

	*reason = DROP_MALFORMED;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	if (strict && ip.ihl != 5) {
		*reason = DROP_IP_OPTIONS;
		return -1;
	}
	if (strict && !ip_csum_ok(&ip)) {
		*reason = DROP_BAD_CHECKSUM;
		return -1;
	}
	end = IP_OFF + bpf_ntohs(ip.tot_len);
	if (bpf_ntohs(ip.tot_len) < ip.ihl * 4 || end > skb->len)
		return -1;
	if (ip.frag_off & bpf_htons(0x3fff)) {
		*reason = DROP_FRAGMENT;
		return -1;
	}
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->ip_id = ip.id;
	p->proto = ip.protocol;
	p->ttl = ip.ttl;
	p->end = end;
	p->l4_off = IP_OFF + ip.ihl * 4;

	switch (ip.protocol) {
	case IPPROTO_TCP: {
		struct tcphdr tcp;

		if (p->l4_off + sizeof(tcp) > end ||
		    bpf_skb_load_bytes(skb, p->l4_off, &tcp, sizeof(tcp)) < 0)
			return -1;
		p->sport = bpf_ntohs(tcp.source);
		p->dport = bpf_ntohs(tcp.dest);
		p->tcp_flags = ((__u8 *)&tcp)[13];
		p->seq = bpf_ntohl(tcp.seq);
		p->ack = bpf_ntohl(tcp.ack_seq);
		if (p->l4_off + tcp.doff * 4 <= end)
			p->seg_len = end - p->l4_off - tcp.doff * 4;
		p->seg_len += tcp.syn + tcp.fin;
		p->csum_off = p->l4_off + offsetof(struct tcphdr, check);
		return 0;
	}
	case IPPROTO_UDP: {
		struct udphdr udp;

		if (p->l4_off + sizeof(udp) > end ||
		    bpf_skb_load_bytes(skb, p->l4_off, &udp, sizeof(udp)) < 0)
			return -1;
		p->sport = bpf_ntohs(udp.source);
		p->dport = bpf_ntohs(udp.dest);
		p->csum_off = p->l4_off + offsetof(struct udphdr, check);
		return 0;
	}
	case IPPROTO_ICMP: {
		struct icmp_echo icmp;

		if (p->l4_off + sizeof(icmp) > end ||
		    bpf_skb_load_bytes(skb, p->l4_off, &icmp, sizeof(icmp)) < 0)
			return -1;
		p->icmp_type = icmp.type;
		p->icmp_code = icmp.code;
		p->csum_off = p->l4_off + offsetof(struct icmp_echo, checksum);
		/* An error's ports are in its quote: see error_from_*. */
		if (is_error(p))
			return 0;
		if (icmp.type != ICMP_ECHO && icmp.type != ICMP_ECHOREPLY) {
			*reason = DROP_UNSUPPORTED;
			return -1;
		}
		p->icmp_id = icmp.id;
		__builtin_memcpy(&p->icmp_tc, &icmp, 2);
		if (icmp.type == ICMP_ECHO) {
			p->sport = bpf_ntohs(icmp.id);
			p->dport = bpf_ntohs(ip.id);
		} else {
			p->sport = bpf_ntohs(ip.id);
			p->dport = bpf_ntohs(icmp.id);
		}
		return 0;
	}
	}
	*reason = DROP_UNSUPPORTED;
	return -1;
}

static __always_inline int set_addr(struct __sk_buff *skb, const struct pkt *p,
				    __u32 off, __u32 from, __u32 to)
{
	if (from == to)
		return 0;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, 4) < 0)
		return -1;
	if (p->proto != IPPROTO_ICMP) {
		__u64 flags = BPF_F_PSEUDO_HDR | 4;

		if (p->proto == IPPROTO_UDP)
			flags |= BPF_F_MARK_MANGLED_0;
		if (bpf_l4_csum_replace(skb, p->csum_off, from, to, flags) < 0)
			return -1;
	}
	return bpf_skb_store_bytes(skb, off, &to, 4, 0);
}

/* set_word replaces a 16-bit field covered by the L4 checksum (l4 != 0) or
 * by the IPv4 header checksum. */
static __always_inline int set_word(struct __sk_buff *skb, const struct pkt *p,
				    __u32 off, __u16 from, __u16 to, int l4)
{
	if (from == to)
		return 0;
	if (l4) {
		__u64 flags = 2;

		if (p->proto == IPPROTO_UDP)
			flags |= BPF_F_MARK_MANGLED_0;
		if (bpf_l4_csum_replace(skb, p->csum_off, from, to, flags) < 0)
			return -1;
	} else if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, 2) < 0) {
		return -1;
	}
	return bpf_skb_store_bytes(skb, off, &to, 2, 0);
}

/* dec_ttl takes our hop off the TTL: a packet through the rewrite is
 * routed. The caller has dropped packets with a TTL of 1 or less. */
static __always_inline int dec_ttl(struct __sk_buff *skb, const struct pkt *p)
{
	__u8 from[2] = { p->ttl, p->proto }, to[2] = { p->ttl - 1, p->proto };
	__u16 f, t;

	__builtin_memcpy(&f, from, 2);
	__builtin_memcpy(&t, to, 2);
	return set_word(skb, p, IP_TTL_OFF, f, t, 0);
}

/* set_addrs sets the outer addresses and takes our hop off the TTL. */
static __always_inline int set_addrs(struct __sk_buff *skb,
				     const struct pkt *p, __u32 saddr,
				     __u32 daddr)
{
	if (dec_ttl(skb, p) < 0 ||
	    set_addr(skb, p, IP_SADDR_OFF, p->saddr, saddr) < 0 ||
	    set_addr(skb, p, IP_DADDR_OFF, p->daddr, daddr) < 0)
		return -1;
	return 0;
}

/* rewrite sets the packet's addresses and ports (host order, port model
 * above), takes our hop off the TTL and fixes the checksums
 * incrementally. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p,
				   __u32 saddr, __u32 daddr, __u16 sport,
				   __u16 dport, __u8 icmp_code)
{
	if (set_addrs(skb, p, saddr, daddr) < 0)
		return -1;
	if (p->proto == IPPROTO_ICMP) {
		__u16 client = is_request(p) ? sport : dport;
		__u16 server = is_request(p) ? dport : sport;
		__u8 tc[2] = { p->icmp_type, icmp_code };
		__u16 word;

		__builtin_memcpy(&word, tc, 2);
		if (set_word(skb, p, p->l4_off, p->icmp_tc, word, 1) < 0 ||
		    set_word(skb, p, p->l4_off + 4, p->icmp_id,
			     bpf_htons(client), 1) < 0 ||
		    set_word(skb, p, IP_ID_OFF, p->ip_id, bpf_htons(server),
			     0) < 0)
			return -1;
		return 0;
	}
	if (set_word(skb, p, p->l4_off, bpf_htons(p->sport), bpf_htons(sport),
		     1) < 0 ||
	    set_word(skb, p, p->l4_off + 2, bpf_htons(p->dport),
		     bpf_htons(dport), 1) < 0)
		return -1;
	return 0;
}

static __always_inline int set_macs(struct __sk_buff *skb, const __u8 *dst,
				    const __u8 *src)
{
	if (bpf_skb_store_bytes(skb, 0, dst, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, src, ETH_ALEN, 0) < 0)
		return -1;
	return 0;
}

static __always_inline __u32 mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 hash_flow(const struct pkt *p)
{
	__u32 h = mix(p->saddr * 0x9e3779b1 ^ p->daddr);

	h = mix(h ^ (((__u32)p->sport << 16) | p->dport));
	return mix(h ^ p->proto);
}

/* select_backend returns an active backend of svc for the flow, or 0. */
static __always_inline __u32 select_backend(const struct service *svc,
					    const struct pkt *p)
{
	__u32 slot, *id;

	if (svc->backends == 0)
		return 0;
	if (svc->mode == MODE_FAILOVER)
		return svc->backend;
	if (svc->table >= MAX_TABLES)
		return 0;
	slot = svc->table * MAGLEV_SIZE + hash_flow(p) % MAGLEV_SIZE;
	id = bpf_map_lookup_elem(&maglev, &slot);
	return id ? *id : 0;
}

/* port_index returns the index of (port, proto) among ep's served ports,
 * or -1. Every endpoint answers ICMP echo, at index 0. */
static __always_inline int port_index(const struct endpoint *ep, __u16 port,
				      __u8 proto)
{
	if (proto == IPPROTO_ICMP)
		return 0;
	for (int i = 0; i < MAX_PORTS; i++) {
		if (i >= ep->nports)
			break;
		if (ep->ports[i].port == port && ep->ports[i].proto == proto)
			return i;
	}
	return -1;
}

/* wire_endpoint finds the endpoint whose wire block on server_ip holds
 * port (blocks are aligned: port & mask is the block's base). It returns
 * the endpoint, with its id in *id, or NULL. */
static __always_inline struct endpoint *wire_endpoint(__u32 server_ip,
						      __u16 port, __u16 mask,
						      __u32 *id)
{
	struct wire_key wk = { .server_ip = server_ip, .base = port & mask };
	__u32 *v = bpf_map_lookup_elem(&wire_blocks, &wk);

	if (!v)
		return NULL;
	*id = *v;
	return bpf_map_lookup_elem(&endpoints, id);
}

/* choose_backend picks, for a new flow of client c (or one whose backend
 * is gone), the backend of the service p is addressed to: it looks the
 * service up in c's network, checks policy, selects a backend and finds
 * the port's index among the backend's served ports. It returns 0 with
 * *sid, *s and *idx set, or the drop reason. */
static __always_inline __u32 choose_backend(const struct endpoint *c,
					    const struct pkt *p, __u32 *sid,
					    struct endpoint **s, int *idx)
{
	struct service_key sk = {
		.net_id = c->net_id,
		.ip = p->daddr,
		.port = p->dport,
		.proto = p->proto,
	};
	struct service *svc = bpf_map_lookup_elem(&services, &sk);

	if (!svc)
		return DROP_NO_SERVICE;
	if (!policy_allows(c->net_id, svc->net_id, p->daddr, p->dport, p->proto))
		return DROP_POLICY;
	*sid = select_backend(svc, p);
	*s = bpf_map_lookup_elem(&endpoints, sid);
	if (!*s)
		return DROP_NO_BACKEND;
	*idx = port_index(*s, p->dport, p->proto);
	if (*idx < 0)
		return DROP_NO_BACKEND;
	return 0;
}


/* ct_timeout is how long an idle flow in the given state keeps its
 * offset. */
static __always_inline __s64 ct_timeout(__u8 proto, __u8 flags)
{
	if (proto == IPPROTO_TCP) {
		if ((flags & CT_RST) || (flags & CT_FINS) == CT_FINS)
			return CT_TCP_CLOSED;
		if (flags & CT_FINS)
			return CT_TCP_HALF_CLOSED;
		if (!(flags & CT_REPLIED))
			return CT_TCP_UNREPLIED;
		return CT_TCP_ESTABLISHED;
	}
	if (proto == IPPROTO_UDP)
		return CT_UDP;
	return CT_ICMP;
}

/* NO_OFFSET: no offset noted. */
#define NO_OFFSET 0xffffffff

/* ct_over says whether a flow idle for idle ns may give its offset to a
 * new flow that finds none free, before its hold ends: a TCP flow over for
 * good (reset, or both FINs acknowledged) at least CT_TCP_REUSE ago, or a
 * UDP flow that was answered and is idle at least CT_UDP_REUSE (a request
 * and its answer, as a DNS query from a new socket each time: holding
 * each for 30 s would hold such a client to a block's worth of requests
 * per 30 s). A UDP flow that sends again after losing its offset goes on
 * as a new flow, from another port. */
static __always_inline int ct_over(__u8 proto, __u8 flags, __s64 idle)
{
	if (proto == IPPROTO_UDP)
		return (flags & CT_REPLIED) && idle >= (__s64)CT_UDP_REUSE;
	return proto == IPPROTO_TCP &&
	       ((flags & CT_RST) || (flags & CT_ACKED) == CT_ACKED) &&
	       idle >= (__s64)CT_TCP_REUSE;
}

/* ct_claim records v under the CT_REV key k when k is free: absent, or its
 * flow expired. When over is not NULL it only notes in *over (if still
 * NO_OFFSET) the offset of a flow that is over (ct_over); when it is
 * NULL it takes such an offset too. It returns 0 when it recorded v, -1
 * otherwise. It looks before it inserts: an insert into the full LRU
 * takes a node, possibly evicting another flow, even when it then fails.
 * Two CPUs never take the same entry: the one whose compare and swap of
 * last_seen succeeds does, and the swap makes the entry look busy to the
 * other until the update replaces it. A global function: the verifier
 * checks it once, not once per probe. */
__attribute__((noinline)) int ct_claim(struct ct_key *k, struct ct_entry *v,
				       __u64 now, __u32 *over)
{
	struct ct_entry *old;
	__u64 seen;
	__s64 idle;

	if (!k || !v)
		return -1;
	old = bpf_map_lookup_elem(&conntrack, k);
	if (!old) {
		if (bpf_map_update_elem(&conntrack, k, v, BPF_NOEXIST) == 0)
			return 0;
		old = bpf_map_lookup_elem(&conntrack, k);
		if (!old)
			return -1;
	}
	seen = old->last_seen;
	/* Signed: another CPU may have touched the entry after our now. */
	idle = now - seen;
	if (idle <= ct_timeout(old->proto, old->flags)) {
		if (!ct_over(old->proto, old->flags, idle))
			return -1;
		if (over) {
			if (*over == NO_OFFSET)
				*over = k->sport;
			return -1;
		}
	}
	if (__sync_val_compare_and_swap(&old->last_seen, seen, now) != seen)
		return -1;
	if (bpf_map_update_elem(&conntrack, k, v, BPF_ANY) != 0)
		return -1;
	return 0;
}

/* cursor_key names the offset cursor of a client towards one destination.
 * Two destinations that hash alike share a cursor, which only moves where
 * their searches start. */
static __always_inline __u32 cursor_key(const struct ct_key *k)
{
	__u32 h = mix(k->scope * 0x9e3779b1 ^ k->daddr ^ k->saddr);

	return mix(h ^ ((__u32)k->dport << 8) ^ k->proto);
}

/* PROBE_BATCH is how many offsets one ct_probe call looks at. */
#define PROBE_BATCH 16

/* search is alloc_offset's state, shared with ct_probe. */
struct search {
	struct ct_key k;    /* CT_REV key, sport set per probe */
	struct ct_entry v;  /* the flow, offset set per probe */
	__u64 now;
	__u32 lo;    /* first flow offset */
	__u32 span;  /* number of flow offsets */
	__u32 first; /* position of the first probe, modulo span */
	__u32 n;     /* offsets left to probe */
	__u32 over;  /* first offset of a flow that is over, or NO_OFFSET */
	__u32 pad;
};

/* ct_probe looks at up to PROBE_BATCH offsets from s->first and returns
 * the first it claimed, or -1. A global function, so the verifier walks
 * PROBE_BATCH probes once instead of MAX_PROBES in every caller. */
__attribute__((noinline)) int ct_probe(struct search *s)
{
	if (!s)
		return -1;
	for (__u32 i = 0; i < PROBE_BATCH; i++) {
		__u32 off;

		if (i >= s->n || !s->span)
			break;
		off = s->lo + (s->first + i) % s->span;
		s->k.sport = off;
		s->v.offset = off;
		if (ct_claim(&s->k, &s->v, s->now, &s->over) == 0)
			return off;
	}
	return -1;
}

/* alloc_offset finds an offset for flow v (last_seen = now set) among the
 * flow offsets [lo, size) of the client's blocks, records v under the key
 * k names (a CT_REV or CT_EGRESS key: client, destination, protocol; its
 * sport, the offset, is set here) and returns the offset, or -1. An
 * offset is unique per client and destination, so only flows to the same
 * destination compete. The search
 * starts at prefer when it is a flow offset (a flow moving to another
 * backend keeps its offset when it is free there), else at the
 * destination's cursor, just past its last allocation, which it advances:
 * offsets are handed out in turn, so the search meets the oldest flows
 * first. It looks at up to MAX_PROBES offsets (the whole block at the
 * default size) and takes the first free one; when none is free, the
 * first whose TCP flow is over (ct_over), as a kernel reuses a port in
 * TIME_WAIT. It never takes a busy offset: that would hand one flow's
 * replies to another (fail closed). A global function, verified once. */
__attribute__((noinline)) int alloc_offset(const struct ct_key *k, __u32 lo,
					   __u32 size, __u32 prefer,
					   struct ct_entry *v)
{
	struct search s = { .over = NO_OFFSET };
	int found = -1, moved = prefer >= lo && prefer < size;
	__u32 start, next, ck, *cur;

	if (!k || !v || lo >= size || size > 32768)
		return -1;
	s.k = *k;
	s.v = *v;
	s.now = v->last_seen;
	s.lo = lo;
	s.span = size - lo;
	ck = cursor_key(&s.k);
	if (moved) {
		start = prefer - lo;
	} else {
		cur = bpf_map_lookup_elem(&offset_cursor, &ck);
		start = cur ? *cur : 0;
	}
	for (__u32 done = 0; done < MAX_PROBES; done += PROBE_BATCH) {
		if (done >= s.span)
			break;
		s.first = start + done;
		s.n = s.span - done;
		found = ct_probe(&s);
		if (found >= 0)
			break;
	}
	if (found < 0 && s.over != NO_OFFSET) {
		s.k.sport = s.over;
		s.v.offset = s.over;
		if (ct_claim(&s.k, &s.v, s.now, NULL) == 0)
			found = s.over;
	}
	if (found < 0)
		return -1;
	v->offset = found;
	if (!moved) {
		next = found - lo + 1;
		bpf_map_update_elem(&offset_cursor, &ck, &next, BPF_ANY);
	}
	return found;
}

/* NO_PREFER makes alloc_offset start at the destination's cursor. */
#define NO_PREFER 0xffffffff

/* What ct_touch asks of the caller about a closing TCP flow. */
enum {
	TW_NONE = 0,
	TW_REFLECT = 1, /* send the backend a reset back (end_time_wait) */
	TW_RESET = 2,   /* turn this, the client's last ACK, into a reset */
};

/* flow_opened counts a new flow of local endpoint cid in flow_counts. */
static __always_inline void flow_opened(__u32 cid)
{
	struct flow_count one = { .opened = 1 },
			  *n = bpf_map_lookup_elem(&flow_counts, &cid);

	if (n)
		__sync_fetch_and_add(&n->opened, 1);
	else
		bpf_map_update_elem(&flow_counts, &cid, &one, BPF_NOEXIST);
}

/* ct_ended says whether a flow with flags is over: reset, or both FINs. */
static __always_inline int ct_ended(__u8 flags)
{
	return (flags & CT_RST) || (flags & CT_FINS) == CT_FINS;
}

/* ct_reopen clears the state of flow e that a SYN starts again, and
 * counts it open again for local endpoint scope when it had ended. */
static __always_inline void ct_reopen(struct ct_entry *e, __u32 scope)
{
	if (ct_ended(e->flags))
		flow_opened(scope);
	e->flags = 0;
}

/* ct_touch records packet p of the flow whose CT_REV entry is e; in says it
 * came from the backend. It follows the close: which side sent FIN, and
 * which FIN the other side acknowledged (by sequence number). When the
 * backend sent its FIN before it had the client's, the backend ends in
 * TIME_WAIT for the flow's 4-tuple, which a new flow on the same offset
 * would meet; ct_touch then says how to end it, once both sides are known
 * to be done:
 *
 *   - TW_REFLECT on the backend's pure ACK of the client's FIN when the
 *     client had acknowledged the backend's FIN (the backend closed first
 *     and is in TIME_WAIT now): send the backend a reset back;
 *   - TW_RESET on a pure ACK of the backend's FIN that the client sends
 *     after its own FIN (the FINs crossed, or the backend resent its FIN):
 *     the backend enters TIME_WAIT on this ACK or is in it already; send
 *     this ACK as a reset instead, at the sequence number the backend
 *     expects after the client's FIN. A backend that does not have that
 *     FIN yet ignores the reset (RFC 5961) unless its socket is closed
 *     already (an orphan in FIN_WAIT2, which nobody reads).
 *
 * The flow is then marked reset, so it is ended once. */
static __always_inline int ct_touch(struct ct_entry *e, const struct pkt *p,
				    __u64 now, int in, __u32 scope)
{
	__u8 f = e->flags, was = f;
	int tw = TW_NONE, pure;

	e->last_seen = now;
	if (in)
		f |= CT_REPLIED;
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & TH_RST)
			f |= CT_RST;
		if ((p->tcp_flags & TH_FIN) && in) {
			f |= CT_FIN_IN;
			e->fin_in = p->seq + p->seg_len;
			if (!(f & CT_FIN_OUT) || !(p->tcp_flags & TH_ACK) ||
			    p->ack != e->fin_out)
				f |= CT_TIME_WAIT;
		} else if (p->tcp_flags & TH_FIN) {
			f |= CT_FIN_OUT;
			e->fin_out = p->seq + p->seg_len;
		}
		if (p->tcp_flags & TH_ACK) {
			if (in && (f & CT_FIN_OUT) && p->ack == e->fin_out)
				f |= CT_FIN_OUT_ACKED;
			if (!in && (f & CT_FIN_IN) && p->ack == e->fin_in)
				f |= CT_FIN_IN_ACKED;
		}
		pure = (p->tcp_flags & (TH_SYN | TH_FIN | TH_RST | TH_ACK)) ==
			       TH_ACK &&
		       p->seg_len == 0;
		if (pure && (f & (CT_TIME_WAIT | CT_RST)) == CT_TIME_WAIT) {
			if (in && (f & CT_ACKED) == CT_ACKED &&
			    !(was & CT_FIN_OUT_ACKED))
				tw = TW_REFLECT;
			else if (!in && (f & CT_FIN_OUT) &&
				 (f & CT_FIN_IN_ACKED))
				tw = TW_RESET;
			if (tw)
				f |= CT_RST;
		}
	}
	if (f != e->flags) {
		e->flags = f;
		/* A local endpoint's flow that ends stops counting against
		 * its flow_limit. */
		if (scope && !ct_ended(was) && ct_ended(f)) {
			struct flow_count *n =
				bpf_map_lookup_elem(&flow_counts, &scope);

			if (n)
				__sync_fetch_and_add(&n->closed, 1);
		}
	}
	return tw;
}

/* ct_forget deletes the entry alloc_offset recorded under k at offset,
 * for a flow whose CT_OUT entry could not be written. */
static __always_inline void ct_forget(const struct ct_key *k, __u16 offset)
{
	struct ct_key d = *k;

	d.sport = offset;
	bpf_map_delete_elem(&conntrack, &d);
}

/* rev_key returns the CT_REV key template of client cid's flows to
 * backend's port index idx. */
static __always_inline struct ct_key rev_key(__u32 cid, __u32 backend,
					     __u16 idx, __u8 proto)
{
	return (struct ct_key){
		.scope = cid,
		.daddr = backend,
		.dport = idx,
		.proto = proto,
		.dir = CT_REV,
	};
}

/* egress_key returns the CT_EGRESS key of client cid's flow at offset off
 * to port of the outside address addr (0 for ICMP echo). */
static __always_inline struct ct_key egress_key(__u32 cid, __u32 addr,
						__u16 port, __u8 proto,
						__u16 off)
{
	return (struct ct_key){
		.scope = cid,
		.saddr = addr,
		.sport = off,
		.dport = proto == IPPROTO_ICMP ? 0 : port,
		.proto = proto,
		.dir = CT_EGRESS,
	};
}

/* ct_rev returns the CT_REV entry of client's flow to backend's port index
 * idx at offset. */
static __always_inline struct ct_entry *ct_rev(__u32 client, __u32 backend,
					       __u16 idx, __u8 proto,
					       __u16 offset)
{
	struct ct_key k = {
		.scope = client,
		.daddr = backend,
		.sport = offset,
		.dport = idx,
		.proto = proto,
		.dir = CT_REV,
	};

	return bpf_map_lookup_elem(&conntrack, &k);
}

static __always_inline struct server_settings *get_settings(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&settings, &zero);
}

/* deliver_out sends client c's flow to backend s: straight into s when it
 * lives here, else over the wire. */
static __always_inline int deliver_out(struct __sk_buff *skb,
				       const struct pkt *p,
				       const struct endpoint *c,
				       const struct endpoint *s, __u32 sid,
				       const struct ct_entry *e,
				       const struct server_settings *cfg)
{
	if (s->ifindex) {
		if (rewrite(skb, p, p->saddr, p->daddr,
			    c->ident_base + e->offset, p->dport, 0) < 0 ||
		    set_macs(skb, s->mac, cfg->gateway_mac) < 0)
			return drop(DROP_MALFORMED);
		count(sid, skb->len, 1);
		return bpf_redirect_peer(s->ifindex, 0);
	}
	if (!cfg->uplink_ifindex)
		return drop(DROP_NO_UPLINK);
	if (rewrite(skb, p, c->server_ip, s->server_ip,
		    c->wire_base + e->offset, s->wire_base + e->port_index,
		    WIRE_ICMP_CODE) < 0)
		return drop(DROP_MALFORMED);
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
}

static __always_inline int answer_arp(struct __sk_buff *skb,
				      const struct endpoint *c,
				      const struct server_settings *cfg)
{
	struct {
		struct ethhdr eth;
		struct arp_eth arp;
	} __attribute__((packed)) r;
	struct arp_eth a;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &a, sizeof(a)) < 0)
		return drop(DROP_MALFORMED);
	if (a.htype != bpf_htons(ARPHRD_ETHER) ||
	    a.ptype != bpf_htons(ETH_P_IP) || a.hlen != ETH_ALEN ||
	    a.plen != 4 || a.op != bpf_htons(ARPOP_REQUEST))
		return drop(DROP_ARP);
	/* A probe (sender 0.0.0.0) or a question for its own address must
	 * stay unanswered: nobody else holds the container's address. */
	if (a.spa == 0 || a.tpa == c->ip)
		return drop(DROP_ARP);
	if (a.spa != c->ip || !mac_eq(a.sha, c->mac))
		return drop(DROP_SPOOFED);

	__builtin_memcpy(r.eth.h_dest, c->mac, ETH_ALEN);
	__builtin_memcpy(r.eth.h_source, cfg->gateway_mac, ETH_ALEN);
	r.eth.h_proto = bpf_htons(ETH_P_ARP);
	r.arp = a;
	r.arp.op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(r.arp.sha, cfg->gateway_mac, ETH_ALEN);
	r.arp.spa = a.tpa;
	__builtin_memcpy(r.arp.tha, c->mac, ETH_ALEN);
	r.arp.tpa = a.spa;
	if (bpf_skb_store_bytes(skb, 0, &r, sizeof(r), 0) < 0)
		return drop(DROP_MALFORMED);
	return bpf_redirect(skb->ifindex, 0);
}

/* reset_flag sets RST on TCP segment p (the client's last ACK of a flow
 * whose backend would enter TIME_WAIT on it, see ct_touch): with the
 * sequence number the backend expects, it closes the backend's side at
 * once. The client's side does not notice: it has sent its last ACK. */
static __always_inline int reset_flag(struct __sk_buff *skb,
				      const struct pkt *p)
{
	__u16 from, to;

	if (bpf_skb_load_bytes(skb, p->l4_off + 12, &from, 2) < 0)
		return -1;
	to = from | bpf_htons(TH_RST);
	return set_word(skb, p, p->l4_off + 12, from, to, 1);
}

/* csum_fold32 folds a 32-bit partial sum (as bpf_csum_diff returns it) to
 * 16 bits, not inverted. */
static __always_inline __u16 csum_fold32(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s;
}

/* ip_header returns a fresh IPv4 header from saddr to daddr, checksum
 * included. */
static __always_inline int ip_header(struct iphdr *ip, __u8 tos, __u16 len,
				     __u16 frag, __u8 proto, __u32 saddr,
				     __u32 daddr)
{
	__s64 sum;

	*ip = (struct iphdr){
		.version = 4,
		.ihl = 5,
		.tos = tos,
		.tot_len = bpf_htons(len),
		.frag_off = bpf_htons(frag),
		.ttl = 64,
		.protocol = proto,
		.saddr = saddr,
		.daddr = daddr,
	};
	sum = bpf_csum_diff(NULL, 0, (__be32 *)ip, sizeof(*ip), 0);
	if (sum < 0)
		return -1;
	ip->check = ~csum_fold32((__u32)sum);
	return 0;
}

/* tw_frame is a TCP segment without IPv4 options, as end_time_wait reads
 * and rewrites it; pad aligns the headers, the frame starts at eth. */
struct tw_frame {
	__u16 pad;
	struct ethhdr eth;
	struct iphdr ip;
	struct tcphdr tcp;
	__u8 opts[40];
};

/* end_time_wait sends the backend that sent p, its ACK of the client's FIN
 * after closing first, a reset that ends the TIME_WAIT it now holds for
 * the flow's 4-tuple, then leaves p as it was, to be delivered as usual.
 *
 * Offsets are few (one per flow to a destination at a time), so a new flow
 * soon reuses the 4-tuple at the backend, and a TIME_WAIT there refuses
 * the new SYN half the time: Linux randomises TCP timestamps per
 * connection, so the SYN's looks old (PAWS). The client's kernel gets over
 * it by resetting the backend's answer and sending the SYN again, which
 * costs a round trip and TCP_TIMEOUT_MIN. This reset is the same one,
 * sent while the flow closes: its sequence is p's acknowledgment number,
 * the only one a TIME_WAIT accepts a reset at (RFC 9293 3.10.7.4; ended,
 * as Linux does, unless the backend set net.ipv4.tcp_rfc1337). It carries
 * no timestamp, so PAWS does not apply to it.
 *
 * The reset is p reflected: MACs, addresses and ports swapped, sent back
 * out of the interface p came in on (the uplink, or the backend's veth)
 * with bpf_clone_redirect. The TCP checksum is updated, not recomputed, so
 * a segment whose checksum is still to be completed stays right. Only a
 * segment without IPv4 options or payload is reflected. It returns 0 when
 * p is as it was (reset sent or not), -1 when p could not be restored and
 * must be dropped. A global function, verified once. */
__attribute__((noinline)) int end_time_wait(struct __sk_buff *skb,
					    const struct pkt *p)
{
	__u32 len, optlen, ifindex = skb->ifindex;
	struct tw_frame f = {}, orig = {};
	__u8 mac[ETH_ALEN];
	__u16 port;
	__s64 diff;

	if (!p || p->l4_off != IP_OFF + sizeof(struct iphdr))
		return 0;
	if (bpf_skb_load_bytes(skb, 0, &f.eth,
			       offsetof(struct tw_frame, opts) -
				       offsetof(struct tw_frame, eth)) < 0)
		return 0;
	optlen = f.tcp.doff * 4;
	if (optlen < sizeof(f.tcp) || p->end != p->l4_off + optlen)
		return 0;
	optlen -= sizeof(f.tcp);
	if (optlen > sizeof(f.opts))
		return 0;
	if (optlen && bpf_skb_load_bytes(skb, TCP_CSUM_OFF + 4, f.opts,
					 optlen) < 0)
		return 0;
	len = offsetof(struct tw_frame, opts) - offsetof(struct tw_frame, eth) +
	      optlen;
	orig = f;

	__builtin_memcpy(mac, f.eth.h_dest, ETH_ALEN);
	__builtin_memcpy(f.eth.h_dest, f.eth.h_source, ETH_ALEN);
	__builtin_memcpy(f.eth.h_source, mac, ETH_ALEN);
	if (ip_header(&f.ip, 0, p->end - IP_OFF, 0x4000, IPPROTO_TCP,
		      orig.ip.daddr, orig.ip.saddr) < 0)
		return 0;
	port = f.tcp.source;
	f.tcp.source = f.tcp.dest;
	f.tcp.dest = port;
	f.tcp.seq = orig.tcp.ack_seq;
	f.tcp.ack_seq = 0;
	/* Flags RST only, no window; options become NOPs. */
	((__u8 *)&f.tcp)[13] = TH_RST;
	f.tcp.window = 0;
	f.tcp.urg_ptr = 0;
	for (__u32 i = 0; i < sizeof(f.opts); i++)
		f.opts[i] = 1;
	/* The addresses swap in the pseudo header: its sum stays. */
	diff = bpf_csum_diff((__be32 *)&orig.tcp, sizeof(f.tcp) + optlen,
			     (__be32 *)&f.tcp, sizeof(f.tcp) + optlen, 0);
	if (diff < 0)
		return 0;
	if (bpf_skb_store_bytes(skb, 0, &f.eth, len, 0) == 0 &&
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, diff, 0) == 0)
		bpf_clone_redirect(skb, ifindex, 0);
	/* The original bytes, checksum included, make p what it was. */
	if (bpf_skb_store_bytes(skb, 0, &orig.eth, len, 0) < 0)
		return -1;
	return 0;
}

/* reply_from_backend handles a packet that backend s sends to client cid's
 * identity port. It needs no state on this side: the identity block names
 * the client, the source port names s's ServerPort. */
static __always_inline int reply_from_backend(struct __sk_buff *skb,
					      const struct pkt *p,
					      const struct endpoint *s,
					      __u32 sid, __u32 cid,
					      const struct server_settings *cfg,
					      __u64 now)
{
	struct endpoint *c = bpf_map_lookup_elem(&endpoints, &cid);
	struct ct_entry *e;
	__u32 off;
	int idx;

	if (!c)
		return drop(DROP_CT_MISS);
	off = p->dport - c->ident_base;
	if (off < c->nports || off >= c->block_size)
		return drop(DROP_CT_MISS);
	idx = port_index(s, p->sport, p->proto);
	if (idx < 0)
		return drop(DROP_CT_MISS);
	if (c->ifindex) {
		e = ct_rev(cid, sid, idx, p->proto, off);
		if (!e)
			return drop(DROP_CT_MISS);
		if (ct_touch(e, p, now, 1, cid) == TW_REFLECT &&
		    end_time_wait(skb, p) < 0)
			return drop(DROP_MALFORMED);
		if (rewrite(skb, p, p->saddr, p->daddr, p->sport,
			    e->client_port, 0) < 0 ||
		    set_macs(skb, c->mac, cfg->gateway_mac) < 0)
			return drop(DROP_MALFORMED);
		count(cid, skb->len, 1);
		return bpf_redirect_peer(c->ifindex, 0);
	}
	if (!cfg->uplink_ifindex)
		return drop(DROP_NO_UPLINK);
	if (rewrite(skb, p, s->server_ip, c->server_ip, s->wire_base + idx,
		    c->wire_base + off, WIRE_ICMP_CODE) < 0)
		return drop(DROP_MALFORMED);
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
}

/* csum_apply returns checksum check updated by diff, a 32-bit partial sum
 * as bpf_csum_diff returns it (RFC 1624). */
static __always_inline __u16 csum_apply(__u16 check, __s64 diff)
{
	__u64 s = (__u16)~check;

	s += (__u32)diff;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~(__u16)s;
}

/* load_quote reads the quote of ICMP error p. It returns -1 when the quote
 * is not a first fragment of TCP or UDP without IPv4 options. */
static __always_inline int load_quote(struct __sk_buff *skb,
				      const struct pkt *p, struct quote *q)
{
	__u32 off = p->l4_off + ICMP_HLEN;

	if (off + sizeof(*q) > p->end ||
	    bpf_skb_load_bytes(skb, off, q, sizeof(*q)) < 0)
		return -1;
	if (q->ip.version != 4 || q->ip.ihl != 5 ||
	    (q->ip.frag_off & bpf_htons(0x1fff)))
		return -1;
	if (q->ip.protocol != IPPROTO_TCP && q->ip.protocol != IPPROTO_UDP)
		return -1;
	return 0;
}

/* translate_quote rewrites the quote of ICMP error p (read into q) to the
 * given addresses and ports (host order). It fixes the quoted IPv4
 * checksum, the quoted UDP checksum, the quoted TCP checksum when the quote
 * reaches it, and the error's own ICMP checksum, all incrementally. */
static __always_inline int translate_quote(struct __sk_buff *skb,
					   const struct pkt *p,
					   const struct quote *q, __u32 saddr,
					   __u32 daddr, __u16 sport, __u16 dport)
{
	__u32 off = p->l4_off + ICMP_HLEN;
	__u32 tcp_csum = off + sizeof(struct iphdr) +
			 offsetof(struct tcphdr, check);
	struct quote n = *q;
	__s64 dip, dl4, dall;

	n.ip.saddr = saddr;
	n.ip.daddr = daddr;
	n.sport = bpf_htons(sport);
	n.dport = bpf_htons(dport);
	dip = bpf_csum_diff((__be32 *)&q->ip.saddr, 8, (__be32 *)&n.ip.saddr,
			    8, 0);
	if (dip < 0)
		return -1;
	/* The L4 checksum covers the addresses (pseudo header) and ports. */
	dl4 = bpf_csum_diff((__be32 *)&q->sport, 4, (__be32 *)&n.sport, 4,
			    (__u32)dip);
	if (dl4 < 0)
		return -1;
	n.ip.check = csum_apply(q->ip.check, dip);
	if (q->ip.protocol == IPPROTO_UDP && q->w3) {
		n.w3 = csum_apply(q->w3, dl4);
		if (!n.w3)
			n.w3 = 0xffff;
	}
	dall = bpf_csum_diff((__be32 *)q, sizeof(*q), (__be32 *)&n, sizeof(n),
			     0);
	if (dall < 0 || bpf_l3_csum_replace(skb, p->csum_off, 0, dall, 0) < 0 ||
	    bpf_skb_store_bytes(skb, off, &n, sizeof(n), 0) < 0)
		return -1;
	if (q->ip.protocol == IPPROTO_TCP && tcp_csum + 2 <= p->end) {
		__u16 old, new;

		if (bpf_skb_load_bytes(skb, tcp_csum, &old, 2) < 0)
			return -1;
		new = csum_apply(old, dl4);
		if (bpf_l3_csum_replace(skb, p->csum_off, old, new, 2) < 0 ||
		    bpf_skb_store_bytes(skb, tcp_csum, &new, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/* error_from_container handles an ICMP error (destination unreachable or
 * time exceeded) that container cid sends about a packet it received: the
 * quote holds that packet as cid saw it, and leaves holding it as its
 * sender sent it, so the sender's kernel finds its socket. It is a global
 * function so the verifier checks it once, not on every path of
 * from_container. */
__attribute__((noinline)) int error_from_container(struct __sk_buff *skb,
						   struct pkt *p, __u32 cid)
{
	struct server_settings *cfg = get_settings();
	struct endpoint *x, *peer;
	__u16 sport, dport, mask;
	struct ident_key ik = {};
	struct ct_entry *e;
	struct quote q;
	struct ct_key k;
	__u32 pid, coff, *id;
	int idx;

	if (!p || !cfg || !cfg->block_size)
		return drop(DROP_MALFORMED);
	x = bpf_map_lookup_elem(&endpoints, &cid);
	if (!x)
		return drop(DROP_UNKNOWN_IFINDEX);
	if (load_quote(skb, p, &q) < 0)
		return drop(DROP_UNSUPPORTED);
	if (q.ip.daddr != x->ip)
		return drop(DROP_CT_MISS);
	sport = bpf_ntohs(q.sport);
	dport = bpf_ntohs(q.dport);
	mask = ~(cfg->block_size - 1);

	/* About a reply to one of x's own flows. */
	k = (struct ct_key){
		.scope = cid,
		.saddr = x->ip,
		.daddr = q.ip.saddr,
		.sport = dport,
		.dport = sport,
		.proto = q.ip.protocol,
		.dir = CT_OUT,
	};
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && e->kind == CT_KIND_EGRESS) {
		/* About a packet from the outside: it leaves as the reply to
		 * what x sent there. */
		if (!cfg->uplink_ifindex)
			return drop(DROP_NO_UPLINK);
		if (translate_quote(skb, p, &q, q.ip.saddr, x->server_ip,
				    sport, x->wire_base + e->offset) < 0 ||
		    set_addrs(skb, p, x->server_ip, q.ip.saddr) < 0)
			return drop(DROP_MALFORMED);
		return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
	}
	if (e) {
		pid = e->backend;
		peer = bpf_map_lookup_elem(&endpoints, &pid);
		if (!peer)
			return drop(DROP_CT_MISS);
		if (peer->ifindex) {
			if (translate_quote(skb, p, &q, q.ip.saddr, x->ip,
					    sport, x->ident_base + e->offset) < 0 ||
			    set_addrs(skb, p, x->ip, peer->ip) < 0 ||
			    set_macs(skb, peer->mac, cfg->gateway_mac) < 0)
				return drop(DROP_MALFORMED);
			count(pid, skb->len, 1);
			return bpf_redirect_peer(peer->ifindex, 0);
		}
		if (!cfg->uplink_ifindex)
			return drop(DROP_NO_UPLINK);
		if (translate_quote(skb, p, &q, peer->server_ip, x->server_ip,
				    peer->wire_base + e->port_index,
				    x->wire_base + e->offset) < 0 ||
		    set_addrs(skb, p, x->server_ip, peer->server_ip) < 0)
			return drop(DROP_MALFORMED);
		return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
	}

	/* About a request x received as a backend: the quoted source is a
	 * client's identity. */
	idx = port_index(x, dport, q.ip.protocol);
	if (idx < 0)
		return drop(DROP_CT_MISS);
	ik.net_id = x->net_id;
	ik.ip = q.ip.saddr;
	ik.base = sport & mask;
	id = bpf_map_lookup_elem(&ident_blocks, &ik);
	if (!id)
		return drop(DROP_CT_MISS);
	pid = *id;
	peer = bpf_map_lookup_elem(&endpoints, &pid);
	if (!peer)
		return drop(DROP_CT_MISS);
	coff = sport - peer->ident_base;
	if (coff < peer->nports || coff >= peer->block_size)
		return drop(DROP_CT_MISS);
	if (peer->ifindex) {
		e = ct_rev(pid, cid, idx, q.ip.protocol, coff);
		if (!e)
			return drop(DROP_CT_MISS);
		if (translate_quote(skb, p, &q, peer->ip, x->ip,
				    e->client_port, dport) < 0 ||
		    set_addrs(skb, p, x->ip, peer->ip) < 0 ||
		    set_macs(skb, peer->mac, cfg->gateway_mac) < 0)
			return drop(DROP_MALFORMED);
		count(pid, skb->len, 1);
		return bpf_redirect_peer(peer->ifindex, 0);
	}
	if (!cfg->uplink_ifindex)
		return drop(DROP_NO_UPLINK);
	if (translate_quote(skb, p, &q, peer->server_ip, x->server_ip,
			    peer->wire_base + coff, x->wire_base + idx) < 0 ||
	    set_addrs(skb, p, x->server_ip, peer->server_ip) < 0)
		return drop(DROP_MALFORMED);
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
}

/* error_from_network handles an ICMP error that reaches the uplink: from a
 * router of the fabric, from a peer server's kernel, or translated by a
 * peer's error_from_container. When its quote is a packet a local endpoint
 * sent over the wire, the error is translated to that endpoint's identity
 * and put into it, coming from the peer it was talking to; otherwise it is
 * the server's own and passes untouched. */
__attribute__((noinline)) int error_from_network(struct __sk_buff *skb,
						 struct pkt *p)
{
	struct server_settings *cfg = get_settings();
	struct wire_key wk = {};
	struct endpoint *ep, *peer;
	__u16 sport, dport, mask;
	__u32 eid, pid, off, coff, idx, *id;
	struct ct_entry *e;
	struct quote q;

	if (!p || !cfg || !cfg->block_size)
		return TC_ACT_OK;
	if (load_quote(skb, p, &q) < 0)
		return TC_ACT_OK;
	sport = bpf_ntohs(q.sport);
	dport = bpf_ntohs(q.dport);
	mask = ~(cfg->block_size - 1);
	wk.server_ip = q.ip.saddr;
	wk.base = sport & mask;
	id = bpf_map_lookup_elem(&wire_blocks, &wk);
	if (!id)
		return TC_ACT_OK;
	eid = *id;
	ep = bpf_map_lookup_elem(&endpoints, &eid);
	if (!ep || !ep->ifindex)
		return drop(DROP_UNKNOWN_PEER);
	if (p->ttl <= 1)
		return drop(DROP_TTL);
	off = sport - ep->wire_base;

	if (off >= ep->nports) {
		/* About a packet of ep's own flow at offset off: the quoted
		 * destination names the backend and its port index, or is
		 * outside the cluster. */
		peer = wire_endpoint(q.ip.daddr, dport, mask, &pid);
		if (!peer) {
			struct ct_key k = egress_key(eid, q.ip.daddr, dport,
						     q.ip.protocol, off);

			e = bpf_map_lookup_elem(&conntrack, &k);
			if (!e || e->kind != CT_KIND_EGRESS)
				return drop(DROP_UNKNOWN_PEER);
			/* From whoever sent it: a router outside is no
			 * secret, as behind any NAT. */
			if (translate_quote(skb, p, &q, ep->ip, q.ip.daddr,
					    e->client_port, dport) < 0 ||
			    set_addrs(skb, p, p->saddr, ep->ip) < 0 ||
			    set_macs(skb, ep->mac, cfg->gateway_mac) < 0)
				return drop(DROP_MALFORMED);
			count(eid, skb->len, 1);
			return bpf_redirect_peer(ep->ifindex, 0);
		}
		idx = dport - peer->wire_base;
		if (idx >= peer->nports)
			return drop(DROP_UNKNOWN_PEER);
		e = ct_rev(eid, pid, idx, q.ip.protocol, off);
		if (!e)
			return drop(DROP_CT_MISS);
		if (translate_quote(skb, p, &q, ep->ip, peer->ip,
				    e->client_port, e->service_port) < 0)
			return drop(DROP_MALFORMED);
	} else {
		/* About a reply ep sent as a backend: the quoted destination
		 * is its client's wire port. */
		if (off >= MAX_PORTS || ep->ports[off].proto != q.ip.protocol)
			return drop(DROP_NO_SERVICE);
		peer = wire_endpoint(q.ip.daddr, dport, mask, &pid);
		if (!peer)
			return drop(DROP_UNKNOWN_PEER);
		coff = dport - peer->wire_base;
		if (coff < peer->nports)
			return drop(DROP_UNKNOWN_PEER);
		if (translate_quote(skb, p, &q, ep->ip, peer->ip,
				    ep->ports[off].port,
				    peer->ident_base + coff) < 0)
			return drop(DROP_MALFORMED);
	}
	if (set_addrs(skb, p, peer->ip, ep->ip) < 0 ||
	    set_macs(skb, ep->mac, cfg->gateway_mac) < 0)
		return drop(DROP_MALFORMED);
	count(eid, skb->len, 1);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* A frame the programs build: pad puts the IPv4 header on a 4-byte
 * boundary, so every header is naturally aligned; the frame starts at
 * eth. */
struct rst_frame {
	__u16 pad;
	struct ethhdr eth;
	struct iphdr ip;
	struct tcphdr tcp;
};

#define FRAME_LEN(f) (sizeof(f) - offsetof(typeof(f), eth))
_Static_assert(offsetof(struct rst_frame, tcp) ==
		       offsetof(struct rst_frame, eth) + ETH_HLEN + 20,
	       "rst_frame has holes");

/* reset_tcp turns TCP segment p, which its client sent, into the reset a
 * host without a listener would answer (RFC 9293 3.10.7.1): from the
 * address and port it was sent to, RST|ACK acknowledging a SYN (or
 * whatever the segment occupied), or RST with the segment's ACK number as
 * sequence. The TCP checksum is updated, not recomputed, so a segment
 * whose checksum is still to be completed (CHECKSUM_PARTIAL, as a
 * container's own segments are) stays consistent: the part covering the
 * bytes is applied only when the checksum is complete, the pseudo header's
 * length in both cases. */
static __always_inline int reset_tcp(struct __sk_buff *skb,
				     const struct pkt *p)
{
	struct {
		__u32 saddr;
		__u32 daddr;
		__u8 zero;
		__u8 proto;
		__be16 len;
	} ph;
	__u32 l4len = p->end - p->l4_off, used;
	struct rst_frame f;
	struct tcphdr th, h;
	__u8 mac[ETH_ALEN];
	__s64 sum;

	if (bpf_skb_load_bytes(skb, 0, &f.eth, sizeof(f.eth)) < 0 ||
	    bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0)
		return TC_ACT_SHOT;
	if (th.rst || th.doff < 5 || th.doff * 4 > l4len)
		return TC_ACT_SHOT;
	used = l4len - th.doff * 4 + th.syn + th.fin;

	__builtin_memcpy(mac, f.eth.h_dest, ETH_ALEN);
	__builtin_memcpy(f.eth.h_dest, f.eth.h_source, ETH_ALEN);
	__builtin_memcpy(f.eth.h_source, mac, ETH_ALEN);
	if (ip_header(&f.ip, 0, sizeof(f.ip) + sizeof(f.tcp), 0x4000,
		      IPPROTO_TCP, p->daddr, p->saddr) < 0)
		return TC_ACT_SHOT;
	h = (struct tcphdr){
		.source = th.dest,
		.dest = th.source,
		.doff = 5,
		.rst = 1,
	};
	if (th.ack) {
		h.seq = th.ack_seq;
	} else {
		h.ack_seq = bpf_htonl(bpf_ntohl(th.seq) + used);
		h.ack = 1;
	}
	/* A complete checksum C = ~(P + D) covers the pseudo header P and
	 * the old header and payload D. The diff P + H - ~C = P + H + C
	 * makes it ~(P + H) for the new header H; the length in the pseudo
	 * header follows separately. */
	ph.saddr = p->saddr;
	ph.daddr = p->daddr;
	ph.zero = 0;
	ph.proto = IPPROTO_TCP;
	ph.len = bpf_htons(l4len);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&h, sizeof(h), (__u32)sum);
	if (sum < 0)
		return TC_ACT_SHOT;
	f.tcp = h;
	f.tcp.check = th.check;
	if (bpf_skb_store_bytes(skb, 0, &f.eth, FRAME_LEN(f), 0) < 0 ||
	    bpf_skb_change_tail(skb, FRAME_LEN(f), 0) < 0 ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0,
				csum_fold32((__u32)sum + (__u64)th.check),
				0) < 0 ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, bpf_htons(l4len),
				bpf_htons(sizeof(f.tcp)),
				BPF_F_PSEUDO_HDR | 2) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

struct unreach_frame {
	__u16 pad;
	struct ethhdr eth;
	struct iphdr ip;
	struct icmp_echo icmp; /* type, code, checksum and 4 unused bytes */
	struct quote q;
};

_Static_assert(offsetof(struct unreach_frame, q) ==
		       offsetof(struct unreach_frame, eth) + ETH_HLEN + 20 +
			       ICMP_HLEN,
	       "unreach_frame has holes");

/* unreach_udp turns UDP datagram p, which its client sent, into the ICMP
 * port unreachable a host without a listener would answer, quoting the
 * datagram's IPv4 header and first 8 bytes, so the client's socket sees
 * ECONNREFUSED. */
static __always_inline int unreach_udp(struct __sk_buff *skb,
				       const struct pkt *p)
{
	struct unreach_frame f = {};
	__u8 mac[ETH_ALEN];
	__s64 sum;

	if (bpf_skb_load_bytes(skb, 0, &f.eth, sizeof(f.eth)) < 0 ||
	    bpf_skb_load_bytes(skb, IP_OFF, &f.q, sizeof(f.q)) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, f.eth.h_dest, ETH_ALEN);
	__builtin_memcpy(f.eth.h_dest, f.eth.h_source, ETH_ALEN);
	__builtin_memcpy(f.eth.h_source, mac, ETH_ALEN);
	if (ip_header(&f.ip, 0xc0, FRAME_LEN(f) - ETH_HLEN, 0, IPPROTO_ICMP,
		      p->daddr, p->saddr) < 0)
		return TC_ACT_SHOT;
	f.icmp.type = ICMP_DEST_UNREACH;
	f.icmp.code = 3; /* port unreachable */
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&f.icmp,
			    sizeof(f.icmp) + sizeof(f.q), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	f.icmp.checksum = ~csum_fold32((__u32)sum);
	if (bpf_skb_change_tail(skb, FRAME_LEN(f), 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &f.eth, FRAME_LEN(f), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* refuse answers packet p instead of dropping it silently, so its sender
 * fails at once instead of waiting for its own timeout: TCP gets a reset,
 * UDP from container cid (not 0) a port unreachable, both from the address
 * p was sent to and sent back where p came from. Anything else (ICMP echo,
 * a reset, IPv4 options, UDP from the network) is dropped. Every case
 * counts as reason. A global function, verified once. */
__attribute__((noinline)) int refuse(struct __sk_buff *skb, struct pkt *p,
				     __u32 cid, __u32 reason)
{
	int ret = TC_ACT_SHOT;

	count_drop(reason);
	if (!p || p->l4_off != IP_OFF + sizeof(struct iphdr))
		return TC_ACT_SHOT;
	if (p->proto == IPPROTO_TCP)
		ret = reset_tcp(skb, p);
	else if (p->proto == IPPROTO_UDP && cid)
		ret = unreach_udp(skb, p);
	if (ret == TC_ACT_REDIRECT && cid)
		count(cid, skb->len, 1);
	return ret;
}

/* flow_quota_allows says whether local endpoint cid may open one more
 * flow (struct flow_quota). */
static __always_inline int flow_quota_allows(__u32 cid)
{
	__u32 zero = 0, *limit = bpf_map_lookup_elem(&flow_limit, &zero);
	struct flow_quota *q;
	struct flow_count *n;
	__s64 held;

	if (!limit || !*limit)
		return 1;
	n = bpf_map_lookup_elem(&flow_counts, &cid);
	if (!n)
		return 1;
	q = bpf_map_lookup_elem(&flow_quota, &cid);
	if (q)
		held = (__s64)q->live + (__s64)(n->opened - q->opened) -
		       (__s64)(n->closed - q->closed);
	else
		held = (__s64)(n->opened - n->closed);
	return held < (__s64)*limit;
}

/* reject refuses packet p of client cid whose new flow found no free
 * offset (offsets_full). */
static __always_inline int reject(struct __sk_buff *skb, struct pkt *p,
				  __u32 cid)
{
	return refuse(skb, p, cid, DROP_OFFSETS_FULL);
}

/* Egress: flows from a container to an address outside every daoli network
 * (see ../doc.go, Egress). They leave as ServerIP_A:wire_C+offset, with an
 * offset of the client's wire block that is unique per outside
 * destination, and come back to that port, which names the client. */

/* outside_kind returns what the outside map says of addr, or 0: outside
 * every daoli network. */
static __always_inline __u32 outside_kind(__u32 addr)
{
	struct outside_key k = { .prefixlen = 32, .addr = addr };
	__u32 *v = bpf_map_lookup_elem(&outside, &k);

	return v ? *v : 0;
}

/* egress_verdict returns 0 when client c may send p to its destination
 * outside the cluster, else the drop reason: no_service for an address of
 * a daoli network (isolation: it never leaves), egress_denied for one the
 * client's network may not reach, or a locator's wire port, no_uplink
 * while there is no way out. */
static __always_inline __u32 egress_verdict(const struct endpoint *c,
					    const struct pkt *p,
					    const struct server_settings *cfg)
{
	struct egress_key k = { .prefixlen = 64, .net_id = c->net_id,
				.addr = p->daddr };

	switch (outside_kind(p->daddr)) {
	case OUTSIDE_INTERNAL:
		return DROP_NO_SERVICE;
	case OUTSIDE_LOCATOR:
		if (p->proto != IPPROTO_ICMP && cfg->wire_last &&
		    p->dport >= cfg->wire_first && p->dport <= cfg->wire_last)
			return DROP_EGRESS_DENIED;
	}
	if (!bpf_map_lookup_elem(&egress, &k))
		return DROP_EGRESS_DENIED;
	if (!cfg->uplink_ifindex)
		return DROP_NO_UPLINK;
	return 0;
}

/* rewrite_echo sets the addresses of ICMP echo p and its identifier, the
 * client's port, leaving the IPv4 identification alone: outside hosts
 * speak plain ICMP. */
static __always_inline int rewrite_echo(struct __sk_buff *skb,
					const struct pkt *p, __u32 saddr,
					__u32 daddr, __u16 id)
{
	if (set_addrs(skb, p, saddr, daddr) < 0 ||
	    set_word(skb, p, p->l4_off + 4, p->icmp_id, bpf_htons(id), 1) < 0)
		return -1;
	return 0;
}

/* egress_send sends packet p, a flow to the outside, out of the uplink
 * as saddr:sport (ServerIP:wire_C+offset). A global function, verified
 * once. */
__attribute__((noinline)) int egress_send(struct __sk_buff *skb,
					  struct pkt *p, __u32 saddr,
					  __u32 sport, __u32 uplink)
{
	if (!p)
		return drop(DROP_MALFORMED);
	if (p->proto == IPPROTO_ICMP) {
		if (rewrite_echo(skb, p, saddr, p->daddr, sport) < 0)
			return drop(DROP_MALFORMED);
	} else if (rewrite(skb, p, saddr, p->daddr, sport, p->dport, 0) < 0) {
		return drop(DROP_MALFORMED);
	}
	return bpf_redirect_neigh(uplink, NULL, 0, 0);
}

/* egress_new says whether packet p of client c may open a flow to its
 * destination outside every daoli network: 0, or the drop reason. An echo
 * reply opens nothing, and a TCP flow must start with a SYN: a segment of
 * a flow the dataplane does not know (one that followed its container to
 * this server, say) gets CT_MISS, answered with a reset. */
static __always_inline __u32 egress_new(const struct endpoint *c,
					const struct pkt *p,
					const struct server_settings *cfg)
{
	__u32 reason;

	if (p->proto == IPPROTO_ICMP && !is_request(p))
		return DROP_NO_SERVICE;
	reason = egress_verdict(c, p, cfg);
	if (reason)
		return reason;
	if (p->proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TH_SYN | TH_ACK | TH_RST)) != TH_SYN)
		return DROP_CT_MISS;
	return 0;
}

/* NEW_FLOW is what to_outside returns when p must start a new flow. */
#define NEW_FLOW 0x7fffffff

/* to_outside sends packet p of client c (id cid), whose CT_OUT entry e
 * says it goes outside, on its way: source-translated to
 * ServerIP:wire_C+offset, out of the uplink. The verdict is checked on
 * every packet, so a revoked egress stops live flows too. It returns
 * NEW_FLOW when the flow's offset is no longer its own (the LRU evicted it,
 * or a new flow took it once this one was over). A global function,
 * verified once. */
__attribute__((noinline)) int to_outside(struct __sk_buff *skb, struct pkt *p,
					 const struct endpoint *c, __u32 cid,
					 struct ct_entry *e)
{
	struct server_settings *cfg = get_settings();
	struct ct_entry *rev;
	struct ct_key rk;
	__u32 reason;

	if (!p || !c || !e || !cfg)
		return drop(DROP_MALFORMED);
	rk = egress_key(cid, p->daddr, p->dport, p->proto, e->offset);
	rev = bpf_map_lookup_elem(&conntrack, &rk);
	if (!rev || rev->kind != CT_KIND_EGRESS ||
	    rev->client_port != e->client_port)
		return NEW_FLOW;
	reason = egress_verdict(c, p, cfg);
	if (reason)
		return drop(reason);
	if (p->proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TH_SYN | TH_ACK)) == TH_SYN && rev->flags)
		ct_reopen(rev, cid);
	if (ct_touch(rev, p, bpf_ktime_get_ns(), 0, cid) == TW_RESET &&
	    reset_flag(skb, p) < 0)
		return drop(DROP_MALFORMED);
	return egress_send(skb, p, c->server_ip, c->wire_base + rev->offset,
			   cfg->uplink_ifindex);
}

/* from_outside handles packet p from an address outside the cluster to
 * offset off of endpoint ep's (id eid) wire block: a reply of one of its
 * flows to the outside, translated back to what the endpoint sent to and
 * put into it. A TCP segment of no such flow gets the reset a host without
 * the connection sends; other misses are dropped (ct_miss), except ICMP
 * echo replies, which are the host's own pings and pass. A global
 * function, verified once. */
__attribute__((noinline)) int from_outside(struct __sk_buff *skb,
					   struct pkt *p,
					   const struct endpoint *ep, __u32 eid,
					   __u32 off)
{
	struct server_settings *cfg = get_settings();
	int echo = p && p->proto == IPPROTO_ICMP;
	struct ct_entry *e;
	struct ct_key k;

	if (!p || !ep || !cfg)
		return TC_ACT_OK;
	if (!ep->ifindex || off < ep->nports || off >= ep->block_size)
		return echo ? TC_ACT_OK : drop(DROP_UNKNOWN_PEER);
	k = egress_key(eid, p->saddr, p->sport, p->proto, off);
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (!e || e->kind != CT_KIND_EGRESS) {
		if (echo)
			return TC_ACT_OK;
		if (p->proto == IPPROTO_TCP)
			return refuse(skb, p, 0, DROP_CT_MISS);
		return drop(DROP_CT_MISS);
	}
	if (p->ttl <= 1)
		return drop(DROP_TTL);
	if (ct_touch(e, p, bpf_ktime_get_ns(), 1, eid) == TW_REFLECT &&
	    end_time_wait(skb, p) < 0)
		return drop(DROP_MALFORMED);
	if (echo) {
		if (rewrite_echo(skb, p, p->saddr, ep->ip, e->client_port) < 0)
			return drop(DROP_MALFORMED);
	} else if (rewrite(skb, p, p->saddr, ep->ip, p->sport, e->client_port,
			   0) < 0) {
		return drop(DROP_MALFORMED);
	}
	if (set_macs(skb, ep->mac, cfg->gateway_mac) < 0)
		return drop(DROP_MALFORMED);
	count(eid, skb->len, 1);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* Ingress: flows from a client outside the cluster to a published port of
 * any server (see ../doc.go, Ingress). The dialled server X is the flow's
 * client side, under the scope GATEWAY_ID: it picks the backend, takes an
 * offset of its gateway block and sends the flow to the backend's server
 * B as ServerIP_X:gateway+offset -> ServerIP_B:wire_S+index, with the
 * client's address in an IPv4 option until the backend answers. B keeps
 * the client (the ingress map), so the backend sees the client's true
 * address, and sends the answers back to X, which sends them on from the
 * published port.
 *
 * The backend sees the client's own address and port, so a new flow on a
 * reused gateway offset is another 4-tuple at the backend: the TIME_WAIT
 * endings of a container's flows (ct_touch's TW_*) are not needed, and
 * ingress leaves them out. */

/* is_local_ip reports whether addr is one of this server's locators. */
static __always_inline int is_local_ip(const struct server_settings *cfg,
				       __u32 addr)
{
	for (__u32 i = 0; i < MAX_LOCAL_IPS; i++) {
		if (i >= cfg->local_ip_count)
			break;
		if (cfg->local_ips[i] == addr)
			return 1;
	}
	return 0;
}

static __always_inline struct gateway_settings *get_gateway(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&gateway, &zero);
}

/* in_gateway reports whether port lies in the gateway block. */
static __always_inline int in_gateway(const struct gateway_settings *gw,
				      const struct server_settings *cfg,
				      __u16 port)
{
	return gw && gw->base && port >= gw->base &&
	       port - gw->base < cfg->block_size;
}

/* ip_fix sets the IPv4 header's length fields for a header of ihl words
 * and a packet of tot_len bytes, and recomputes its checksum. It returns
 * 0, or -1. */
static __always_inline int ip_fix(struct __sk_buff *skb, __u8 ihl,
				  __u16 tot_len)
{
	__u8 hdr[28] = {};
	__u32 len = ihl * 4;
	__s64 sum;

	if (len != 20 && len != 28)
		return -1;
	if (bpf_skb_load_bytes(skb, IP_OFF, hdr, len) < 0)
		return -1;
	hdr[0] = 0x40 | ihl;
	hdr[2] = tot_len >> 8;
	hdr[3] = tot_len & 0xff;
	hdr[10] = 0;
	hdr[11] = 0;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)hdr, len, 0);
	if (sum < 0)
		return -1;
	*(__u16 *)&hdr[10] = ~csum_fold32((__u32)sum);
	return bpf_skb_store_bytes(skb, IP_OFF, hdr, len, 0);
}

/* ingress_tag puts the client's address and port in an IPv4 option of
 * packet p (no options yet), whose IPv4 length is len. */
static __always_inline int ingress_tag(struct __sk_buff *skb, __u32 len,
				       __u32 client, __u16 port)
{
	struct ingress_opt o = {
		.type = INGRESS_OPT,
		.len = INGRESS_OPT_LEN,
		.port = bpf_htons(port),
		.addr = client,
	};

	if (bpf_skb_adjust_room(skb, INGRESS_OPT_LEN, BPF_ADJ_ROOM_NET, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF + 20, &o, sizeof(o), 0) < 0 ||
	    ip_fix(skb, 7, len + INGRESS_OPT_LEN) < 0)
		return -1;
	return 0;
}

/* ingress_key_of returns the ingress map's key (see struct ingress_key). */
static __always_inline struct ingress_key ingress_key_of(__u32 backend,
							  __u32 addr, __u16 port,
							  __u16 sport, __u8 proto,
							  __u8 dir)
{
	return (struct ingress_key){
		.backend = backend,
		.addr = addr,
		.port = port,
		.sport = sport,
		.proto = proto,
		.dir = dir,
	};
}

/* gateway_key returns the CT_OUT key of the gateway's flow that packet p,
 * from a client outside, belongs to. */
static __always_inline struct ct_key gateway_key(const struct pkt *p)
{
	return (struct ct_key){
		.scope = GATEWAY_ID,
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.dir = CT_OUT,
	};
}

/* ingress_send sends packet p of the gateway's flow out (its CT_OUT
 * entry: backend s, port index, offset) and rev (its CT_REV entry) on:
 * into s when it runs here, with only the destination translated, else to
 * s's server from the dialled address and the gateway port of the flow,
 * tagged with the client until the backend answers. A global function,
 * verified once. */
__attribute__((noinline)) int ingress_send(struct __sk_buff *skb,
					   struct pkt *p,
					   const struct endpoint *s,
					   const struct ct_entry *out,
					   const struct ct_entry *rev)
{
	struct server_settings *cfg = get_settings();
	struct gateway_settings *gw = get_gateway();
	struct ingress_entry v = {};
	struct ingress_key k;
	__u32 mtu = 0, idx;
	__u16 port;
	int tag;

	if (!p || !s || !out || !rev || !cfg || !gw)
		return drop(DROP_MALFORMED);
	tag = !(rev->flags & CT_REPLIED);
	idx = out->port_index;
	asm volatile("" : "+r"(idx));
	if (idx >= MAX_PORTS)
		return drop(DROP_NO_BACKEND);
	port = s->ports[idx].port;
	if (s->ifindex) {
		/* Until answered, and whenever the backend's server does not
		 * know the flow (it moved here while the flow was open). */
		k = ingress_key_of(out->backend, p->saddr, p->sport, port,
				   p->proto, IN_REPLY);
		if (!tag) {
			struct ingress_entry *in =
				bpf_map_lookup_elem(&ingress, &k);

			tag = !in || !in->local || in->offset != out->offset ||
			      in->gateway != p->daddr;
		}
		if (tag) {
			v.client = p->saddr;
			v.gateway = p->daddr;
			v.client_port = p->sport;
			v.gateway_port = p->dport;
			v.index = idx;
			v.offset = out->offset;
			v.local = 1;
			if (bpf_map_update_elem(&ingress, &k, &v, BPF_ANY) < 0)
				return drop(DROP_OFFSETS_FULL);
		}
		if (rewrite(skb, p, p->saddr, s->ip, p->sport,
			    port, 0) < 0 ||
		    set_macs(skb, s->mac, cfg->gateway_mac) < 0)
			return drop(DROP_MALFORMED);
		count(out->backend, skb->len, 1);
		return bpf_redirect_peer(s->ifindex, 0);
	}
	if (!cfg->uplink_ifindex)
		return drop(DROP_NO_UPLINK);
	if (tag && bpf_check_mtu(skb, cfg->uplink_ifindex, &mtu,
				 INGRESS_OPT_LEN, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return drop(DROP_TOO_BIG);
	if (rewrite(skb, p, p->daddr, s->server_ip, gw->base + out->offset,
		    s->wire_base + idx, 0) < 0)
		return drop(DROP_MALFORMED);
	if (tag && ingress_tag(skb, p->end - IP_OFF, rev->backend,
			       rev->client_port) < 0)
		return drop(DROP_MALFORMED);
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
}

/* ingress_front handles packet p from a client outside to published port
 * p->dport of this server's locator p->daddr, which leads to service *pk,
 * when it belongs to a flow of the gateway (scope GATEWAY_ID, a flow in
 * conntrack as a container's is) whose backend is active. It returns
 * NEW_FLOW otherwise: for a new flow, or one whose backend is gone, which
 * starts again on another (a TCP connection then gets a reset). A global
 * function, verified once. */
__attribute__((noinline)) int ingress_front(struct __sk_buff *skb,
					    struct pkt *p)
{
	struct ct_entry *e, *rev;
	struct endpoint *s;
	struct ct_key k;
	__u32 sid;

	if (!p)
		return drop(DROP_MALFORMED);
	k = gateway_key(p);
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (!e || e->kind != CT_KIND_INGRESS)
		return NEW_FLOW;
	k = rev_key(GATEWAY_ID, e->backend, e->port_index, p->proto);
	k.sport = e->offset;
	rev = bpf_map_lookup_elem(&conntrack, &k);
	if (!rev || rev->kind != CT_KIND_INGRESS ||
	    rev->backend != p->saddr || rev->client_port != p->sport ||
	    rev->service_port != p->dport)
		return NEW_FLOW;
	sid = e->backend;
	s = bpf_map_lookup_elem(&endpoints, &sid);
	if (!s || s->state != ENDPOINT_ACTIVE) {
		bpf_map_delete_elem(&conntrack, &k);
		return NEW_FLOW;
	}
	if (p->proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TH_SYN | TH_ACK)) == TH_SYN && rev->flags)
		rev->flags = 0;
	ct_touch(rev, p, bpf_ktime_get_ns(), 0, 0);
	return ingress_send(skb, p, s, e, rev);
}

/* ingress_new starts the gateway's flow for packet p to service *pk: it
 * picks the backend as a container's new flow does (Maglev or failover),
 * takes an offset of the gateway block towards the backend's port and
 * sends p on. A new TCP flow must start with a SYN; another segment gets
 * a reset. A global function, verified once. */
__attribute__((noinline)) int ingress_new(struct __sk_buff *skb,
					  struct pkt *p,
					  const struct service_key *pk)
{
	struct server_settings *cfg = get_settings();
	struct ct_entry *rev, v = {};
	struct service *svc;
	struct endpoint *s;
	struct ct_key k;
	__u32 sid;
	int idx;

	if (!p || !pk || !cfg)
		return drop(DROP_MALFORMED);
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & TH_RST)
			return drop(DROP_CT_MISS);
		if ((p->tcp_flags & (TH_SYN | TH_ACK)) != TH_SYN)
			return refuse(skb, p, 0, DROP_CT_MISS);
	}
	svc = bpf_map_lookup_elem(&services, pk);
	if (!svc)
		return drop(DROP_NO_SERVICE);
	sid = select_backend(svc, p);
	s = bpf_map_lookup_elem(&endpoints, &sid);
	if (!s)
		return drop(DROP_NO_BACKEND);
	idx = port_index(s, pk->port, p->proto);
	if (idx < 0)
		return drop(DROP_NO_BACKEND);
	v.last_seen = bpf_ktime_get_ns();
	v.backend = p->saddr;
	v.port_index = idx;
	v.client_port = p->sport;
	v.service_port = p->dport;
	v.proto = p->proto;
	v.kind = CT_KIND_INGRESS;
	ct_touch(&v, p, v.last_seen, 0, 0);
	k = rev_key(GATEWAY_ID, sid, idx, p->proto);
	if (alloc_offset(&k, 0, cfg->block_size, NO_PREFER, &v) < 0)
		return refuse(skb, p, 0, DROP_OFFSETS_FULL);
	k.sport = v.offset;
	rev = bpf_map_lookup_elem(&conntrack, &k);
	if (!rev)
		return drop(DROP_OFFSETS_FULL);
	v.backend = sid;
	k = gateway_key(p);
	if (bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY) < 0) {
		k = rev_key(GATEWAY_ID, sid, idx, p->proto);
		ct_forget(&k, v.offset);
		return drop(DROP_OFFSETS_FULL);
	}
	return ingress_send(skb, p, s, &v, rev);
}

/* ingress_answer handles packet p from backend s (id sid, port index idx)
 * to the gateway block of this server: an answer to an outside client of
 * one of the gateway's flows, sent on to the client from the published
 * port it dialled. A global function, verified once. */
__attribute__((noinline)) int ingress_answer(struct __sk_buff *skb,
					     struct pkt *p, __u32 sid,
					     __u32 idx)
{
	struct server_settings *cfg = get_settings();
	struct gateway_settings *gw = get_gateway();
	struct ct_entry *e;

	if (!p || !cfg || !gw || !gw->base)
		return drop(DROP_MALFORMED);
	e = ct_rev(GATEWAY_ID, sid, idx, p->proto, p->dport - gw->base);
	if (!e || e->kind != CT_KIND_INGRESS)
		return drop(DROP_CT_MISS);
	if (p->ttl <= 1)
		return drop(DROP_TTL);
	if (!cfg->uplink_ifindex)
		return drop(DROP_NO_UPLINK);
	ct_touch(e, p, bpf_ktime_get_ns(), 1, 0);
	if (rewrite(skb, p, p->daddr, e->backend, e->service_port,
		    e->client_port, 0) < 0)
		return drop(DROP_MALFORMED);
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
}

/* ingress_back handles packet p from the gateway port of another server's
 * locator to port index idx of local endpoint ep (id eid): an
 * ingress flow's packet, translated to what the client sent, from its
 * true address. The packet that carries the client (ingress_opt) records
 * it, both ways; the others find it. A TCP segment of an unknown flow
 * gets a reset, which the gateway passes to the client. A global
 * function, verified once. */
__attribute__((noinline)) int ingress_back(struct __sk_buff *skb,
					   struct pkt *p,
					   const struct endpoint *ep,
					   __u32 eid, __u32 idx)
{
	struct server_settings *cfg = get_settings();
	struct ingress_key fk, rk;
	struct ingress_entry *f, v = {};
	struct ingress_opt o;
	__u32 reason, port;

	if (!p || !ep || !cfg)
		return drop(DROP_MALFORMED);
	/* Bounded where the verifier sees it: idx is any scalar here. */
	asm volatile("" : "+r"(idx));
	if (idx >= MAX_PORTS)
		return drop(DROP_MALFORMED);
	port = ep->ports[idx].port;
	fk = ingress_key_of(eid, p->saddr, p->sport, idx, p->proto, IN_FWD);
	if (p->l4_off == IP_OFF + 20 + INGRESS_OPT_LEN) {
		if (bpf_skb_load_bytes(skb, IP_OFF + 20, &o, sizeof(o)) < 0 ||
		    o.type != INGRESS_OPT || o.len != INGRESS_OPT_LEN)
			return drop(DROP_UNSUPPORTED);
		if (bpf_skb_adjust_room(skb, -INGRESS_OPT_LEN, BPF_ADJ_ROOM_NET,
					0) < 0 ||
		    ip_fix(skb, 5, p->end - IP_OFF - INGRESS_OPT_LEN) < 0 ||
		    parse_ipv4(skb, p, &reason, 0) < 0)
			return drop(DROP_MALFORMED);
		v.client = o.addr;
		v.client_port = bpf_ntohs(o.port);
		v.gateway = p->saddr;
		v.gateway_port = p->sport;
		v.index = idx;
		rk = ingress_key_of(eid, v.client, v.client_port, port,
				    p->proto, IN_REPLY);
		if (bpf_map_update_elem(&ingress, &fk, &v, BPF_ANY) < 0 ||
		    bpf_map_update_elem(&ingress, &rk, &v, BPF_ANY) < 0)
			return drop(DROP_OFFSETS_FULL);
		f = &v;
	} else if (p->l4_off != IP_OFF + 20) {
		return drop(DROP_UNSUPPORTED);
	} else {
		f = bpf_map_lookup_elem(&ingress, &fk);
		if (!f) {
			if (p->proto == IPPROTO_TCP)
				return refuse(skb, p, 0, DROP_CT_MISS);
			return drop(DROP_CT_MISS);
		}
	}
	if (rewrite(skb, p, f->client, ep->ip, f->client_port, port, 0) < 0 ||
	    set_macs(skb, ep->mac, cfg->gateway_mac) < 0)
		return drop(DROP_MALFORMED);
	count(eid, skb->len, 1);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* ingress_reply handles packet p that backend c (id cid) sends to an
 * outside client of an ingress flow (NEW_FLOW when p is none): to the gateway
 * of the flow over the wire, or, when the client dialled this server,
 * straight out from the published port. A packet of a flow the gateway
 * port no longer holds (the port went to another client) is dropped: it
 * must never reach another client. A global function, verified once. */
__attribute__((noinline)) int ingress_reply(struct __sk_buff *skb,
					    struct pkt *p,
					    const struct endpoint *c, __u32 cid)
{
	struct server_settings *cfg = get_settings();
	struct ingress_key fk;
	struct ingress_entry *f, *in;
	struct ct_entry *e;

	if (!p || !c || !cfg)
		return drop(DROP_MALFORMED);
	fk = ingress_key_of(cid, p->daddr, p->dport, p->sport, p->proto,
			    IN_REPLY);
	in = bpf_map_lookup_elem(&ingress, &fk);
	if (!in)
		return NEW_FLOW;
	if (!cfg->uplink_ifindex)
		return drop(DROP_NO_UPLINK);
	if (in->local) {
		e = ct_rev(GATEWAY_ID, cid, in->index, p->proto, in->offset);
		if (!e || e->kind != CT_KIND_INGRESS ||
		    e->backend != p->daddr || e->client_port != p->dport)
			return drop(DROP_CT_MISS);
		ct_touch(e, p, bpf_ktime_get_ns(), 1, 0);
		if (rewrite(skb, p, in->gateway, p->daddr, in->gateway_port,
			    p->dport, 0) < 0)
			return drop(DROP_MALFORMED);
		return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
	}
	fk = ingress_key_of(cid, in->gateway, in->gateway_port, in->index,
			    p->proto, IN_FWD);
	f = bpf_map_lookup_elem(&ingress, &fk);
	if (!f || f->client != p->daddr || f->client_port != p->dport)
		return drop(DROP_CT_MISS);
	if (rewrite(skb, p, c->server_ip, in->gateway, c->wire_base + in->index,
		    in->gateway_port, 0) < 0)
		return drop(DROP_MALFORMED);
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
}

SEC("tcx/ingress")
int from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, cid, sid, reason;
	struct server_settings *cfg = get_settings();
	struct ct_entry *e, v = {};
	struct endpoint *c, *s;
	struct ct_key k, tmpl;
	struct ethhdr eth;
	struct pkt p = {};
	__u32 *id;
	__u64 now;
	int idx;

	id = bpf_map_lookup_elem(&endpoint_by_ifindex, &ifindex);
	if (!id || !cfg)
		return drop(DROP_UNKNOWN_IFINDEX);
	cid = *id;
	c = bpf_map_lookup_elem(&endpoints, &cid);
	if (!c)
		return drop(DROP_UNKNOWN_IFINDEX);
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return drop(DROP_MALFORMED);
	if (!mac_eq(eth.h_source, c->mac))
		return drop(DROP_SPOOFED);
	if (eth.h_proto == bpf_htons(ETH_P_ARP))
		return answer_arp(skb, c, cfg);
	if (eth.h_proto != bpf_htons(ETH_P_IP))
		return drop(DROP_NOT_IPV4);
	if (parse_ipv4(skb, &p, &reason, 1) < 0)
		return drop(reason);
	if (p.saddr != c->ip)
		return drop(DROP_SPOOFED);
	if (p.ttl <= 1)
		return drop(DROP_TTL);
	if (is_error(&p)) {
		count(cid, skb->len, 0);
		return error_from_container(skb, &p, cid);
	}
	/* Inside containers the server's port of an ICMP echo is 0. */
	if (p.proto == IPPROTO_ICMP) {
		if (is_request(&p))
			p.dport = 0;
		else
			p.sport = 0;
	}
	count(cid, skb->len, 0);
	now = bpf_ktime_get_ns();

	k = (struct ct_key){
		.scope = cid,
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
		.dir = CT_OUT,
	};
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && e->kind == CT_KIND_EGRESS) {
		int ret = to_outside(skb, &p, c, cid, e);

		if (ret != NEW_FLOW)
			return ret;
		goto new_flow;
	}
	if (e) {
		struct ct_key rk = {
			.scope = cid,
			.daddr = e->backend,
			.sport = e->offset,
			.dport = e->port_index,
			.proto = p.proto,
			.dir = CT_REV,
		};
		struct ct_entry *rev = bpf_map_lookup_elem(&conntrack, &rk);

		/* The offset is the flow's; losing its CT_REV entry to the
		 * LRU, or to a new flow once this one was over, means another
		 * flow may hold it now. */
		if (!rev || rev->client_port != e->client_port ||
		    rev->service_port != e->service_port)
			goto new_flow;
		/* A SYN starts the connection again: the client reuses its
		 * port, or resends its SYN after resetting the answer of a
		 * backend that still held the 4-tuple in TIME_WAIT (the
		 * backend's TIME_WAIT ends with that reset, and the client's
		 * kernel resends the SYN within milliseconds). Either way the
		 * flow is open again, on the same offset. */
		if (p.proto == IPPROTO_TCP &&
		    (p.tcp_flags & (TH_SYN | TH_ACK)) == TH_SYN &&
		    rev->flags)
			ct_reopen(rev, cid);
		sid = e->backend;
		s = bpf_map_lookup_elem(&endpoints, &sid);
		if (!s || s->state != ENDPOINT_ACTIVE) {
			/* The backend is gone: re-select. The flow keeps its
			 * offset when it is free at the new backend (port),
			 * else takes another; the new CT_REV entry is written
			 * before CT_OUT points at it, and the old one goes. */
			reason = choose_backend(c, &p, &sid, &s, &idx);
			if (reason)
				return drop(reason);
			/* Chosen again (the service is not updated yet). */
			if (sid == e->backend && idx == e->port_index)
				goto keep;
			v = *rev;
			v.last_seen = now;
			v.backend = sid;
			v.port_index = idx;
			v.flags = 0;
			ct_touch(&v, &p, now, 0, 0);
			tmpl = rev_key(cid, sid, idx, p.proto);
			if (alloc_offset(&tmpl, c->nports, c->block_size,
					 e->offset, &v) < 0)
				return reject(skb, &p, cid);
			if (bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY) < 0) {
				ct_forget(&tmpl, v.offset);
				return drop(DROP_OFFSETS_FULL);
			}
			bpf_map_delete_elem(&conntrack, &rk);
			return deliver_out(skb, &p, c, s, sid, &v, cfg);
		}
keep:
		if (ct_touch(rev, &p, now, 0, cid) == TW_RESET &&
		    reset_flag(skb, &p) < 0)
			return drop(DROP_MALFORMED);
		return deliver_out(skb, &p, c, s, sid, e, cfg);
	}

	/* A backend answering a client: the destination port lies in the
	 * identity block of an endpoint of this network. */
	if (!is_request(&p) && cfg->block_size) {
		struct ident_key ik = {
			.net_id = c->net_id,
			.ip = p.daddr,
			.base = p.dport & ~(cfg->block_size - 1),
		};

		id = bpf_map_lookup_elem(&ident_blocks, &ik);
		if (id)
			return reply_from_backend(skb, &p, c, cid, *id, cfg,
						  now);
	}

	/* A backend answering an outside client of a published port: looked
	 * up only here, so answers to containers do not pay for it. */
	if (p.proto != IPPROTO_ICMP) {
		int ret = ingress_reply(skb, &p, c, cid);

		if (ret != NEW_FLOW)
			return ret;
	}

new_flow:
	/* A reset of no flow we know has nothing to end. */
	if (p.proto == IPPROTO_TCP && (p.tcp_flags & TH_RST))
		return drop(DROP_CT_MISS);
	reason = choose_backend(c, &p, &sid, &s, &idx);
	if (reason == DROP_NO_SERVICE) {
		/* No service of the network: perhaps an address outside. */
		reason = egress_new(c, &p, cfg);
		if (reason == DROP_CT_MISS)
			return refuse(skb, &p, cid, reason);
		if (reason)
			return drop(reason);
		v.kind = CT_KIND_EGRESS;
		tmpl = egress_key(cid, p.daddr, p.dport, p.proto, 0);
		s = NULL;
	} else if (reason) {
		return drop(reason);
	} else {
		v.backend = sid;
		v.port_index = idx;
		tmpl = rev_key(cid, sid, idx, p.proto);
	}
	if (!flow_quota_allows(cid))
		return refuse(skb, &p, cid, DROP_FLOW_LIMIT);
	v.last_seen = now;
	v.client_port = p.sport;
	v.service_port = p.dport;
	v.proto = p.proto;
	ct_touch(&v, &p, now, 0, 0);
	if (alloc_offset(&tmpl, c->nports, c->block_size, NO_PREFER, &v) < 0)
		return reject(skb, &p, cid);
	if (bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY) < 0) {
		ct_forget(&tmpl, v.offset);
		return drop(DROP_OFFSETS_FULL);
	}
	flow_opened(cid);
	if (!s)
		return egress_send(skb, &p, c->server_ip, c->wire_base + v.offset,
				   cfg->uplink_ifindex);
	return deliver_out(skb, &p, c, s, sid, &v, cfg);
}

/* owns_wire_port reports whether p is addressed to one of this server's
 * wire ports, whether or not a block still holds it. */
static __always_inline int owns_wire_port(const struct server_settings *cfg,
					  const struct pkt *p)
{
	if (!cfg->wire_last || p->dport < cfg->wire_first ||
	    p->dport > cfg->wire_last)
		return 0;
	return is_local_ip(cfg, p->daddr);
}

/* not_wire handles packet p to no wire block: an answer to the gateway,
 * a client of a published port, a packet to a wire port of ours that no
 * block holds any more, or the host's own. */
static __always_inline int not_wire(struct __sk_buff *skb, struct pkt *p,
				    const struct server_settings *cfg,
				    __u16 mask)
{
	struct gateway_settings *gw = get_gateway();
	struct published_key pk = { .port = p->dport, .proto = p->proto };
	struct service_key *svc;
	struct endpoint *peer;
	__u32 pid;
	int ret;

	if (p->proto != IPPROTO_ICMP && in_gateway(gw, cfg, p->dport) &&
	    is_local_ip(cfg, p->daddr)) {
		peer = wire_endpoint(p->saddr, p->sport, mask, &pid);
		if (!peer || p->sport - peer->wire_base >= peer->nports)
			return drop(DROP_UNKNOWN_PEER);
		return ingress_answer(skb, p, pid, p->sport - peer->wire_base);
	}
	if (owns_wire_port(cfg, p)) {
		/* An outside peer of a flow whose container moved away gets
		 * a reset instead of silence; a server's packet may be in
		 * flight to an endpoint that just moved, and is dropped. */
		if (p->proto == IPPROTO_TCP &&
		    outside_kind(p->saddr) != OUTSIDE_LOCATOR)
			return refuse(skb, p, 0, DROP_STALE_WIRE);
		return drop(DROP_STALE_WIRE);
	}
	if (p->proto == IPPROTO_ICMP)
		return TC_ACT_OK;
	svc = bpf_map_lookup_elem(&published, &pk);
	if (!svc || !is_local_ip(cfg, p->daddr) || !gw || !gw->base)
		return TC_ACT_OK;
	/* From here on the packet is ours: a published port is served. */
	if (p->l4_off != IP_OFF + sizeof(struct iphdr))
		return drop(DROP_UNSUPPORTED);
	if (p->ttl <= 1)
		return drop(DROP_TTL);
	ret = ingress_front(skb, p);
	if (ret != NEW_FLOW)
		return ret;
	return ingress_new(skb, p, svc);
}

SEC("tcx/ingress")
int from_network(struct __sk_buff *skb)
{
	struct server_settings *cfg = get_settings();
	struct endpoint *ep, *peer;
	__u32 eid, pid, off, idx, reason;
	struct ct_entry *e;
	struct wire_key wk = {};
	struct ethhdr eth;
	struct pkt p = {};
	__u16 mask;
	__u32 *id;

	if (!cfg || !cfg->block_size)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    eth.h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &p, &reason, 0) < 0)
		return TC_ACT_OK;
	if (is_error(&p))
		return error_from_network(skb, &p);
	mask = ~(cfg->block_size - 1);
	wk.server_ip = p.daddr;
	wk.base = p.dport & mask;
	if (p.proto == IPPROTO_ICMP && p.icmp_code != WIRE_ICMP_CODE) {
		/* Plain ICMP: the host's own, or an echo reply to a container's
		 * ping of the outside, whose identifier is a wire port. */
		if (p.icmp_type != ICMP_ECHOREPLY)
			return TC_ACT_OK;
		id = bpf_map_lookup_elem(&wire_blocks, &wk);
		if (!id)
			return TC_ACT_OK;
		eid = *id;
		ep = bpf_map_lookup_elem(&endpoints, &eid);
		if (!ep)
			return TC_ACT_OK;
		return from_outside(skb, &p, ep, eid, p.dport - ep->wire_base);
	}
	id = bpf_map_lookup_elem(&wire_blocks, &wk);
	if (!id)
		return not_wire(skb, &p, cfg, mask);
	/* From here on the packet is ours: it never reaches the host. */
	eid = *id;
	ep = bpf_map_lookup_elem(&endpoints, &eid);
	if (!ep || !ep->ifindex)
		return drop(DROP_UNKNOWN_PEER);
	if (p.ttl <= 1)
		return drop(DROP_TTL);
	off = p.dport - ep->wire_base;

	if (p.proto == IPPROTO_ICMP ? is_request(&p) : off < ep->nports) {
		/* A client reaching a port ep serves. */
		__u16 port = 0;

		if (p.proto == IPPROTO_ICMP) {
			if (off != 0)
				return drop(DROP_NO_SERVICE);
		} else {
			if (off >= MAX_PORTS || ep->ports[off].proto != p.proto)
				return drop(DROP_NO_SERVICE);
			port = ep->ports[off].port;
		}
		peer = wire_endpoint(p.saddr, p.sport, mask, &pid);
		if (!peer) {
			/* An outside client's flow, from a gateway. */
			if (p.proto != IPPROTO_ICMP &&
			    in_gateway(get_gateway(), cfg, p.sport) &&
			    outside_kind(p.saddr) == OUTSIDE_LOCATOR)
				return ingress_back(skb, &p, ep, eid, off);
			return drop(DROP_UNKNOWN_PEER);
		}
		off = p.sport - peer->wire_base;
		if (off < peer->nports)
			return drop(DROP_UNKNOWN_PEER);
		if (!policy_allows(peer->net_id, ep->net_id, ep->ip, port,
				   p.proto))
			return drop(DROP_POLICY);
		if (rewrite(skb, &p, peer->ip, ep->ip, peer->ident_base + off,
			    port, 0) < 0 ||
		    set_macs(skb, ep->mac, cfg->gateway_mac) < 0)
			return drop(DROP_MALFORMED);
		count(eid, skb->len, 1);
		return bpf_redirect_peer(ep->ifindex, 0);
	}

	/* A backend answering ep's own flow at offset off: the source names
	 * the backend and its port index. A source that is no wire block is
	 * outside the cluster: a reply to one of ep's flows there. */
	peer = wire_endpoint(p.saddr, p.sport, mask, &pid);
	if (!peer) {
		if (p.proto == IPPROTO_ICMP)
			return drop(DROP_UNKNOWN_PEER);
		/* A server's wire port that no block we know holds: a backend
		 * that moved there before this server applied the move. It is
		 * no host outside (no flow goes out to a wire port, see
		 * egress_verdict), and answering it with a reset would end the
		 * flow the move keeps; its next segment finds the new block. */
		if (cfg->wire_last && p.sport >= cfg->wire_first &&
		    p.sport <= cfg->wire_last &&
		    outside_kind(p.saddr) == OUTSIDE_LOCATOR)
			return drop(DROP_STALE_WIRE);
		return from_outside(skb, &p, ep, eid, off);
	}
	idx = p.sport - peer->wire_base;
	if (p.proto == IPPROTO_ICMP ? idx != 0 : idx >= peer->nports)
		return drop(DROP_UNKNOWN_PEER);
	e = ct_rev(eid, pid, idx, p.proto, off);
	if (!e)
		return drop(DROP_CT_MISS);
	if (ct_touch(e, &p, bpf_ktime_get_ns(), 1, eid) == TW_REFLECT &&
	    end_time_wait(skb, &p) < 0)
		return drop(DROP_MALFORMED);
	if (rewrite(skb, &p, peer->ip, ep->ip, e->service_port, e->client_port,
		    0) < 0 ||
	    set_macs(skb, ep->mac, cfg->gateway_mac) < 0)
		return drop(DROP_MALFORMED);
	count(eid, skb->len, 1);
	return bpf_redirect_peer(ep->ifindex, 0);
}
