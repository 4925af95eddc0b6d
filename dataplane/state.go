package dataplane

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Limits of the maps; Apply rejects a State that exceeds them.
const (
	// MaxPorts is the number of ports one endpoint may serve.
	MaxPorts = 32
	// MaglevSize is the number of slots in one Maglev table (a prime).
	MaglevSize = 1021
	// maxTables is the number of Maglev tables the maglev map holds. Half
	// of them are spare so a table can be replaced without a gap.
	maxTables = 1024
	// DefaultBlockSize is the block size used when State.BlockSize is 0.
	DefaultBlockSize = 256
)

// DefaultGatewayMAC is the MAC containers learn for every address of their
// subnet when State.GatewayMAC is nil. It must be the same on every server
// so a moved container's neighbour cache stays right: a locally
// administered unicast address ("02:") spelling "da:01".
var DefaultGatewayMAC = net.HardwareAddr{0x02, 0xda, 0x01, 0x00, 0x00, 0x01}

// Proto is an IP protocol number a port is served on.
type Proto uint8

// Protocols an endpoint can serve ports on.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Mode says how a service spreads new flows over its backends. The zero
// value is Failover.
type Mode uint8

const (
	// Failover sends every new flow to the active backend of highest
	// Priority (ties: lowest ID).
	Failover Mode = iota
	// Balance spreads new flows over all active backends with a Maglev
	// table, the same on every server.
	Balance
)

// EndpointState says whether an endpoint takes new flows. The zero value is
// Active.
type EndpointState uint8

const (
	// Active endpoints take new flows.
	Active EndpointState = iota
	// Down endpoints take none; flows already pinned to them are moved to
	// another backend on their next packet.
	Down
)

// Port is one port an endpoint serves.
type Port struct {
	Number uint16
	Proto  Proto
}

// Server is a machine that runs endpoints, named by its locator ServerIP.
type Server struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// Endpoint is one container's attachment to one network. Its i-th served
// port is reachable on the wire at ServerPort WireBase+i; offsets from
// len(Ports) to the block end carry its outgoing flows.
type Endpoint struct {
	// ID names the endpoint in every map; 0 is invalid.
	ID uint32
	// Network is the id of the virtual network; endpoints of different
	// networks never reach each other.
	Network uint32
	// IP and MAC are what the container sees inside itself.
	IP  netip.Addr
	MAC net.HardwareAddr
	// Server is the ServerIP of the server the endpoint runs on.
	Server netip.Addr
	// WireBase is the first port of its wire block, unique on its server;
	// IdentityBase the first of its identity block, unique among the
	// endpoints sharing its (Network, IP). Both are multiples of
	// State.BlockSize and not 0.
	WireBase     uint16
	IdentityBase uint16
	// Ports are the ports it serves, at most MaxPorts.
	Ports []Port
	// Mode, Priority and State drive backend choice for the services it
	// takes part in. All endpoints of one service must agree on Mode.
	Mode     Mode
	Priority uint32
	State    EndpointState
	// Ifindex is its host-side veth when it runs on this server, else 0.
	Ifindex int
}

// Network is a virtual network as the dataplane sees it: the addresses
// that belong to it, and the destinations outside every network that its
// endpoints may open flows to (egress).
type Network struct {
	// ID is the id endpoints name in Endpoint.Network; 0 is invalid.
	ID uint32
	// Subnet is the network's address space. No flow to an address of
	// any network's subnet ever leaves through the uplink: an address
	// nobody serves there is dropped (DropNoService), whatever Egress
	// says, so a tenant never reaches into the physical network with
	// another tenant's addresses.
	Subnet netip.Prefix
	// Egress lists the IPv4 prefixes outside every network that the
	// network's endpoints may reach, source-translated to their server's
	// address. Nil or empty means none (DropEgressDenied); 0.0.0.0/0
	// means anywhere.
	Egress []netip.Prefix
}

// MaxEgressPrefixes is how many egress prefixes all networks of a State
// may list together, and MaxOutsidePrefixes how many subnets and server
// addresses it may name: the sizes of the egress and outside maps.
const (
	MaxEgressPrefixes  = 16384
	MaxOutsidePrefixes = 16384 - 4 // less neverEgress
)

