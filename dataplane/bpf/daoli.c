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

#define NS_PER_SEC 1000000000ULL

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

static __always_inline int drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);

	if (n)
		*n += 1;
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
 * services of network to. */
static __always_inline int policy_allows(__u32 from, __u32 to)
{
	struct policy_key k = { .from = from, .to = to };
	enum policy_verdict *v = bpf_map_lookup_elem(&policies, &k);

	if (!v)
		return from == to;
	return *v == POLICY_ALLOW;
}

/* parse_ipv4 fills p from the IPv4 packet after the Ethernet header. It
 * returns 0, or -1 with *reason set. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p,
				      __u32 *reason)
{
	struct iphdr ip;
	__u32 end;

	*reason = DROP_MALFORMED;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
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
		p->tcp_flags = (tcp.fin ? 1 : 0) | (tcp.rst ? 4 : 0);
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

static __always_inline int ct_expired(const struct ct_entry *e, __u64 now)
{
	__u64 timeout = 60 * NS_PER_SEC;

	if (e->flags & CT_CLOSING)
		timeout = 10 * NS_PER_SEC;
	else if (e->proto == IPPROTO_TCP)
		timeout = 3600 * NS_PER_SEC;
	else if (e->proto == IPPROTO_UDP)
		timeout = 120 * NS_PER_SEC;
	return now - e->last_seen > timeout;
}

/* alloc_offset finds a free offset in client c's blocks and records the
 * CT_REV entry v for it. An offset is free when it has no CT_REV entry or
 * its entry expired. It never takes a busy offset: that would hand one
 * flow's replies to another (fail closed). */
static __always_inline int alloc_offset(const struct endpoint *c, __u32 cid,
					struct ct_entry *v)
{
	__u32 lo = c->nports, span, start, *cur, next;
	struct ct_key k = { .scope = cid, .dir = CT_REV };

	if (c->block_size <= lo)
		return -1;
	span = c->block_size - lo;
	cur = bpf_map_lookup_elem(&offset_cursor, &cid);
	start = cur ? *cur : 0;
	for (__u32 i = 0; i < MAX_PROBES; i++) {
		struct ct_entry *old;

		k.dport = lo + (start + i) % span;
		v->offset = k.dport;
		if (bpf_map_update_elem(&conntrack, &k, v, BPF_NOEXIST) != 0) {
			old = bpf_map_lookup_elem(&conntrack, &k);
			if (old && !ct_expired(old, v->last_seen))
				continue;
			if (bpf_map_update_elem(&conntrack, &k, v, BPF_ANY) != 0)
				continue;
		}
		next = start + i + 1;
		bpf_map_update_elem(&offset_cursor, &cid, &next, BPF_ANY);
		return 0;
	}
	return -1;
}

static __always_inline void ct_touch(struct ct_entry *e, const struct pkt *p,
				     __u64 now)
{
	e->last_seen = now;
	if (p->tcp_flags)
		e->flags |= CT_CLOSING;
}

