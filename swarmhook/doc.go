// Package swarmhook connects orchestrators to daoli. Today that is Docker:
//
//   - Plugin is a Docker network driver and IPAM driver in one legacy
//     plugin (a unix socket under /run/docker/plugins), so that
//     `docker network create -d daoli --ipam-driver daoli --subnet ...`
//     makes a daoli network and `docker run --network ...` attaches the
//     container through the local agent, with its IP and MAC fixed.
//   - Watcher follows Docker's container events (start, die, kill, pause,
//     unpause, destroy, health_status) and marks the plugin's endpoints
//     active or down in the mapper, guarded by server and interface; it
//     reads the stream in a goroutine of its own, resumes from the last
//     event's time, and reconciles periodically, removing endpoints no
//     container holds (Docker drops events for slow readers, and a dockerd
//     killed mid-way never sends DeleteEndpoint).
//   - Docker is the small interface over the Docker Go client the package
//     uses; only this package imports the client (internal/layering).
//
// The scheduler API lives in the mapper (mapper/scheduler.go), where a
// placement and its wire block are one transaction; managed/config.json
// packages the plugin as a managed Docker plugin.
//
// Shared addresses. Docker shows a plugin no container labels, so a
// container declares the service it serves with driver options on its
// endpoint (OptService, OptMode, OptPriority, OptPorts). The IPAM hands
// out any requested address; the driver's CreateEndpoint, the first call
// that sees both the address and the declaration, claims it in the
// mapper: it registers the endpoint down, and gives up, removing it
// again, if another endpoint of the network holds the IP without
// declaring the same service, or won the race for it (the lower endpoint
// ID wins). Join marks the endpoint active. docs/docker.md has the whole
// story.
//
// The veth flow. The agent creates the veth pair in the server's
// namespace and registers the endpoint with the host side as its
// interface (POST /v1/host-veth on its socket); Join names the peer, and
// Docker moves it into the container, renames it eth0 and sets its MAC,
// address and default route via the network's gateway, whose ARP the
// dataplane answers.
//
// Caveats. The plugin keeps its state (networks by Docker ID with the
// name the mapper knows them by, endpoints) in one JSON file, because
// Docker sends CreateNetwork only once. One plugin serves one server's
// Docker engine and talks to that server's agent. IPv6 is refused. A
// Plugin is safe for concurrent use; its zero value is not usable (call
// New).
package swarmhook