// neverEgress (4 prefixes) are addresses no packet of a container may be sent to
// outside: "this network", loopback, multicast and class E (broadcast
// included). They go in the outside map as internal.
var neverEgress = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// Policy connects two networks, or isolates one. Without a Policy for a
// pair, endpoints reach the services of their own network and nothing else.
//
// A Policy with From != To shows the services of network To inside network
// From, at their own IP and port, and Allow says whether From's clients may
// open flows to them (a denied flow is dropped with DropPolicy; a network
// no Policy shows stays invisible, DropNoService). Replies need no Policy
// the other way. From's own services shadow those of To with the same IP,
// port and protocol. A Policy with From == To and Allow false isolates the
// endpoints of that network from each other.
//
// An allowing Policy with Only lists the services of To it shows in
// From, and no others: an export, through which From's clients reach
// those services (and from_network lets through no packet to any other
// port of To's endpoints). Only needs Allow.
//
// Policies are checked when a flow starts on the client's server and, for
// flows that cross servers, on every packet at the backend's server: removing
// an Allow stops such live flows there, while a flow between two containers
// of one server lasts until its conntrack entry expires.
type Policy struct {
	From, To uint32
	Allow    bool
	Only     []ServiceRef
}

// ServiceRef names a service of a network by IP, port and protocol.
type ServiceRef struct {
	IP   netip.Addr
	Port Port
}

// MaxExports is how many (From, To, service) triples the Only lists of
// all Policies may name together.
const MaxExports = 65536

// State is the desired content of one server's maps. Every server gets the
// same State except for the Ifindex of its own endpoints.
type State struct {
	// BlockSize is the size of every wire and identity block, a power of
	// two from 4 to 32768. Zero means DefaultBlockSize.
	BlockSize uint16
	// GatewayMAC answers containers' ARP. Nil means DefaultGatewayMAC.
	GatewayMAC net.HardwareAddr
	// Servers lists every server; each Endpoint.Server must be one of them.
	Servers   []Server
	Endpoints []Endpoint
	// WirePorts is the cluster's wire range and LocalIPs this server's
	// locator addresses (at most MaxLocalIPs): from_network drops every
	// packet to a local locator in the range that no local block holds,
	// rather than let the host answer it (a TCP reset would end a flow to
	// an endpoint that just moved away). Zero WirePorts turns that off.
	WirePorts PortRange
	LocalIPs  []netip.Addr
	// Networks lists the networks with their subnets and egress. A
	// network not listed has no egress, and its subnet is not known to
	// be internal.
	Networks []Network
	// Published lists the published ports: every server serves each on
	// all its LocalIPs, to clients outside the cluster. Nil serves none.
	Published []Published
	// GatewayBase is the first port of the gateway block, the same on
	// every locator of every server: the wire block, in WirePorts, that
	// ingress flows leave the dialled server from towards a backend on
	// another server. It must be a multiple of BlockSize that no
	// endpoint's wire block uses. Zero turns ingress off.
	GatewayBase uint16
	// Policies connect networks; nil means every network is isolated.
	// Two networks shown in one network by Allow or deny Policies must
	// not serve the same IP, port and protocol, and the identity blocks of
	// an allowed network's endpoints must be free in the network it
	// reaches: identity blocks must be unique per IP across networks that
	// talk to each other.
	Policies []Policy
}

// Published is a port of every server that leads to a service: a client
// outside the cluster that reaches HostPort (over Proto) on any server's
// locator reaches the service (Network, IP, Port), balanced or failed
// over like a flow from a container, and its backend sees the client's
// own address and port. HostPort must lie outside the wire range, and
// the server's own sockets should not use it: a packet to a published
// port never reaches the server's stack.
type Published struct {
	HostPort uint16
	Proto    Proto
	Network  uint32
	IP       netip.Addr
	Port     uint16
}

// MaxPublished is how many published ports a State may list.
const MaxPublished = 4096

// InvalidEndpointError is the ErrInvalidState Apply returns when one
// endpoint is at fault: a caller can leave it out and apply the rest.
type InvalidEndpointError struct {
	ID  uint32
	Msg string
}

func (e *InvalidEndpointError) Error() string { return e.Msg + ": " + ErrInvalidState.Error() }

// Unwrap returns ErrInvalidState.
func (e *InvalidEndpointError) Unwrap() error { return ErrInvalidState }

// PortRange is an inclusive range of ports.
type PortRange struct{ First, Last uint16 }

// MaxLocalIPs is the number of locator addresses one server may have.
const MaxLocalIPs = 8

// serviceID names a service: a (network, IP, port, protocol). ICMP echo to
// (network, IP) is the service with port 0: every endpoint of the IP serves
// it, in failover mode.
type serviceID struct {
	network uint32
	ip      netip.Addr
	port    uint16
	proto   uint8
}

const protoICMP = 1

