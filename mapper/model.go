package mapper

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Network is a virtual network (a tenant). CIDRs of different networks may
// overlap; endpoints of one network do not see those of another.
type Network struct {
	Name string `json:"name"`
	// ID is small and never reused, so the dataplane can key maps by it.
	ID      uint32       `json:"id"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	// Egress says which addresses outside every network its endpoints
	// may open flows to. The zero value allows all of them, and is
	// left out of JSON.
	Egress Egress `json:"egress,omitzero"`
	// Connected names the networks this one is connected to, in order:
	// each reaches every service of the other.
	Connected []string `json:"connected,omitempty"`
	// Groups names the groups the network is in: networks of one group
	// reach every service of each other.
	Groups []string `json:"groups,omitempty"`
	// Exports are the network's services that other networks reach
	// without being connected to it.
	Exports []Export `json:"exports,omitempty"`
}

// Egress says which addresses outside every network (the Internet, a
// package mirror, a database outside the cluster) a network's endpoints
// may open flows to. Such flows leave from their server's address. The
// zero value allows all of them, as Docker does. Its text form is
// "allow", "deny", or a comma-separated list of CIDRs.
type Egress struct {
	// Deny, when true, allows none; To must then be empty.
	Deny bool `json:"deny,omitempty"`
	// To, when not empty, allows only these IPv4 prefixes.
	To []netip.Prefix `json:"to,omitempty"`
}

// IsZero reports whether e is the zero value: every address allowed.
func (e Egress) IsZero() bool { return !e.Deny && len(e.To) == 0 }

// MaxEgressPrefixes is how many prefixes one network's Egress may list.
const MaxEgressPrefixes = 256

func (e Egress) String() string {
	switch {
	case e.Deny:
		return "deny"
	case len(e.To) == 0:
		return "allow"
	}
	s := make([]string, len(e.To))
	for i, p := range e.To {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// ParseEgress parses "allow", "deny" or "CIDR,CIDR,...".
func ParseEgress(s string) (Egress, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "allow":
		return Egress{}, nil
	case "deny":
		return Egress{Deny: true}, nil
	}
	var e Egress
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		p, err := netip.ParsePrefix(f)
		if err != nil {
			hint := "want allow, deny, or CIDRs such as 203.0.113.0/24,198.51.100.0/24"
			if a, aerr := netip.ParseAddr(f); aerr == nil && a.Is4() {
				hint = "did you mean " + f + "/32?"
			}
			return Egress{}, fmt.Errorf("egress %q: %q is not a CIDR; %s", s, f, hint)
		}
		e.To = append(e.To, p)
	}
	return e, e.check()
}

// check reports what is wrong with e, naming the field.
func (e Egress) check() error {
	if e.Deny && len(e.To) > 0 {
		return invalid("egress", "deny together with prefixes to allow (to): want one or the other")
	}
	if len(e.To) > MaxEgressPrefixes {
		return invalid("egress.to", "%d prefixes: at most %d", len(e.To), MaxEgressPrefixes)
	}
	for i, p := range e.To {
		switch {
		case !p.IsValid() || !p.Addr().Is4():
			return invalid(fmt.Sprintf("egress.to[%d]", i), "%s is not an IPv4 CIDR", p)
		case p.Masked() != p:
			return invalid(fmt.Sprintf("egress.to[%d]", i), "%s has host bits set; did you mean %s?", p, p.Masked())
		case slices.Contains(e.To[:i], p):
			return invalid(fmt.Sprintf("egress.to[%d]", i), "%s is listed twice", p)
		}
	}
	return nil
}

// Prefixes returns the prefixes e allows: none for Deny, 0.0.0.0/0 for
// the zero value.
func (e Egress) Prefixes() []netip.Prefix {
	switch {
	case e.Deny:
		return nil
	case len(e.To) == 0:
		return []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0)}
	}
	return slices.Clone(e.To)
}

// Server is a machine that runs containers.
type Server struct {
	Name string `json:"name"`
	// IPs are the server's locator addresses (ServerIP), routable in the
	// physical network. Each one carries its own space of wire blocks.
	IPs []netip.Addr `json:"ips"`
	// MAC is the ServerMAC of the uplink.
	MAC    MAC    `json:"mac"`
	Uplink string `json:"uplink,omitempty"`
	// Gone is set when the server stopped renewing its liveness lease
	// (its agent or the whole machine died, or it lost the mappers):
	// every other server then treats its endpoints as down. Since is
	// when the server registered or last changed between alive and gone.
	Gone  bool      `json:"gone,omitempty"`
	Since time.Time `json:"since"`
}

// Protocol is a transport protocol a port is served on.
type Protocol string

// Protocols.
const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Mode says how a service spreads flows over its backends.
type Mode string

// Modes.
const (
	// Balance spreads new flows over all active backends by consistent
	// hashing.
	Balance Mode = "balance"
	// Failover sends all flows to the active backend of highest priority.
	Failover Mode = "failover"
)

// State is an endpoint's health as the dataplane sees it.
type State string

// States.
const (
	Active State = "active"
	Down   State = "down"
)

// PortSpec is one port an endpoint serves. Its text form is "80/tcp".
type PortSpec struct {
	Port     uint16   `json:"port"`
	Protocol Protocol `json:"protocol"`
}

func (p PortSpec) String() string { return strconv.Itoa(int(p.Port)) + "/" + string(p.Protocol) }

// ParsePortSpec parses "80/tcp", "53/udp" or "8080" (tcp).
func ParsePortSpec(s string) (PortSpec, error) {
	num, proto, found := strings.Cut(s, "/")
	if !found {
		proto = string(TCP)
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return PortSpec{}, fmt.Errorf("port %q: want a number from 1 to 65535, optionally followed by /tcp or /udp", s)
	}
	p := PortSpec{Port: uint16(n), Protocol: Protocol(strings.ToLower(proto))}
	if p.Protocol != TCP && p.Protocol != UDP {
		return PortSpec{}, fmt.Errorf("port %q: unknown protocol %q, want tcp or udp", s, proto)
	}
	return p, nil
}

// Block is a run of Size ports starting at Base. A wire block also names
// the locator address (Addr) it is a slice of.
type Block struct {
	Addr netip.Addr `json:"addr,omitzero"`
	Base uint16     `json:"base"`
	Size uint16     `json:"size"`
}

// Contains reports whether port lies in the block.
func (b Block) Contains(port uint16) bool {
	return port >= b.Base && uint32(port) < uint32(b.Base)+uint32(b.Size)
}

func (b Block) String() string {
	r := fmt.Sprintf("%d-%d", b.Base, uint32(b.Base)+uint32(b.Size)-1)
	if b.Addr.IsValid() {
		return b.Addr.String() + ":" + r
	}
	return r
}

// Endpoint is one container's attachment to one network.
type Endpoint struct {
	// ID is assigned by the registry, never reused, and stable for the
	// endpoint's life, moves included.
	ID   uint32 `json:"id"`
	Name string `json:"name,omitempty"`
	// Owner, when set, is who the endpoint's address belongs to (see
	// Claim): endpoints of one owner share its IP; no other may use it.
	Owner string `json:"owner,omitempty"`
	// Network, IP and MAC are the identity the container sees.
	Network   string     `json:"network"`
	NetworkID uint32     `json:"network_id"`
	IP        netip.Addr `json:"ip"`
	MAC       MAC        `json:"mac"`
	// Server is where the endpoint runs; Interface its host-side veth.
	Server    string `json:"server"`
	Interface string `json:"interface,omitempty"`
	// Ports are the ports it serves; Mode and Priority apply to each.
	Ports    []PortSpec `json:"ports"`
	Mode     Mode       `json:"mode"`
	Priority uint16     `json:"priority"`
	State    State      `json:"state"`
	// Wire is a slice of the server's port space: its first len(Ports)
	// ports are the ServerPorts, the rest carry outgoing flows. It changes
	// when the endpoint moves.
	Wire Block `json:"wire_block"`
	// Identity is the block peers see as this endpoint's client ports. It
	// is unique among endpoints sharing (network, IP) and never changes.
	Identity Block `json:"identity_block"`
	// Published are ports of every server that lead to ports it serves
	// (docker run -p 8080:80): a client outside the cluster that dials
	// any server's address at HostPort reaches the service. One host
	// port leads to one service cluster-wide; its endpoints may all
	// publish it.
	Published []PublishedPort `json:"published,omitempty"`
}

// PublishedPort is one published port: HostPort of every server leads to
// Port, one of the ports the endpoint serves, over Protocol. Its text
// form is "8080->80/tcp".
type PublishedPort struct {
	HostPort uint16   `json:"host_port"`
	Port     uint16   `json:"port"`
	Protocol Protocol `json:"protocol"`
}

func (p PublishedPort) String() string {
	return strconv.Itoa(int(p.HostPort)) + "->" + strconv.Itoa(int(p.Port)) + "/" + string(p.Protocol)
}

// ParsePublishedPort parses "8080:80", "8080:80/udp" (Docker's -p) or
// "8080->80/tcp" (the text form); a lone "8080" publishes port 8080 on
// 8080. The protocol defaults to tcp.
func ParsePublishedPort(s string) (PublishedPort, error) {
	host, port, found := strings.Cut(s, "->")
	if !found {
		host, port, found = strings.Cut(s, ":")
	}
	spec, err := ParsePortSpec(port)
	if !found {
		host, _, _ = strings.Cut(s, "/")
		spec, err = ParsePortSpec(s)
	}
	if err != nil {
		return PublishedPort{}, fmt.Errorf("published port %q: %w", s, err)
	}
	h, err := strconv.ParseUint(host, 10, 16)
	if err != nil || h == 0 {
		return PublishedPort{}, fmt.Errorf("published port %q: host port %q: want HOSTPORT:PORT[/tcp|/udp] with ports from 1 to 65535", s, host)
	}
	return PublishedPort{HostPort: uint16(h), Port: spec.Port, Protocol: spec.Protocol}, nil
}

// Ref is how the CLI names an endpoint: its name, else its ID.
func (e *Endpoint) Ref() string {
	if e.Name != "" {
		return e.Name
	}
	return strconv.FormatUint(uint64(e.ID), 10)
}

// SixTuple is the mapping of one served port from identity to location:
// (ServerMAC, ServerIP, ServerPort; MAC, IP, Port). It is globally unique
// even when many endpoints share (IP, Port).
type SixTuple struct {
	ServerMAC  MAC        `json:"server_mac"`
	ServerIP   netip.Addr `json:"server_ip"`
	ServerPort uint16     `json:"server_port"`
	MAC        MAC        `json:"mac"`
	IP         netip.Addr `json:"ip"`
	Port       uint16     `json:"port"`
	Protocol   Protocol   `json:"protocol"`
}

func (t SixTuple) String() string {
	return fmt.Sprintf("(%s, %s, %d; %s, %s, %d)/%s",
		t.ServerMAC, t.ServerIP, t.ServerPort, t.MAC, t.IP, t.Port, t.Protocol)
}

// SixTuples returns the endpoint's 6-tuples, given its server.
func (e *Endpoint) SixTuples(srv *Server) []SixTuple {
	out := make([]SixTuple, len(e.Ports))
	for i, p := range e.Ports {
		out[i] = SixTuple{
			ServerIP: e.Wire.Addr, ServerPort: e.Wire.Base + uint16(i),
			MAC: e.MAC, IP: e.IP, Port: p.Port, Protocol: p.Protocol,
		}
		if srv != nil {
			out[i].ServerMAC = srv.MAC
		}
	}
	return out
}

// ServiceKey names a service: (network, IP, Port, protocol).
type ServiceKey struct {
	Network  string     `json:"network"`
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port"`
	Protocol Protocol   `json:"protocol"`
}

