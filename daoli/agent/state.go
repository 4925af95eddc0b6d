package agent

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"

	"github.com/daolinet/daoli/dataplane"
	"github.com/daolinet/daoli/mapper"
)

// model is the agent's copy of the registry: a snapshot kept current by
// the change log. It is safe for concurrent use.
type model struct {
	mu        sync.Mutex
	loaded    bool // a snapshot was loaded: until then the model says nothing
	revision  int64
	relevant  int64           // the newest revision that changed what the dataplane holds
	deleted   map[uint32]bool // endpoints deleted since the snapshot: put must not revive them
	networks  map[string]mapper.Network
	servers   map[string]mapper.Server
	endpoints map[uint32]mapper.Endpoint
}

func newModel() *model {
	return &model{networks: map[string]mapper.Network{}, servers: map[string]mapper.Server{}, endpoints: map[uint32]mapper.Endpoint{}, deleted: map[uint32]bool{}}
}

// reset replaces the model with a snapshot.
func (m *model) reset(s mapper.Snapshot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loaded = true
	m.revision, m.relevant = s.Revision, s.Revision
	clear(m.networks)
	clear(m.servers)
	clear(m.endpoints)
	clear(m.deleted)
	for _, n := range s.Networks {
		m.networks[n.Name] = n
	}
	for _, sv := range s.Servers {
		m.servers[sv.Name] = sv
	}
	for _, e := range s.Endpoints {
		m.endpoints[e.ID] = e
	}
}

// apply folds one change into the model and reports whether it changes
// what the dataplane holds: a server written again with the same
// addresses and liveness does not, and must not cost every agent a
// reconcile. Changes must come
// in revision order. Several changes share a revision when one write made
// them (a batch of endpoints), so a change of the model's own revision is
// applied (applying one twice changes nothing) and only older ones are
// ignored: a watch resumed at the last revision seen loses nothing.
func (m *model) apply(c mapper.Change) (matters bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.Revision < m.revision {
		return false
	}
	m.revision = c.Revision
	del := c.Type == "delete"
	switch {
	case c.Network != nil && del:
		delete(m.networks, c.Network.Name)
	case c.Network != nil:
		m.networks[c.Network.Name] = *c.Network
	case c.Server != nil && del:
		delete(m.servers, c.Server.Name)
	case c.Server != nil:
		old, ok := m.servers[c.Server.Name]
		m.servers[c.Server.Name] = *c.Server
		if ok && old.MAC == c.Server.MAC && slices.Equal(old.IPs, c.Server.IPs) && old.Gone == c.Server.Gone {
			return false
		}
	case c.Endpoint != nil && del:
		delete(m.endpoints, c.Endpoint.ID)
		m.deleted[c.Endpoint.ID] = true
	case c.Endpoint != nil:
		m.endpoints[c.Endpoint.ID] = *c.Endpoint
	}
	m.relevant = c.Revision
	return true
}

// current returns the revision up to which a dataplane programmed from
// revision programmed is current: the model's own when no change since
// touched the dataplane (heartbeats need no programming).
func (m *model) current(programmed int64) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if programmed > 0 && programmed >= m.relevant {
		return m.revision
	}
	return programmed
}

// put records an endpoint the agent itself just wrote (created here, or
// moved here), so it is programmed before the change log brings it back.
// When the log was faster, its copy is as new or newer and stays: a
// deleted endpoint is not revived, and a copy that already shows the
// write (same server and interface) is not replaced by it.
func (m *model) put(e mapper.Endpoint) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.deleted[e.ID] {
		return
	}
	if old, ok := m.endpoints[e.ID]; ok && old.Server == e.Server && old.Interface == e.Interface {
		return
	}
	m.endpoints[e.ID] = e
}

// local returns this server's endpoints, by ID.
func (m *model) local(server string) []mapper.Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []mapper.Endpoint
	for _, e := range m.endpoints {
		if e.Server == server {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b mapper.Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// ready reports whether the model holds the registry, rather than nothing
// yet: programming an empty model would wipe a working dataplane.
func (m *model) ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.loaded
}

func (m *model) rev() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.revision
}