static __always_inline struct ct_entry *ct_rev(__u32 client, __u16 offset)
{
	struct ct_key k = { .scope = client, .dport = offset, .dir = CT_REV };

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
		e = ct_rev(cid, off);
		if (!e || e->backend != sid || e->proto != p->proto)
			return drop(DROP_CT_MISS);
		ct_touch(e, p, now);
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
		e = ct_rev(pid, coff);
		if (!e || e->backend != cid || e->proto != q.ip.protocol)
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
	__u32 eid, pid, off, coff, *id;
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
		/* About a packet of ep's own flow at offset off. */
		e = ct_rev(eid, off);
		if (!e || e->proto != q.ip.protocol)
			return drop(DROP_CT_MISS);
		pid = e->backend;
		peer = bpf_map_lookup_elem(&endpoints, &pid);
		if (!peer || q.ip.daddr != peer->server_ip ||
		    dport != (__u16)(peer->wire_base + e->port_index))
			return drop(DROP_UNKNOWN_PEER);
		if (translate_quote(skb, p, &q, ep->ip, peer->ip,
				    e->client_port, e->service_port) < 0)
			return drop(DROP_MALFORMED);
	} else {
		/* About a reply ep sent as a backend: the quoted destination
		 * is its client's wire port. */
		if (off >= MAX_PORTS || ep->ports[off].proto != q.ip.protocol)
			return drop(DROP_NO_SERVICE);
		wk.server_ip = q.ip.daddr;
		wk.base = dport & mask;
		id = bpf_map_lookup_elem(&wire_blocks, &wk);
		if (!id)
			return drop(DROP_UNKNOWN_PEER);
		pid = *id;
		peer = bpf_map_lookup_elem(&endpoints, &pid);
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

SEC("tcx/ingress")
int from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, cid, sid, reason;
	struct server_settings *cfg = get_settings();
	struct service_key sk = {};
	struct ct_entry *e, v = {};
	struct endpoint *c, *s;
	struct service *svc;
	struct ethhdr eth;
	struct pkt p = {};
	struct ct_key k;
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
	if (parse_ipv4(skb, &p, &reason) < 0)
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
	if (e) {
		struct ct_entry *rev = ct_rev(cid, e->offset);

		/* The offset is the flow's; losing its CT_REV entry to the
		 * LRU means another flow may hold it now. */
		if (!rev || rev->client_port != e->client_port ||
		    rev->service_port != e->service_port ||
		    rev->proto != e->proto)
			goto new_flow;
		sid = e->backend;
		s = bpf_map_lookup_elem(&endpoints, &sid);
		if (!s || s->state != ENDPOINT_ACTIVE) {
			/* The backend is gone: re-select, keep the offset. */
			sk = (struct service_key){
				.net_id = c->net_id,
				.ip = p.daddr,
				.port = p.dport,
				.proto = p.proto,
			};
			svc = bpf_map_lookup_elem(&services, &sk);
			if (!svc)
				return drop(DROP_NO_SERVICE);
			if (!policy_allows(c->net_id, svc->net_id))
				return drop(DROP_POLICY);
			sid = select_backend(svc, &p);
			s = bpf_map_lookup_elem(&endpoints, &sid);
			if (!s)
				return drop(DROP_NO_BACKEND);
			idx = port_index(s, p.dport, p.proto);
			if (idx < 0)
				return drop(DROP_NO_BACKEND);
			e->backend = sid;
			e->port_index = idx;
			rev->backend = sid;
			rev->port_index = idx;
		}
		ct_touch(e, &p, now);
		ct_touch(rev, &p, now);
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

new_flow:
	sk = (struct service_key){
		.net_id = c->net_id,
		.ip = p.daddr,
		.port = p.dport,
		.proto = p.proto,
	};
	svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return drop(DROP_NO_SERVICE);
	if (!policy_allows(c->net_id, svc->net_id))
		return drop(DROP_POLICY);
	sid = select_backend(svc, &p);
	s = bpf_map_lookup_elem(&endpoints, &sid);
	if (!s)
		return drop(DROP_NO_BACKEND);
	idx = port_index(s, p.dport, p.proto);
	if (idx < 0)
		return drop(DROP_NO_BACKEND);

	v.last_seen = now;
	v.client = cid;
	v.backend = sid;
	v.port_index = idx;
	v.client_port = p.sport;
	v.service_port = p.dport;
	v.proto = p.proto;
	if (alloc_offset(c, cid, &v) < 0)
		return drop(DROP_OFFSETS_FULL);
	if (bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY) < 0)
		return drop(DROP_OFFSETS_FULL);
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
	for (__u32 i = 0; i < MAX_LOCAL_IPS; i++) {
		if (i >= cfg->local_ip_count)
			break;
		if (cfg->local_ips[i] == p->daddr)
			return 1;
	}
	return 0;
}

SEC("tcx/ingress")
int from_network(struct __sk_buff *skb)
{
	struct server_settings *cfg = get_settings();
	struct endpoint *ep, *peer;
	__u32 eid, pid, off, reason;
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
	if (parse_ipv4(skb, &p, &reason) < 0)
		return TC_ACT_OK;
	if (is_error(&p))
		return error_from_network(skb, &p);
	if (p.proto == IPPROTO_ICMP && p.icmp_code != WIRE_ICMP_CODE)
		return TC_ACT_OK;

	mask = ~(cfg->block_size - 1);
	wk.server_ip = p.daddr;
	wk.base = p.dport & mask;
	id = bpf_map_lookup_elem(&wire_blocks, &wk);
	if (!id)
		return owns_wire_port(cfg, &p) ? drop(DROP_STALE_WIRE) : TC_ACT_OK;
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
		wk.server_ip = p.saddr;
		wk.base = p.sport & mask;
		id = bpf_map_lookup_elem(&wire_blocks, &wk);
		if (!id)
			return drop(DROP_UNKNOWN_PEER);
		pid = *id;
		peer = bpf_map_lookup_elem(&endpoints, &pid);
		if (!peer)
			return drop(DROP_UNKNOWN_PEER);
		off = p.sport - peer->wire_base;
		if (off < peer->nports)
			return drop(DROP_UNKNOWN_PEER);
		if (!policy_allows(peer->net_id, ep->net_id))
			return drop(DROP_POLICY);
		if (rewrite(skb, &p, peer->ip, ep->ip, peer->ident_base + off,
			    port, 0) < 0 ||
		    set_macs(skb, ep->mac, cfg->gateway_mac) < 0)
			return drop(DROP_MALFORMED);
		count(eid, skb->len, 1);
		return bpf_redirect_peer(ep->ifindex, 0);
	}

	/* A backend answering ep's own flow at offset off. */
	e = ct_rev(eid, off);
	if (!e || e->proto != p.proto)
		return drop(DROP_CT_MISS);
	pid = e->backend;
	peer = bpf_map_lookup_elem(&endpoints, &pid);
	if (!peer || p.saddr != peer->server_ip ||
	    p.sport != (__u16)(peer->wire_base + e->port_index))
		return drop(DROP_UNKNOWN_PEER);
	ct_touch(e, &p, bpf_ktime_get_ns());
	if (rewrite(skb, &p, peer->ip, ep->ip, e->service_port, e->client_port,
		    0) < 0 ||
	    set_macs(skb, ep->mac, cfg->gateway_mac) < 0)
		return drop(DROP_MALFORMED);
	count(eid, skb->len, 1);
	return bpf_redirect_peer(ep->ifindex, 0);
}