func (k ServiceKey) String() string {
	return fmt.Sprintf("%s/%s", k.Network, netip.AddrPortFrom(k.IP, k.Port)) + "/" + string(k.Protocol)
}

// Service is the set of endpoints of one network that serve the same
// (IP, Port, protocol). It is derived from endpoints, never stored.
type Service struct {
	ServiceKey
	Mode Mode `json:"mode"`
	// Published are the host ports that lead to the service on every
	// server (published by any of its backends), in order.
	Published []uint16  `json:"published,omitempty"`
	Backends  []Backend `json:"backends"`
}

// Backend is one endpoint serving a service.
type Backend struct {
	Endpoint uint32   `json:"endpoint"`
	Name     string   `json:"name,omitempty"`
	Server   string   `json:"server"`
	Priority uint16   `json:"priority"`
	State    State    `json:"state"`
	Tuple    SixTuple `json:"six_tuple"`
}

// Services derives the services from endpoints. Backends are ordered by
// preference: active first, then by priority (highest first), then by ID.
// Services are sorted by network, IP, port and protocol.
func Services(servers []Server, endpoints []Endpoint) []Service {
	byName := make(map[string]*Server, len(servers))
	for i := range servers {
		byName[servers[i].Name] = &servers[i]
	}
	idx := map[ServiceKey]int{}
	var out []Service
	for i := range endpoints {
		e := &endpoints[i]
		tuples := e.SixTuples(byName[e.Server])
		for j, p := range e.Ports {
			k := ServiceKey{Network: e.Network, IP: e.IP, Port: p.Port, Protocol: p.Protocol}
			n, ok := idx[k]
			if !ok {
				n = len(out)
				idx[k] = n
				out = append(out, Service{ServiceKey: k, Mode: e.Mode})
			}
			out[n].Backends = append(out[n].Backends, Backend{
				Endpoint: e.ID, Name: e.Name, Server: e.Server,
				Priority: e.Priority, State: e.State, Tuple: tuples[j],
			})
			for _, pp := range e.Published {
				if pp.Port == p.Port && pp.Protocol == p.Protocol && !slices.Contains(out[n].Published, pp.HostPort) {
					out[n].Published = append(out[n].Published, pp.HostPort)
				}
			}
		}
	}
	for i := range out {
		slices.Sort(out[i].Published)
		slices.SortFunc(out[i].Backends, func(a, b Backend) int {
			if a.State != b.State {
				if a.State == Active {
					return -1
				}
				if b.State == Active {
					return 1
				}
			}
			if a.Priority != b.Priority {
				return cmp.Compare(b.Priority, a.Priority)
			}
			return cmp.Compare(a.Endpoint, b.Endpoint)
		})
	}
	slices.SortFunc(out, func(a, b Service) int { return compareServiceKeys(a.ServiceKey, b.ServiceKey) })
	return out
}

// compareServiceKeys orders services by network, IP, port and protocol.
func compareServiceKeys(a, b ServiceKey) int {
	return cmp.Or(
		cmp.Compare(a.Network, b.Network),
		a.IP.Compare(b.IP),
		cmp.Compare(a.Port, b.Port),
		cmp.Compare(a.Protocol, b.Protocol),
	)
}

// Snapshot is the registry's whole state at one revision.
type Snapshot struct {
	Revision  int64      `json:"revision"`
	Networks  []Network  `json:"networks"`
	Servers   []Server   `json:"servers"`
	Endpoints []Endpoint `json:"endpoints"`
}
