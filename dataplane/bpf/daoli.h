/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types and maps shared by the daoli tc programs. The Go side never copies
 * these layouts by hand: bpf2go generates them (see ../gen.go).
 *
 * Byte order: every IPv4 address is stored as it appears on the wire
 * (network order); every port, block base and size is stored in host order,
 * because the programs do arithmetic on them.
 */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* MAX_PORTS is the number of ports one endpoint may serve. */
#define MAX_PORTS 32
/* MAGLEV_SIZE is the number of slots of one Maglev table (a prime). */
#define MAGLEV_SIZE 1021
/* MAX_TABLES is the number of Maglev tables the maglev map holds. */
#define MAX_TABLES 1024
/* MAX_PROBES bounds the search for a free offset in a client's blocks:
 * all of a block of the default size. */
#define MAX_PROBES 256

/* WIRE_ICMP_CODE marks an ICMP echo that carries daoli's wire ports, so the
 * host's own pings (code 0) never match a wire block by accident. */
#define WIRE_ICMP_CODE 0xda

enum endpoint_state {
	ENDPOINT_ACTIVE = 0,
	ENDPOINT_DOWN = 1,
};

enum service_mode {
	MODE_FAILOVER = 0,
	MODE_BALANCE = 1,
};

/* Reasons a packet is dropped; the index into the drops map. */
enum drop_reason {
	DROP_UNKNOWN_IFINDEX = 0, /* from_container on a device with no endpoint */
	DROP_NOT_IPV4 = 1,        /* neither IPv4 nor ARP from a container */
	DROP_MALFORMED = 2,       /* truncated or inconsistent headers */
	DROP_FRAGMENT = 3,        /* IPv4 fragments are not supported */
	DROP_SPOOFED = 4,         /* source MAC or IP is not the endpoint's */
	DROP_UNSUPPORTED = 5,     /* not TCP, UDP or ICMP echo */
	DROP_NO_SERVICE = 6,      /* nobody serves the destination */
	DROP_NO_BACKEND = 7,      /* the service has no active backend */
	DROP_OFFSETS_FULL = 8,    /* no free offset towards the destination
				   * (TCP and UDP are answered, see reject) */
	DROP_UNKNOWN_PEER = 9,    /* wire packet from a port nobody owns */
	DROP_CT_MISS = 10,        /* reply without conntrack */
	DROP_POLICY = 11,         /* policy denies the source network */
	DROP_NO_UPLINK = 12,      /* no uplink attached */
	DROP_ARP = 13,            /* ARP that is not a request we answer */
	DROP_TTL = 14,            /* TTL would reach 0 in our hop */
	DROP_STALE_WIRE = 15,     /* wire port of ours that no local endpoint holds */
	DROP_EGRESS_DENIED = 16,  /* the network may not reach that outside address */
	DROP_TOO_BIG = 17,        /* ingress: the client's address would make
				   * the packet too big for the uplink */
	DROP_IP_OPTIONS = 18,     /* a container's packet with IPv4 options */
	DROP_BAD_CHECKSUM = 19,   /* a container's IPv4 header checksum is wrong */
	DROP_FLOW_LIMIT = 20,     /* the client holds the most flows it may */
	DROP_REASONS = 21,
};

/* DROP_SLOTS is the size of the drops map: room for new reasons without a
 * new map layout. */
#define DROP_SLOTS 32

enum policy_verdict {
	POLICY_DENY = 0,
	POLICY_ALLOW = 1,
	POLICY_EXPORTS = 2, /* only the services the exports map names */
};

