// Package dataplane is daoli's eBPF dataplane: two tc programs that map a
// container's identity (network, IP, port) to its location (ServerIP,
// ServerPort) and back, without encapsulation, and the Go side that loads,
// attaches, pins and updates them.
//
// # Programs
//
// from_container runs on the tcx ingress of every endpoint's host-side
// veth (AttachEndpoint). It answers the container's ARP with the gateway
// MAC, drops packets whose source MAC or IP is not the endpoint's, and
// rewrites the rest: a new flow looks up the service (network, IP, port,
// protocol), checks the policy of the client's and the service's networks,
// picks a backend, takes a free offset in the client's blocks and is
// recorded in conntrack; then the packet leaves as
// ServerIP_A:wire_base_C+offset -> ServerIP_B:wire_base_S+port_index,
// through the uplink (bpf_redirect_neigh). A backend on the same server gets
// the packet directly (bpf_redirect_peer) with only the client's port
// changed to its identity port. A packet a backend sends to a client's
// identity port is a reply and goes back the same way, needing no state on
// the backend's server.
//
// from_network runs on the tcx ingress of the uplink (AttachUplink). A
// packet to a local endpoint's wire block is translated to identity (the
// client's IP and identity port, the service's IP and port, MACs set) and
// put straight into the container; a client's packet must come from a
// network the policy lets reach the backend's. Everything else returns
// TC_ACT_OK byte-identical: the server's own traffic is not touched.
//
// Both programs act as routers: every packet they rewrite loses one from
// its TTL (checksum updated incrementally), so a packet between two
// servers loses two, one on each server, and one between two containers
// of one server. A packet that arrives with a TTL of 1 or less is dropped
// (DropTTL); no time exceeded is generated for it, so a traceroute from a
// container shows no hop for its own server.
//
// ICMP echo has one port-like field, the identifier; it always carries the
// client's port. The backend's ServerPort of an echo travels in the IPv4
// identification field, and wire echoes carry ICMP code 0xda so a host's
// own ping never matches a wire block. Every endpoint answers echo; the
// echo service of (network, IP) is failover over all its endpoints.
//
// # ICMP errors
//
// Destination unreachable (frag-needed included, so path MTU discovery
// works) and time exceeded are translated along with the packet they
// quote. On the wire an error is what a router would send: from anyone to
// ServerIP, quoting the wire packet. from_network recognises one of ours by
// its quote: a quoted source (ServerIP, port) in a local endpoint's wire
// block. It rewrites the quote back to what the endpoint sent (its IP and
// port, the peer's identity IP and port), sets the error's own source to
// that peer's identity IP (the fabric's routers stay invisible) and puts it
// into the endpoint. error_from_container does the reverse for an error a
// container's kernel sends about a packet it received, as a backend (a
// UDP port unreachable) or as a client: the quote becomes the packet as
// its sender sent it, and the error goes to the sender, over the wire from
// ServerIP to ServerIP or straight into a local container. The quoted IPv4
// checksum, the quoted UDP checksum, the quoted TCP checksum when the quote
// is long enough to hold it, and the error's ICMP checksum are all updated
// incrementally. Both handlers are BPF global functions, verified once.
// Only quotes of TCP and UDP first fragments without IPv4 options are
// translated: from_network passes other errors to the host, from_container
// drops them (DropUnsupported), and an error whose flow is unknown is
// dropped (DropCTMiss).
//
// # Policy
//
// Endpoints reach the services of their own network and nothing else,
// unless a Policy says otherwise. A Policy{From, To} makes the services of
// To visible in From (the services map is keyed by the client's network,
// and a projected entry says in net_id which network it serves); Allow
// says whether From's clients may open flows to them. The programs check
// the policies map, keyed by (from, to), where absent means allow for the
// same network and deny otherwise: a denied flow is dropped with
// DropPolicy; a network no Policy shows stays invisible (DropNoService). An
// allowed From's identity blocks are copied into To, so backends of To can
// answer without state. Policies are checked when a flow starts (and when
// it is moved to another backend) on the client's server and, for flows
// that cross servers, on every packet at the backend's server; a flow
// between two containers of one server outlives a removed Allow until its
// conntrack entry expires.
//
// # Maps
//
// All maps are pinned by name under Config.BPFFSPath:
//
//	settings             gateway MAC, block size, uplink ifindex (one entry)
//	endpoints            endpoint id -> network, IP, MAC, ServerIP, blocks, served ports, state, ifindex
//	endpoint_by_ifindex  host-side veth -> endpoint id (local endpoints only)
//	wire_blocks          (ServerIP, block base) -> endpoint id (every endpoint)
//	ident_blocks         (network, IP, block base) -> endpoint id (every endpoint, and allowed networks' copies)
//	services             (client's network, IP, port, proto) -> service's network, mode, active backends, failover choice, Maglev table
//	maglev               table*1021+slot -> endpoint id
//	policies             (from network, to network) -> allow or deny
//	conntrack            LRU; CT_OUT: client's 5-tuple -> flow; CT_REV: (client, offset) -> flow
//	offset_cursor        LRU; where an endpoint's next offset search starts
//	drops                per-CPU counters by DropReason (32 slots, room for new reasons)
//	endpoint_stats       per-CPU packet and byte counters per local endpoint
//
// Apply owns settings, endpoints, endpoint_by_ifindex, wire_blocks,
// ident_blocks, services, maglev, policies and the entries of
// endpoint_stats; the programs own conntrack, offset_cursor and the counts.
// Apply creates a zeroed endpoint_stats entry for every local endpoint and
// deletes it when the endpoint leaves the server; the programs only add to
// their CPU's copy, so counts are exact under concurrency and never
// evicted, and EndpointCounters sums the CPUs. Conntrack stores endpoint
// ids, offsets and the client's own port, never locations: when an
// endpoint moves, one Apply re-points its live flows.
//
// # Lifetimes
//
// Maps and tcx links are pinned, so they outlive the process: Close
// releases only the process's handles and traffic keeps flowing. The next
// New adopts the pinned maps (and fails with ebpf.ErrMapIncompatible when
// a new version changed a layout: remove the directory to reset), and
// AttachEndpoint/AttachUplink adopt a pinned link of the same interface,
// swapping the program in atomically. Remove detaches and unpins
// everything. A link pinned for an interface that went away is replaced
// when its index is attached again.
//
// Without tcx (Linux before 6.6: link.AttachTCX reports
// ebpf.ErrNotSupported), or with Config.ForceTC, the programs are attached
// the older way: a clsact qdisc and a direct-action bpf filter on its
// ingress (priority 1, handle 0xda, named daoli_<program>), in the network
// namespace of the calling thread. The filter lives on the device, so it
// outlives the process like a pinned link; attaching again replaces it
// atomically, which is how a restarted process adopts it. Nothing is
// pinned for it: Detach and Remove delete the filters this process
// attached, in the namespace each was attached in (Detach of a filter
// this process did not attach looks in the calling thread's namespace);
// a restarted process must attach an interface again before Remove sees
// its filter. Switching modes replaces the other mode's attachment.
//
// # Hazards and limits
//
//   - IPv4 only. IPv6 from a container is dropped; IPv4 fragments too (a
//     wire fragment passes to the host untouched). Containers keep the
//     whole MTU of the fabric (no outer header), and path MTU discovery
//     works through routers (see ICMP errors); but the dataplane generates
//     no frag-needed itself, so a container's MTU must not exceed its
//     server's uplink MTU.
//   - Block size is one cluster-wide power of two (State.BlockSize), and
//     every wire and identity block starts at a multiple of it, so a port
//     names its block with port &^ (size-1). Offsets 0 to len(Ports)-1 of a
//     wire block are ServerPorts; the rest carry outgoing flows. The mapper
//     must keep wire blocks unique per ServerIP, identity blocks unique per
//     (network, IP) and clear of every port served on that (network, IP).
//   - The server's own sockets must never use wire-block ports: reserve them
//     with net.ipv4.ip_local_reserved_ports. from_network owns every packet
//     to a wire block and drops what it cannot place. With State.WirePorts
//     and State.LocalIPs set, it owns the whole wire range of the server's
//     locators: a packet to a port no block holds any more (its endpoint
//     just moved away) is dropped as stale_wire instead of reaching the
//     host, whose TCP would answer with a reset and end the flow that is
//     about to follow the endpoint.
//   - Conntrack full: the LRU evicts the oldest flows, and such a flow
//     restarts as a new one with a new offset (TCP then gets a reset). Offset
//     allocation fails closed: when a client has no free offset among 32
//     probes, the new flow is dropped (offsets_full) rather than reusing a
//     busy offset, which would deliver one flow's replies to another flow.
//     Offsets are free again after 1 h idle for TCP (10 s after FIN or
//     RST), 2 min for UDP and 1 min for ICMP.
//   - The wire is trusted, as with any unencapsulated underlay: a packet
//     from a ServerIP and port in a registered wire block is believed.
//   - At most MaxPorts served ports per endpoint, 256 Maglev tables of
//     MaglevSize slots (a replaced table is freed one Apply later).
//   - Only TCP, UDP, ICMP echo and the ICMP errors above pass. Errors about
//     ICMP echo are not translated.
//   - Per-endpoint counters start at zero when an endpoint becomes local
//     and go when it leaves the server.
//   - A container cannot reach a service on its own IP: its kernel keeps
//     such packets on loopback.
//
// # Generating
//
// The bpf2go output (daoli_bpfel.go, daoli_bpfel.o) is committed, so a
// build needs no clang. After changing bpf/, regenerate with clang 19 and
// the libbpf and Linux uapi headers (Debian: clang-19, libbpf-dev,
// linux-libc-dev):
//
//	go generate ./dataplane
//
// which runs
//
//	go tool bpf2go -cc clang-19 -target bpfel \
//	    -cflags "-O2 -g -Wall -Werror -idirafter /usr/include/x86_64-linux-gnu" \
//	    -type ... daoli bpf/daoli.c -- -I./bpf
//
// and commit the result; the output must not change when nothing did.
//
// # Tests
//
// The tests need root; they skip when not root and fail instead when
// DAOLI_REQUIRE_PRIVILEGED=1. They mount private bpf filesystems and build
// their own namespaces (internal/testbed), never touching /sys/fs/bpf or
// the root namespace's network. Unit tests run the programs over packets
// crafted with gopacket (BPF_PROG_TEST_RUN) and check every checksum;
// traffic tests send real TCP, UDP and ICMP between containers, over one
// bridge or over two subnets joined by a router namespace (path MTU,
// routing without container routes), and move a container between
// servers under a live connection.
package dataplane