// validate checks s and returns it with defaults filled in.
func (s State) validate() (State, error) {
	bad := func(format string, args ...any) (State, error) {
		return State{}, fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrInvalidState)
	}
	// badEP names the endpoint at fault, so a caller can leave it out and
	// program the rest.
	badEP := func(id uint32, format string, args ...any) (State, error) {
		return State{}, &InvalidEndpointError{ID: id, Msg: fmt.Sprintf(format, args...)}
	}
	if s.BlockSize == 0 {
		s.BlockSize = DefaultBlockSize
	}
	if s.BlockSize < 4 || s.BlockSize > 32768 || s.BlockSize&(s.BlockSize-1) != 0 {
		return bad("block size %d: want a power of two from 4 to 32768", s.BlockSize)
	}
	if s.GatewayMAC == nil {
		s.GatewayMAC = DefaultGatewayMAC
	}
	if len(s.GatewayMAC) != 6 {
		return bad("gateway MAC %s: want 6 bytes", s.GatewayMAC)
	}
	if s.WirePorts != (PortRange{}) && (s.WirePorts.First == 0 || s.WirePorts.First > s.WirePorts.Last) {
		return bad("wire ports %d-%d: want 1 <= first <= last", s.WirePorts.First, s.WirePorts.Last)
	}
	if len(s.LocalIPs) > MaxLocalIPs {
		return bad("%d local IPs: at most %d", len(s.LocalIPs), MaxLocalIPs)
	}
	for _, ip := range s.LocalIPs {
		if !ip.Is4() {
			return bad("local IP %s: want an IPv4 address", ip)
		}
	}
	if g := s.GatewayBase; g != 0 {
		switch {
		case g%s.BlockSize != 0:
			return bad("gateway base %d: want a multiple of the block size %d", g, s.BlockSize)
		case s.WirePorts == (PortRange{}) || g < s.WirePorts.First || uint32(g)+uint32(s.BlockSize)-1 > uint32(s.WirePorts.Last):
			return bad("gateway block %d-%d: want it inside the wire ports %d-%d", g, uint32(g)+uint32(s.BlockSize)-1, s.WirePorts.First, s.WirePorts.Last)
		}
	}
	nets := map[uint32]bool{}
	egress := 0
	for _, n := range s.Networks {
		switch {
		case n.ID == 0:
			return bad("network with subnet %s: ID 0 is reserved", n.Subnet)
		case nets[n.ID]:
			return bad("network %d: listed twice", n.ID)
		case !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() || n.Subnet.Masked() != n.Subnet:
			return bad("network %d: subnet %s: want an IPv4 prefix without host bits", n.ID, n.Subnet)
		}
		nets[n.ID] = true
		for _, p := range n.Egress {
			if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
				return bad("network %d: egress prefix %s: want an IPv4 prefix without host bits", n.ID, p)
			}
		}
		egress += len(n.Egress)
	}
	if egress > MaxEgressPrefixes {
		return bad("%d egress prefixes: the egress map holds %d", egress, MaxEgressPrefixes)
	}
	if n := len(s.Networks) + len(s.Servers); n > MaxOutsidePrefixes {
		return bad("%d network subnets and server addresses: the outside map holds %d", n, MaxOutsidePrefixes)
	}
	servers := map[netip.Addr]bool{}
	for _, sv := range s.Servers {
		if !sv.IP.Is4() {
			return bad("server %s: want an IPv4 address", sv.IP)
		}
		if servers[sv.IP] {
			return bad("server %s: listed twice", sv.IP)
		}
		servers[sv.IP] = true
	}
	type wireKey struct {
		server netip.Addr
		base   uint16
	}
	ids := map[uint32]bool{}
	ifindexes := map[int]uint32{}
	wire := map[wireKey]uint32{}
	ident := map[identKey]uint32{}
	served := map[ipKey][]uint16{}
	modes := map[serviceID]Mode{}
	bs := s.BlockSize
	for i, e := range s.Endpoints {
		switch {
		case e.ID == 0:
			return bad("endpoint #%d: ID 0 is reserved", i)
		case ids[e.ID]:
			return badEP(e.ID, "endpoint %d: ID used twice", e.ID)
		case !e.IP.Is4():
			return badEP(e.ID, "endpoint %d: IP %s: want IPv4", e.ID, e.IP)
		case len(e.MAC) != 6:
			return badEP(e.ID, "endpoint %d: MAC %q: want 6 bytes", e.ID, e.MAC)
		case !servers[e.Server]:
			return badEP(e.ID, "endpoint %d: server %s is not in State.Servers", e.ID, e.Server)
		case e.WireBase == 0 || e.WireBase%bs != 0:
			return badEP(e.ID, "endpoint %d: wire base %d: want a nonzero multiple of the block size %d", e.ID, e.WireBase, bs)
		case e.IdentityBase == 0 || e.IdentityBase%bs != 0:
			return badEP(e.ID, "endpoint %d: identity base %d: want a nonzero multiple of the block size %d", e.ID, e.IdentityBase, bs)
		case len(e.Ports) > MaxPorts || len(e.Ports) >= int(bs):
			return badEP(e.ID, "endpoint %d: %d ports: want at most %d and fewer than the block size", e.ID, len(e.Ports), MaxPorts)
		case e.Mode > Balance:
			return badEP(e.ID, "endpoint %d: mode %d: want Failover or Balance", e.ID, e.Mode)
		case e.State > Down:
			return badEP(e.ID, "endpoint %d: state %d: want Active or Down", e.ID, e.State)
		case e.Ifindex < 0:
			return badEP(e.ID, "endpoint %d: ifindex %d: want 0 or positive", e.ID, e.Ifindex)
		}
		ids[e.ID] = true
		if e.Ifindex != 0 {
			if other, ok := ifindexes[e.Ifindex]; ok {
				return badEP(e.ID, "endpoint %d: ifindex %d already used by endpoint %d", e.ID, e.Ifindex, other)
			}
			ifindexes[e.Ifindex] = e.ID
		}
		if s.GatewayBase != 0 && e.WireBase == s.GatewayBase {
			return badEP(e.ID, "endpoint %d: wire block %s:%d is the gateway block", e.ID, e.Server, e.WireBase)
		}
		wk := wireKey{e.Server, e.WireBase}
		if other, ok := wire[wk]; ok {
			return badEP(e.ID, "endpoint %d: wire block %s:%d already owned by endpoint %d", e.ID, e.Server, e.WireBase, other)
		}
		wire[wk] = e.ID
		ik := identKey{ipKey{e.Network, e.IP}, e.IdentityBase}
		if other, ok := ident[ik]; ok {
			return badEP(e.ID, "endpoint %d: identity block %d of %s already owned by endpoint %d", e.ID, e.IdentityBase, e.IP, other)
		}
		ident[ik] = e.ID
		for j, p := range e.Ports {
			if p.Number == 0 || (p.Proto != TCP && p.Proto != UDP) {
				return badEP(e.ID, "endpoint %d: port #%d %d/%s: want a nonzero TCP or UDP port", e.ID, j, p.Number, p.Proto)
			}
			if slices.Contains(e.Ports[:j], p) {
				return badEP(e.ID, "endpoint %d: port %d/%s listed twice", e.ID, p.Number, p.Proto)
			}
			served[ik.ipKey] = append(served[ik.ipKey], p.Number)
			sid := serviceID{e.Network, e.IP, p.Number, uint8(p.Proto)}
			if m, ok := modes[sid]; ok && m != e.Mode {
				return badEP(e.ID, "endpoint %d: mode of service %s:%d/%s disagrees with its other backends", e.ID, e.IP, p.Number, p.Proto)
			}
			modes[sid] = e.Mode
		}
	}
	if err := validatePublished(s, modes); err != nil {
		return State{}, err
	}
	if err := validatePolicies(s, ident); err != nil {
		return State{}, err
	}
	// A served port inside an identity block would make a new flow look
	// like a reply.
	for ik, id := range ident {
		for _, port := range served[ik.ipKey] {
			if port >= ik.base && uint32(port) < uint32(ik.base)+uint32(bs) {
				return badEP(id, "endpoint %d: identity block %d of %s in network %d holds served port %d", id, ik.base, ik.ip, ik.network, port)
			}
		}
	}
	return s, nil
}