struct served_port {
	__u16 port; /* host order */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* endpoint is one container's attachment to one network. */
struct endpoint {
	__u32 net_id;
	__u32 ip;        /* network order */
	__u32 server_ip; /* network order: the ServerIP it runs behind */
	__u32 ifindex;   /* host-side veth when on this server, else 0 */
	__u16 wire_base; /* first port of its wire block */
	__u16 ident_base; /* first port of its identity block */
	__u16 block_size; /* power of two */
	__u16 nports;     /* served ports; offsets >= nports carry flows */
	__u8 mac[6];
	__u8 state; /* enum endpoint_state */
	__u8 pad;
	struct served_port ports[MAX_PORTS];
};

/* settings holds the per-server knobs; key 0 only. */
#define MAX_LOCAL_IPS 8

struct server_settings {
	__u8 gateway_mac[6];
	__u16 block_size; /* cluster-wide, power of two; 0 = not configured */
	__u32 uplink_ifindex;
	/* The wire range and this server's locators: every packet to one of
	 * them in the range is ours, even when no block matches (the endpoint
	 * moved away or was removed), and must not reach the host's stack,
	 * which would answer a TCP segment with a reset. wire_last 0: unset. */
	__u16 wire_first;
	__u16 wire_last;
	__u32 local_ip_count;
	__u32 local_ips[MAX_LOCAL_IPS]; /* network order */
};

struct wire_key {
	__u32 server_ip; /* network order */
	__u16 base;      /* port & ~(block_size-1) */
	__u16 pad;
};

struct ident_key {
	__u32 net_id;
	__u32 ip; /* network order */
	__u16 base;
	__u16 pad;
};

struct service_key {
	__u32 net_id;
	__u32 ip;   /* network order */
	__u16 port; /* host order; 0 for ICMP echo */
	__u8 proto;
	__u8 pad;
};

/* service is keyed by the network of the client that looks it up: a
 * service of another network appears in the client's network when a policy
 * names the pair, and net_id says whose it is. */
struct service {
	__u8 mode; /* enum service_mode */
	__u8 pad[3];
	__u32 backends; /* number of active backends; 0 = drop */
	__u32 backend;  /* failover: the chosen endpoint */
	__u32 table;    /* balance: index of the Maglev table */
	__u32 digest;   /* control plane only: hash of the backend set */
	__u32 net_id;   /* the network its backends belong to */
};

/* policy_key names a pair of networks: clients of from opening flows to
 * services of to. The value is an enum policy_verdict. Absent means allow
 * when from == to and deny otherwise. */
struct policy_key {
	__u32 from;
	__u32 to;
};

/* export_key names one service of network to (ip, port, proto; port 0
 * for ICMP) that clients of network from may open flows to, when their
 * policy is POLICY_EXPORTS. The value is unused. */
struct export_key {
	__u32 from;
	__u32 to;
	__u32 ip; /* network order */
	__u16 port; /* host order */
	__u8 proto;
	__u8 pad;
};
/* policy_allows looks both maps up with one export_key. */
_Static_assert(__builtin_offsetof(struct export_key, ip) == sizeof(struct policy_key),
	       "a policy_key is the start of an export_key");

enum ct_dir {
	CT_OUT = 0, /* client side, 5-tuple as the client sent it */
	CT_REV = 1, /* client side, keyed by (client, backend, port index,
		     * protocol, offset) */
	CT_EGRESS = 2, /* client side, a flow to the outside, keyed by
			* (client, outside address, outside port, protocol,
			* offset) */
};

/* GATEWAY_ID is the conntrack scope of this server's gateway: the client,
 * as its server sees it, of every flow an outside client opens to a
 * published port of this server. No endpoint has this id. */
#define GATEWAY_ID 0xffffffff

/* ct_entry.kind: where a flow goes. */
enum ct_kind {
	CT_KIND_SERVICE = 0, /* to a backend of a daoli service */
	CT_KIND_EGRESS = 1,  /* to an address outside every daoli network */
	CT_KIND_INGRESS = 2, /* from an outside client to a published port:
			      * scope GATEWAY_ID. In the CT_OUT entry, backend
			      * is the backend's id; in the CT_REV entry, which
			      * the backend's answers find, it is the client's
			      * address (network order), client_port its port
			      * and service_port the published port. */
};

/* ct_key names a flow on its client's server.
 *
 * CT_OUT: scope = client endpoint id, saddr/daddr/sport/dport/proto = the
 * 5-tuple as the client sent it (host-order ports).
 *
 * CT_REV: scope = client endpoint id, daddr = backend endpoint id, sport =
 * the offset, dport = the backend's port index (0 for ICMP echo), proto;
 * saddr is 0.
 *
 * CT_EGRESS: scope = client endpoint id, saddr = the outside address, dport
 * = the outside port (0 for ICMP echo), sport = the offset, proto; daddr is
 * 0. On the wire such a flow is (ServerIP_A, wire_C+offset) -> (address,
 * port), so an offset is unique per client and outside destination. An offset is unique per client and destination (backend,
 * port, protocol), as a NAT's ports are: on the wire the flow is
 * (ServerIP_A, wire_C+offset) -> (ServerIP_B, wire_S+index), and at the
 * backend (IP_c, ident_C+offset) -> (IP_s, Port_s) inside S's own
 * namespace, so the same offset towards another backend or port is
 * another 5-tuple. */
struct ct_key {
	__u32 scope;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

/* ct_entry.flags: the TCP state as the client's server sees it. Only the
 * CT_REV entry, which holds the offset, keeps them. */
#define CT_FIN_OUT 0x01       /* the client sent FIN */
#define CT_FIN_IN 0x02        /* the backend sent FIN */
#define CT_RST 0x04           /* either side sent RST */
#define CT_REPLIED 0x08       /* the backend has answered */
#define CT_FIN_OUT_ACKED 0x10 /* the backend acknowledged the client's FIN */
#define CT_FIN_IN_ACKED 0x20  /* the client acknowledged the backend's FIN */
#define CT_TIME_WAIT 0x40     /* the backend sent FIN before it had the
			       * client's: it will pass TIME_WAIT */
#define CT_FINS (CT_FIN_OUT | CT_FIN_IN)
#define CT_ACKED (CT_FIN_OUT_ACKED | CT_FIN_IN_ACKED)

struct ct_entry {
	__u64 last_seen; /* bpf_ktime_get_ns */
	__u32 fin_out;   /* TCP: sequence number just past the client's FIN */
	__u32 backend;   /* endpoint id, never an address */
	__u16 port_index;  /* index into backend's ports */
	__u16 offset;      /* same in wire and identity block */
	__u16 client_port; /* the port the client's socket used */
	__u16 service_port; /* the port the client dialled */
	__u8 proto;
	__u8 flags; /* CT_* above */
	__u8 kind;  /* enum ct_kind; CT_KIND_EGRESS: backend and port_index
		     * are 0, the peer is in the key */
	__u8 pad;
	__u32 fin_in; /* TCP: sequence number just past the backend's FIN */
};

/* published_key names a published port of every server: a client
 * outside that reaches any locator of a server at port over proto reaches
 * the service the value (a struct service_key) names. */
struct published_key {
	__u16 port; /* host order */
	__u8 proto;
	__u8 pad;
};

/* gateway_settings says which wire block of every locator is its server's
 * gateway block (key 0 only): the ports an ingress flow leaves the
 * dialled server from, one per flow to a backend's port, as a client's
 * wire block. base 0: no ingress. The same on every server. */
struct gateway_settings {
	__u16 base;
	__u16 pad;
};

/* INGRESS_OPT is the IPv4 option the dialled server puts on an ingress
 * flow's packets until the backend answers, so the backend's server knows
 * the client: RFC 4727's experimental option 30 with the copy flag set,
 * then the client's port and address. */
#define INGRESS_OPT 0x9e
#define INGRESS_OPT_LEN 8

struct ingress_opt {
	__u8 type; /* INGRESS_OPT */
	__u8 len;  /* INGRESS_OPT_LEN */
	__be16 port;
	__be32 addr;
};

enum ingress_dir {
	IN_FWD = 0,   /* from the gateway: (backend, gateway locator, gateway
		       * port, the backend's port index) */
	IN_REPLY = 1, /* from the backend: (backend, client address, client
		       * port, the backend's port) */
};

/* ingress_key names an ingress flow on its backend's server, one way or
 * the other (enum ingress_dir). Ports in host order. */
struct ingress_key {
	__u32 backend; /* endpoint id */
	__u32 addr;    /* IN_FWD: the gateway's locator; IN_REPLY: the client */
	__u16 port;    /* IN_FWD: the gateway port; IN_REPLY: the client's */
	__u16 sport;   /* IN_FWD: the backend's port index; IN_REPLY: its port */
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

/* ingress_entry is what the backend's server knows of an ingress flow:
 * who the client is, and where its gateway is. A flow whose backend is
 * on the dialled server itself (local) has only an IN_REPLY entry, whose
 * gateway_port is the published port and offset the flow's offset of the
 * gateway block. */
struct ingress_entry {
	__u32 client;      /* network order */
	__u32 gateway;     /* the dialled server's locator, network order */
	__u16 client_port;
	__u16 gateway_port;
	__u16 index;  /* the backend's port index */
	__u16 offset; /* local: the CT_REV offset of the gateway's flow */
	__u8 local;
	__u8 pad[3];
};

/* outside_key is an LPM key of the outside map: a prefix of addresses. */
struct outside_key {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

/* What the outside map says of an address. Absent: outside every daoli
 * network, subject to the client network's egress. */
enum outside_kind {
	OUTSIDE_INTERNAL = 1, /* a daoli network's subnet, or an address that
			       * must never leave (0/8, loopback, multicast,
			       * class E, broadcast): never egress */
	OUTSIDE_LOCATOR = 2, /* a server's locator: egress, but never to its
			      * wire range, which belongs to the dataplane */
};

/* egress_key is an LPM key of the egress map: the client's network, then
 * a prefix of outside addresses it may reach. prefixlen counts the 32
 * bits of net_id. */
struct egress_key {
	__u32 prefixlen;
	__u32 net_id;
	__u32 addr; /* network order */
};

struct ep_stats {
	__u64 tx_packets; /* sent by the container */
	__u64 tx_bytes;
	__u64 rx_packets; /* delivered into the container */
	__u64 rx_bytes;
};

#define PIN_BY_NAME 1 /* LIBBPF_PIN_BY_NAME */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct server_settings);
	__uint(pinning, PIN_BY_NAME);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(pinning, PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, PIN_BY_NAME);
} endpoint_by_ifindex SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct wire_key);
	__type(value, __u32);
	__uint(pinning, PIN_BY_NAME);
} wire_blocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ident_key);
	__type(value, __u32);
	__uint(pinning, PIN_BY_NAME);
} ident_blocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct service_key);
	__type(value, struct service);
	__uint(pinning, PIN_BY_NAME);
} services SEC(".maps");

