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
// rewrites the rest: a new flow picks a backend of the service (network,
// IP, port, protocol), takes a free offset in the client's blocks and is
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
// put straight into the container. Everything else returns TC_ACT_OK
// byte-identical: the server's own traffic is not touched.
//
// ICMP echo has one port-like field, the identifier; it always carries the
// client's port. The backend's ServerPort of an echo travels in the IPv4
// identification field, and wire echoes carry ICMP code 0xda so a host's
// own ping never matches a wire block. Every endpoint answers echo; the
// echo service of (network, IP) is failover over all its endpoints.
//
// # Maps
//
// All maps are pinned by name under Config.BPFFSPath:
//
//	settings             gateway MAC, block size, uplink ifindex (one entry)
//	endpoints            endpoint id -> network, IP, MAC, ServerIP, blocks, served ports, state, ifindex
//	endpoint_by_ifindex  host-side veth -> endpoint id (local endpoints only)
//	wire_blocks          (ServerIP, block base) -> endpoint id (every endpoint)
//	ident_blocks         (network, IP, block base) -> endpoint id (every endpoint)
//	services             (network, IP, port, proto) -> mode, active backends, failover choice, Maglev table
//	maglev               table*1021+slot -> endpoint id
//	conntrack            LRU; CT_OUT: client's 5-tuple -> flow; CT_REV: (client, offset) -> flow
//	offset_cursor        LRU; where an endpoint's next offset search starts
//	drops                per-CPU counters by DropReason
//	endpoint_stats       LRU per-CPU packet and byte counters per endpoint
//
// Apply owns settings, endpoints, endpoint_by_ifindex, wire_blocks,
// ident_blocks, services and maglev; the programs own conntrack,
// offset_cursor and the counters. Conntrack stores endpoint ids, offsets
// and the client's own port, never locations: when an endpoint moves, one
// Apply re-points its live flows.
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
// # Hazards and limits
//
//   - IPv4 only. IPv6 from a container is dropped; IPv4 fragments too (a
//     wire fragment passes to the host untouched).
//   - Block size is one cluster-wide power of two (State.BlockSize), and
//     every wire and identity block starts at a multiple of it, so a port
//     names its block with port &^ (size-1). Offsets 0 to len(Ports)-1 of a
//     wire block are ServerPorts; the rest carry outgoing flows. The mapper
//     must keep wire blocks unique per ServerIP, identity blocks unique per
//     (network, IP) and clear of every port served on that (network, IP).
//   - The server's own sockets must never use wire-block ports: reserve them
//     with net.ipv4.ip_local_reserved_ports. from_network owns every packet
//     to a wire block and drops what it cannot place.
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
//   - Only TCP, UDP and ICMP echo pass; ICMP errors are dropped.
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
// the root namespace's network.
package dataplane
