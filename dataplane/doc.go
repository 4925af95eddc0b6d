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
// picks a backend, takes an offset of the client's blocks that is free
// towards that backend's port (see Offsets and conntrack) and is recorded
// in conntrack; then the packet leaves as
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
// # Egress
//
// A new flow to an address that no service of the client's network holds
// and that lies outside every network's subnet (State.Networks) leaves the
// cluster: to_outside sends it through the uplink as ServerIP_A:wire_C+o,
// where o is an offset of the client's wire block that is unique per
// outside destination (address, port, protocol; an echo's identifier is
// the port), as a NAT's ports are. The answer comes back to that port,
// which names the client through wire_blocks; from_outside finds the flow
// by (client, outside address and port, protocol, offset) in conntrack
// (CT_EGRESS) and puts the answer into the container as what it sent to.
// TCP, UDP, ICMP echo and the ICMP errors about such flows, both ways
// (frag-needed from a router outside reaches the container, so path MTU
// discovery works), are translated.
//
// What may leave is the client network's Egress (the egress map, an LPM
// trie keyed by network and prefix; DropEgressDenied otherwise), checked
// on every packet, so a revoked egress stops live flows too. Never leaving,
// whatever Egress says: an address of any network's subnet (isolation:
// DropNoService), 0/8, loopback, multicast and class E (the outside map),
// and the wire range of any server's locator, which is the dataplane's own
// (DropEgressDenied; a server's other ports are the outside). A TCP flow
// to the outside must start with a SYN: a segment of a flow the dataplane
// does not know is answered with a reset (DropCTMiss), and so is an
// outside peer's segment to a wire port of no flow, or to a stale one
// whose container moved away (DropStaleWire). A container that moves
// therefore has its TCP connections to the outside reset by the first
// segment either side sends afterwards, never left to time out; its UDP
// flows go on from the new server's address.
//
// Egress bypasses the server's own netfilter (the packet is redirected at
// tc), so iptables rules of the server neither see nor filter it, and the
// route to the destination must leave through the uplink
// (bpf_redirect_neigh drops a packet whose route names another device). A
// container cannot reach its own server's address this way. The server's
// own ICMP echo replies pass untouched unless their identifier is a wire
// port of an egress echo flow to the same address.
//
// # Ingress
//
// A published port (State.Published) leads from HostPort of every
// server's locators to a service. A client outside the cluster that
// dials ServerIP_X:HostPort opens a flow of X's gateway: from_network
// keeps it in conntrack under the scope GATEWAY_ID, as a container's
// flow (CT_OUT keyed by the client's 5-tuple, CT_REV by backend, port
// index, protocol and offset; kind CT_KIND_INGRESS, the CT_REV entry
// holding the client's address), picks the backend as a container's new
// flow does (Maglev, or the failover choice) and takes an offset of the
// gateway block (State.GatewayBase: one wire block, the same on every
// locator). A TCP flow must start with a SYN; another segment of no flow
// is answered with a reset. Then:
//
//   - a backend on X gets the packet straight, with only the destination
//     translated: it sees the client's own address and port;
//   - a backend S on server B gets it over the wire as
//     ServerIP_X:gateway+offset -> ServerIP_B:wire_S+index, carrying the
//     client's address and port in an IPv4 option (INGRESS_OPT, 8 bytes,
//     inserted with bpf_skb_adjust_room) on every packet until the
//     backend answers. from_network on B recognises a gateway by its
//     port (the gateway block of a locator), strips the option, records
//     the client both ways in the ingress map (IN_FWD: gateway and
//     gateway port -> client; IN_REPLY: the client's address and port
//     -> gateway) and delivers the packet from the client's address.
//
// The backend's answers go back through X, so a stateful firewall in
// front of X sees both directions: from_container looks the answer up in
// the ingress map (IN_REPLY) when it is neither of a known flow nor an
// answer to a container (so those pay nothing for it), sends it to
// ServerIP_X:gateway+offset (or, for a local flow, straight out of the
// uplink from ServerIP_X:HostPort), and from_network on X translates it
// back to ServerIP_X:HostPort -> client. An answer whose gateway port no
// longer names its client (the offset went to another client's flow) is
// dropped, never delivered to another client. A flow whose backend goes
// down takes another on its next packet: UDP goes on, a TCP connection
// gets a reset (the new backend has no socket for it).
//
// The backend sees the client's own address and port, so two flows from
// one client address and port to one backend through two servers would be
// one 4-tuple at the backend: the newer takes the answers. A new flow on a
// reused gateway offset is another 4-tuple at the backend, so the
// TIME_WAIT endings of container flows (end_time_wait) are not used.
// Packets with IPv4 options are not served (DropUnsupported); a packet
// that the option would make larger than the uplink's MTU is dropped
// (DropTooBig): a TCP SYN never is, a UDP flow's first datagrams must
// leave 8 bytes. ICMP errors about ingress flows are not translated.
// An outside client's address must not be one of a network's endpoints:
// an answer to it would be taken for an answer to that endpoint.
// A backend that moves keeps its ingress flows when its new server knows
// them: the server dialled (the flow lives there, and the backend's
// entry is written again on the next packet) or one it ran on during the
// flow. Elsewhere the client's next TCP segment gets a reset (which X
// passes to the client), the backend's next one too, and other packets
// are dropped. A packet to a published port never reaches the server's
// own stack.
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
// answer without state. A Policy with Only is an export: only the services
// it lists are projected, its verdict is POLICY_EXPORTS, and the exports
// map, keyed by (from, to, IP, port, protocol), says which of To's services
// From's clients may reach; the backend's server checks it against the port
// the packet's wire port names, so a packet crafted straight to another
// port of an exporting endpoint is dropped there (DropPolicy). Policies are
// checked when a flow starts (and when
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
//	policies             (from network, to network) -> allow, deny or exports
//	exports              (from, to, IP, port, protocol) of an export -> 1
//	flow_limit           the most flows one local endpoint may hold (one entry)
//	flow_counts          per local endpoint, the flows it ever opened and those that ended (the programs count)
//	flow_quota           per local endpoint, AccountFlows' count of the flows it holds, and flow_counts then
//	outside              LPM: network subnets and never-egress prefixes -> internal; server locators -> locator
//	egress               LPM: (network, prefix) -> allowed outside destinations
//	published            (host port, protocol) -> the service it leads to
//	gateway              the gateway block's base (one entry)
//	conntrack            LRU; CT_OUT: client's 5-tuple -> flow; CT_REV: (client, backend, port index, protocol, offset) -> flow;
//	                     CT_EGRESS: (client, outside address, outside port, protocol, offset) -> flow;
//	                     ingress flows under the client GATEWAY_ID
//	ingress              LRU; the backend's side of ingress flows: IN_FWD (backend, gateway, gateway port, index) and
//	                     IN_REPLY (backend, client address, client port, port) -> client and gateway
//	offset_cursor        LRU; where a client's next offset search towards one destination starts
//	drops                per-CPU counters by DropReason (32 slots, room for new reasons)
//	endpoint_stats       per-CPU packet and byte counters per local endpoint
//
// Apply owns settings, endpoints, endpoint_by_ifindex, wire_blocks,
// ident_blocks, services, maglev, policies, exports, outside, egress, published,
// gateway and the entries of endpoint_stats; the programs own conntrack,
// offset_cursor, ingress and the counts (AccountFlows writes flow_quota
// and flow_limit). Because nothing else writes Apply's maps, Apply reads
// them only the first time (adopting what a previous process left) and
// after a failed write; otherwise it diffs against what it last wrote,
// held in memory, and touches the maps only where they change.
// Apply creates a zeroed endpoint_stats entry for every local endpoint and
// deletes it when the endpoint leaves the server; the programs only add to
// their CPU's copy, so counts are exact under concurrency and never
// evicted, and EndpointCounters sums the CPUs. Conntrack stores endpoint
// ids, offsets and the client's own port, never locations: when an
// endpoint moves, one Apply re-points its live flows.
//
// # Offsets and conntrack
//
// A client's flow takes an offset of its blocks: it leaves as
// ServerIP_A:wire_C+offset -> ServerIP_B:wire_S+index and reaches the
// backend as IP_c:ident_C+offset -> IP_s:Port_s, inside the backend's own
// namespace. An offset is therefore unique per client and destination
// (backend, port index, protocol; ICMP echo is index 0 of its own
// protocol), as a NAT's ports are: the same offset towards another backend
// or port is another 5-tuple on the wire and another 4-tuple at the
// backend. With 256-port blocks a client has 256 - len(Ports) offsets
// towards each backend port, however many other flows it has elsewhere.
//
// Conntrack lives only on the client's server. CT_OUT is keyed by the
// 5-tuple the client sent (its scope the client's id) and says where the
// flow goes; CT_REV is keyed by (client, backend, port index, protocol,
// offset), holds the offset and the flow's state, and is what replies find:
// from_network knows the backend from a reply's source (wire_blocks), the
// port index from its source port and the offset from its destination
// port; a backend on the same server, from its identity and port. ICMP
// errors are matched the same way through their quote. Failover
// re-selection moves a flow's CT_REV entry: the flow keeps its offset when
// that is free towards the new backend's port, else takes another, and
// CT_OUT is pointed at the new entry before the old one is deleted, so the
// old backend's packets no longer reach the client.
//
// A new flow searches its destination's offsets from just past the last
// one handed out there (offset_cursor), so it meets the oldest flows
// first, looks at up to 256 of them (a whole block at the default size)
// and takes the first free one: without a CT_REV entry, or whose entry
// expired. An idle flow keeps its offset:
//
//	TCP, established              1 h
//	TCP, never answered           30 s (a SYN to a silent backend)
//	TCP, one side sent FIN        2 min (half closed, as conntrack's fin_wait)
//	TCP, both FINs or a reset     2 s (a late FIN or last ACK is resent after
//	                              200 ms, 600 ms, 1.4 s: three chances)
//	UDP                           30 s (conntrack's udp timeout; a later
//	                              datagram takes the flow up again if nobody
//	                              took its offset meanwhile); 1 s once
//	                              answered, for a new flow that finds no
//	                              offset free
//	ICMP echo                     1 min
//
// When no offset is free, a new TCP flow may take one whose flow is over,
// both FINs acknowledged (tracked by sequence number) or reset, for at
// least 2 ms, as a kernel reuses a port in TIME_WAIT; the 2 s hold only
// decides who goes first. Likewise a UDP flow that was answered and is
// idle for 1 s gives its offset to a new flow that finds none free, so a
// client sending each request from a new socket (DNS) is not held to a
// block's worth per 30 s; a UDP flow that sends again after that goes on
// from another offset. The programs never take a busy offset: that
// would hand one flow's replies to another. Two CPUs never take the same
// one: a claim is a compare-and-swap of the entry's last_seen, and the
// search looks before it inserts, because an insert into the full LRU
// takes a node, evicting another flow, even when it then fails. A SYN on a
// closed flow's 5-tuple opens it again on the same offset.
//
// The backend's TIME_WAIT would make that reuse slow: Linux draws TCP
// timestamps per connection, so half of the new SYNs look older than the
// last segment of the previous connection on the 4-tuple and are refused
// (PAWS); the client's kernel resets the answer and sends its SYN again,
// losing a round trip and TCP_TIMEOUT_MIN (8 ms at HZ=250). So when a
// backend sent its FIN before it had
// the client's, and both FINs are acknowledged, the dataplane ends the
// backend's side with a reset at the sequence number it expects: the
// backend's ACK reflected back to it (end_time_wait, bpf_clone_redirect)
// when it closed first, or the client's last ACK sent as a reset when the
// FINs crossed. Both sides have everything by then (both FINs
// acknowledged) and the client's socket does not notice. A backend that
// sets net.ipv4.tcp_rfc1337 ignores such resets, the client's too: its
// TIME_WAIT (60 s) then refuses about half of the SYNs that reuse the
// 4-tuple, which their clients retry with the usual SYN backoff.
//
// When no offset can be had, the new flow is answered, not dropped, so its
// client fails at once instead of at its own timeout: a TCP segment gets
// the reset a host without a listener sends (RST|ACK acknowledging a SYN,
// or RST at the segment's ACK number), a UDP datagram an ICMP port
// unreachable quoting it (its socket sees ECONNREFUSED), both from the
// address the client dialled, built in place and sent back out of the
// client's veth (bpf_redirect). ICMP echo, and packets with IPv4 options,
// are dropped. All count as offsets_full. A TCP reset that matches no flow
// is dropped (ct_miss) rather than given an offset.
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
//     wire fragment passes to the host untouched), and so are a
//     container's packets with IPv4 options (DropIPOptions) or a wrong
//     IPv4 header checksum (DropBadChecksum). TCP and UDP checksums are
//     not checked: rewritten by deltas, a wrong one stays wrong for the
//     receiving kernel to discard. Containers keep the
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
//     about to follow the endpoint. Its mirror: a segment from another
//     locator's wire port that no block this server knows holds (a backend
//     that moved there before this server applied the move) is dropped as
//     stale_wire too, never taken for an outside host's and reset.
//   - Conntrack full: the LRU evicts the oldest flows, and such a flow
//     restarts as a new one with a new offset (TCP then gets a reset). No
//     local endpoint may hold more than Config.MaxFlowsPerEndpoint flows
//     (DropFlowLimit), so one container cannot fill it alone. A
//     client has 256 - len(Ports) offsets per destination (backend, port):
//     flows beyond that are refused (see Offsets and conntrack); a client
//     sending UDP from a new socket per request to one backend port (DNS)
//     reuses the offsets of answered requests after 1 s, so it is held to
//     about 256 requests in flight or answered within the last second, and
//     to 256 per 30 s of requests nobody answers. Block sizes above 256 are
//     searched 256 offsets at a time from the cursor.
//   - Upgrading over the change to per-destination offsets (CT_REV keys)
//     restarts live flows: their CT_REV entries are not found any more,
//     so TCP flows get a reset from their backend.
//   - The wire is trusted, as with any unencapsulated underlay: a packet
//     from a ServerIP and port in a registered wire block is believed.
//   - At most MaxPorts served ports per endpoint. 1024 Maglev tables of
//     MaglevSize slots (a replaced table is freed one Apply later); only
//     balance services with two or more active backends take one (a
//     single backend is failover to it). When every table is taken, the
//     services that get none send their new flows to one backend
//     (Unbalanced counts them) rather than the whole Apply failing.
//   - Map sizes come from Config: MaxEndpoints (default 16384) for the
//     cluster-wide endpoints, wire and identity blocks, four times as many
//     services; MaxFlows (default 32768) for conntrack. Apply refuses a
//     State with more endpoints than the maps hold; the agent then keeps
//     the oldest. Resizing needs the pinned maps removed.
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