/* maglev holds MAX_TABLES tables of MAGLEV_SIZE endpoint ids each. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_TABLES * MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, PIN_BY_NAME);
} maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, PIN_BY_NAME);
} conntrack SEC(".maps");

/* offset_cursor: where the next offset search of a client towards one
 * destination starts, keyed by a hash of (client, backend, port index,
 * protocol). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, PIN_BY_NAME);
} offset_cursor SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct policy_key);
	__type(value, enum policy_verdict);
	__uint(pinning, PIN_BY_NAME);
} policies SEC(".maps");

/* flow_count, per local endpoint, counts the flows it ever opened and
 * those of them that ended (a TCP reset, or both FINs); only the programs
 * write it. */
struct flow_count {
	__u64 opened;
	__u64 closed;
};

/* flow_quota, per local endpoint, is written by the control plane from a
 * count of conntrack: the flows the endpoint held then that had not ended
 * (live), and its flow_count before (opened) and after (closed) the
 * count. A new flow is refused while live, plus the flows opened since,
 * less those ended since, reach flow_limit. */
struct flow_quota {
	__u64 opened;
	__u64 closed;
	__u32 live;
	__u32 pad;
};

/* flow_limit: the most flows one local endpoint may hold (one entry; 0:
 * no limit). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, PIN_BY_NAME);
} flow_limit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct flow_quota);
	__uint(pinning, PIN_BY_NAME);
} flow_quota SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct flow_count);
	__uint(pinning, PIN_BY_NAME);
} flow_counts SEC(".maps");

/* exports: the services a POLICY_EXPORTS pair of networks may reach. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct export_key);
	__type(value, __u8);
	__uint(pinning, PIN_BY_NAME);
} exports SEC(".maps");

/* outside: the subnets of every network and every server's locators, so
 * a new flow to none of them is known to leave the cluster. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct outside_key);
	__type(value, enum outside_kind);
	__uint(pinning, PIN_BY_NAME);
} outside SEC(".maps");

/* egress: per network, the outside prefixes its endpoints may open flows
 * to; a network with no entry reaches nothing outside. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct egress_key);
	__type(value, __u32); /* 1: allowed */
	__uint(pinning, PIN_BY_NAME);
} egress SEC(".maps");

/* published: every server's published ports -> the service behind. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct published_key);
	__type(value, struct service_key);
	__uint(pinning, PIN_BY_NAME);
} published SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gateway_settings);
	__uint(pinning, PIN_BY_NAME);
} gateway SEC(".maps");

/* ingress: the backend's side of ingress flows (see ingress_key). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ingress_key);
	__type(value, struct ingress_entry);
	__uint(pinning, PIN_BY_NAME);
} ingress SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_SLOTS);
	__type(key, enum drop_reason);
	__type(value, __u64);
	__uint(pinning, PIN_BY_NAME);
} drops SEC(".maps");

/* endpoint_stats holds one entry per local endpoint, created and deleted
 * by the control plane; the programs only add to it. Per-CPU values make
 * the adds race-free without atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ep_stats);
	__uint(pinning, PIN_BY_NAME);
} endpoint_stats SEC(".maps");
