// Package mapper is daoli's registry: the record of networks, servers and
// endpoints, and of the 6-tuple (ServerMAC, ServerIP, ServerPort; MAC, IP,
// Port) of every port an endpoint serves.
//
// The types that matter:
//
//   - Registry: the model and its rules over a store.Store. Every method is
//     one serializable transaction: validation, allocation and indexes are
//     written together or not at all, and concurrent callers never receive
//     overlapping port blocks.
//   - Network, Server, Endpoint, SixTuple, Service: the model. Services are
//     derived from endpoints (see Services), never stored.
//   - API and Client: the HTTP/JSON API under /v1 and its Go client. Client
//     errors unwrap to the same sentinel errors as the Registry's.
//   - Snapshot, Change, WatchResponse: following the registry. Take a
//     Snapshot, then Watch from its Revision+1; after a disconnect, watch
//     again from the last revision seen plus one; on ErrCompacted, take a
//     new Snapshot.
//
// Allocation. Every endpoint gets a wire block, a slice of one of its
// server's locator addresses' port space (Config.WirePorts), and an
// identity block, unique among the endpoints that share its (network, IP)
// (Config.IdentityPorts). Blocks are aligned to the block size, which is
// fixed when a registry is first created: dataplanes find a port's block by
// masking with it. A served port i has ServerPort = wire base + i.
//
// Liveness. A server is alive while its lease lasts (Config.ServerTTL):
// registering grants one, Heartbeat renews it without writing anything,
// and RunLiveness, which every mapper runs, marks a server Gone when its
// lease ran out. Agents treat the endpoints of a gone server as down.
//
// Caveats. Only IPv4 networks and locators are supported. Endpoint and
// network IDs are never reused, so a dataplane may key state by them.
package mapper