// validatePublished rejects a published port listed twice, one inside the
// wire range, and one that leads to no service of s.
func validatePublished(s State, services map[serviceID]Mode) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrInvalidState)
	}
	if len(s.Published) > MaxPublished {
		return bad("%d published ports: at most %d", len(s.Published), MaxPublished)
	}
	seen := map[[2]uint16]bool{}
	for _, p := range s.Published {
		name := fmt.Sprintf("published port %d/%s", p.HostPort, p.Proto)
		k := [2]uint16{p.HostPort, uint16(p.Proto)}
		switch {
		case p.HostPort == 0 || (p.Proto != TCP && p.Proto != UDP):
			return bad("%s: want a nonzero TCP or UDP port", name)
		case seen[k]:
			return bad("%s: listed twice", name)
		case s.WirePorts != (PortRange{}) && p.HostPort >= s.WirePorts.First && p.HostPort <= s.WirePorts.Last:
			return bad("%s: inside the wire ports %d-%d", name, s.WirePorts.First, s.WirePorts.Last)
		}
		seen[k] = true
		if _, ok := services[serviceID{p.Network, p.IP, p.Port, uint8(p.Proto)}]; !ok {
			return bad("%s: leads to %s:%d/%s of network %d, which no endpoint serves", name, p.IP, p.Port, p.Proto, p.Network)
		}
	}
	return nil
}