// desired derives the dataplane state of server self from the model:
// every network, server and endpoint of the cluster, with the host-side
// ifindex of self's own endpoints from ifindex (0 when the interface is not
// there).
func (m *model) desired(self string, blockSize uint16, ifindex func(name string) int) dataplane.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := dataplane.State{BlockSize: blockSize}
	for _, sv := range m.servers {
		for _, ip := range sv.IPs {
			s.Servers = append(s.Servers, dataplane.Server{IP: ip, MAC: sv.MAC.HardwareAddr()})
		}
	}
	slices.SortFunc(s.Servers, func(a, b dataplane.Server) int { return a.IP.Compare(b.IP) })
	for _, n := range m.networks {
		s.Networks = append(s.Networks, dataplane.Network{ID: n.ID, Subnet: n.Subnet, Egress: n.Egress.Prefixes()})
	}
	slices.SortFunc(s.Networks, func(a, b dataplane.Network) int { return cmp.Compare(a.ID, b.ID) })
	s.Policies = m.policies()
	// In ID order: sorting the IDs is cheaper than sorting the endpoints.
	ids := make([]uint32, 0, len(m.endpoints))
	for id := range m.endpoints {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	s.Endpoints = make([]dataplane.Endpoint, 0, len(ids))
	for _, id := range ids {
		e := m.endpoints[id]
		d := dataplane.Endpoint{
			ID: e.ID, Network: e.NetworkID, IP: e.IP, MAC: e.MAC.HardwareAddr(),
			Server: e.Wire.Addr, WireBase: e.Wire.Base, IdentityBase: e.Identity.Base,
			Mode: dataplane.Failover, Priority: uint32(e.Priority), State: dataplane.Active,
		}
		if e.Mode == mapper.Balance {
			d.Mode = dataplane.Balance
		}
		// An endpoint of a server that is gone is down for everyone
		// else: nobody is there to mark it so. The server itself, if it
		// lives on cut off from the mappers, keeps serving its own.
		if e.State == mapper.Down || (e.Server != self && m.servers[e.Server].Gone) {
			d.State = dataplane.Down
		}
		for _, p := range e.Ports {
			proto := dataplane.TCP
			if p.Protocol == mapper.UDP {
				proto = dataplane.UDP
			}
			d.Ports = append(d.Ports, dataplane.Port{Number: p.Port, Proto: proto})
		}
		if e.Server == self && e.Interface != "" {
			d.Ifindex = ifindex(e.Interface)
		}
		s.Endpoints = append(s.Endpoints, d)
		for _, p := range e.Published {
			proto := dataplane.TCP
			if p.Protocol == mapper.UDP {
				proto = dataplane.UDP
			}
			pp := dataplane.Published{HostPort: p.HostPort, Proto: proto, Network: e.NetworkID, IP: e.IP, Port: p.Port}
			if !slices.Contains(s.Published, pp) {
				s.Published = append(s.Published, pp)
			}
		}
	}
	// Sorted whole, so that every server keeps the same one where a port
	// leads to two services (servedPublished).
	slices.SortFunc(s.Published, func(a, b dataplane.Published) int {
		return cmp.Or(cmp.Compare(a.HostPort, b.HostPort), cmp.Compare(a.Proto, b.Proto),
			cmp.Compare(a.Network, b.Network), a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port))
	})
	return s
}

// servedPublished returns the published ports of s that lead to a
// service some endpoint of s serves: those of endpoints left out of s
// go with them. Where two services publish one port (the registry
// refuses that now; one from before ports were the cluster's may hold
// such pairs), the first in desired's order is kept, the same on every
// server.
func servedPublished(s dataplane.State) []dataplane.Published {
	type svc struct {
		network uint32
		ip      netip.Addr
		port    uint16
		proto   dataplane.Proto
	}
	served := map[svc]bool{}
	for _, e := range s.Endpoints {
		for _, p := range e.Ports {
			served[svc{e.Network, e.IP, p.Number, p.Proto}] = true
		}
	}
	var out []dataplane.Published
	for _, p := range s.Published {
		if served[svc{p.Network, p.IP, p.Port, p.Proto}] &&
			!slices.ContainsFunc(out, func(q dataplane.Published) bool { return q.HostPort == p.HostPort && q.Proto == p.Proto }) {
			out = append(out, p)
		}
	}
	return out
}

// policies derives the dataplane's policies from the networks'
// connections, groups and exports (mapper.ReachOf). m.mu is held.
func (m *model) policies() []dataplane.Policy {
	nets := make([]mapper.Network, 0, len(m.networks))
	for _, n := range m.networks {
		nets = append(nets, n)
	}
	reach := mapper.ReachOf(nets)
	var ps []dataplane.Policy
	for from, tos := range reach.Full {
		for _, to := range tos {
			ps = append(ps, dataplane.Policy{From: m.networks[from].ID, To: m.networks[to].ID, Allow: true})
		}
	}
	for from, tos := range reach.Only {
		for to, exports := range tos {
			p := dataplane.Policy{From: m.networks[from].ID, To: m.networks[to].ID, Allow: true}
			for _, e := range exports {
				proto := dataplane.TCP
				if e.Protocol == mapper.UDP {
					proto = dataplane.UDP
				}
				p.Only = append(p.Only, dataplane.ServiceRef{IP: e.IP, Port: dataplane.Port{Number: e.Port, Proto: proto}})
			}
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b dataplane.Policy) int { return cmp.Or(cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To)) })
	return ps
}