type ipKey struct {
	network uint32
	ip      netip.Addr
}

type identKey struct {
	ipKey
	base uint16
}

// homeServices returns the services of s by network, ICMP echo included.
func homeServices(s State) map[uint32][]serviceID {
	seen := map[serviceID]bool{}
	out := map[uint32][]serviceID{}
	for _, e := range s.Endpoints {
		sids := []serviceID{{e.Network, e.IP, 0, protoICMP}}
		for _, p := range e.Ports {
			sids = append(sids, serviceID{e.Network, e.IP, p.Number, uint8(p.Proto)})
		}
		for _, sid := range sids {
			if !seen[sid] {
				seen[sid] = true
				out[sid.network] = append(out[sid.network], sid)
			}
		}
	}
	return out
}

// sortedPolicies returns s.Policies ordered by From, then To.
func sortedPolicies(s State) []Policy {
	ps := slices.Clone(s.Policies)
	slices.SortFunc(ps, func(a, b Policy) int {
		return cmp.Or(cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To))
	})
	return ps
}

// validatePolicies rejects policies listed twice, two networks that bring
// the same service into a third, and identity blocks an allowed network
// would bring into a network that already uses them. It adds the projected
// identity blocks to ident, so the caller checks them against served ports.
func validatePolicies(s State, ident map[identKey]uint32) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrInvalidState)
	}
	if len(s.Policies) == 0 {
		return nil
	}
	homes := homeServices(s)
	own := map[serviceID]bool{}
	for _, sids := range homes {
		for _, sid := range sids {
			own[sid] = true
		}
	}
	pairs := map[[2]uint32]bool{}
	shownBy := map[serviceID]uint32{}
	exports := 0
	for _, p := range sortedPolicies(s) {
		if pairs[[2]uint32{p.From, p.To}] {
			return bad("policy %d->%d: listed twice", p.From, p.To)
		}
		pairs[[2]uint32{p.From, p.To}] = true
		if len(p.Only) > 0 && (!p.Allow || p.From == p.To) {
			return bad("policy %d->%d: Only needs Allow, between two networks", p.From, p.To)
		}
		only := map[serviceID]bool{}
		for _, r := range p.Only {
			sid := serviceID{p.To, r.IP, r.Port.Number, uint8(r.Port.Proto)}
			if !r.IP.Is4() || r.Port.Number == 0 || (r.Port.Proto != TCP && r.Port.Proto != UDP) {
				return bad("policy %d->%d: service %s:%d/%s: want an IPv4 address, a port and tcp or udp", p.From, p.To, r.IP, r.Port.Number, r.Port.Proto)
			}
			if only[sid] {
				return bad("policy %d->%d: service %s:%d/%s listed twice", p.From, p.To, r.IP, r.Port.Number, r.Port.Proto)
			}
			only[sid] = true
		}
		if exports += len(p.Only); exports > MaxExports {
			return bad("policies list %d exported services, more than %d", exports, MaxExports)
		}
		if p.From == p.To {
			continue
		}
		for _, sid := range homes[p.To] {
			if len(only) > 0 && !only[sid] {
				continue
			}
			shown := sid
			shown.network = p.From
			if own[shown] {
				continue
			}
			if other, ok := shownBy[shown]; ok {
				return bad("policy %d->%d: network %d already sees %s:%d/%d of network %d", p.From, p.To, p.From, sid.ip, sid.port, sid.proto, other)
			}
			shownBy[shown] = p.To
		}
		if !p.Allow {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Network != p.From {
				continue
			}
			ik := identKey{ipKey{p.To, e.IP}, e.IdentityBase}
			if other, ok := ident[ik]; ok {
				return bad("policy %d->%d: identity block %d of %s (endpoint %d) is taken in network %d by endpoint %d", p.From, p.To, e.IdentityBase, e.IP, e.ID, p.To, other)
			}
			ident[ik] = e.ID
		}
	}
	return nil
}
