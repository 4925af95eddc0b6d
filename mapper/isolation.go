package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Networks are isolated: endpoints reach the services of their own
// network and nothing else. An operator opens them to each other in three
// ways (docs/security.md#tenants):
//
//   - connecting two networks: each reaches every service of the other;
//   - putting networks in one group: each reaches every service of the
//     others in the group;
//   - exporting one service of a network to another: clients of the other
//     reach that IP, port and protocol, and nothing else of the network.
//
// Networks that reach each other, or that one network reaches, must have
// disjoint subnets: a client sees them all at their own addresses, and a
// backend answers clients of all of them.

// Export is a service of a network that other networks reach without
// being connected to it.
type Export struct {
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port"`
	Protocol Protocol   `json:"protocol"`
	// To names the networks whose clients may reach it, in order.
	To []string `json:"to"`
}

func (e Export) service() string {
	return netip.AddrPortFrom(e.IP, e.Port).String() + "/" + string(e.Protocol)
}

// ExportSpec names a service of a network and a network to export it to
// (POST and DELETE /v1/networks/{name}/exports). In a DELETE an empty To
// means every network.
type ExportSpec struct {
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port"`
	Protocol Protocol   `json:"protocol,omitempty"`
	To       string     `json:"to,omitempty"`
}

// ParseExportSpec parses a service as IP:PORT[/PROTOCOL] (default tcp).
func ParseExportSpec(service, to string) (ExportSpec, error) {
	addr, proto, _ := strings.Cut(service, "/")
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return ExportSpec{}, invalid("service", "%q: want IP:PORT[/tcp|/udp], such as 10.1.0.5:8080/tcp", service)
	}
	s := ExportSpec{IP: ap.Addr(), Port: ap.Port(), Protocol: Protocol(proto), To: to}
	if s.Protocol == "" {
		s.Protocol = TCP
	}
	return s, nil
}

// Limits of the isolation model, so that one network's record stays
// small and the dataplane's maps hold every server's view.
const (
	MaxConnected    = 64  // networks one network is connected to
	MaxGroups       = 16  // groups one network is in
	MaxExports      = 256 // services one network exports
	MaxExportTo     = 64  // networks one service is exported to
	maxGroupMembers = 256 // networks in one group
)

// ConnectNetworks connects networks a and b: the endpoints of each reach
// every service of the other. It returns a.
func (r *Registry) ConnectNetworks(ctx context.Context, a, b string) (Network, error) {
	return r.changeReach(ctx, a, "connect network "+a+" to "+b, func(nets map[string]*Network) error {
		na, nb, err := pair(nets, a, b)
		if err != nil {
			return err
		}
		if slices.Contains(na.Connected, b) {
			return nil
		}
		for _, n := range []*Network{na, nb} {
			if len(n.Connected) >= MaxConnected {
				return invalid("network", "network %s is connected to %d networks, the most one may be", n.Name, MaxConnected)
			}
		}
		na.Connected = insertSorted(na.Connected, b)
		nb.Connected = insertSorted(nb.Connected, a)
		return nil
	})
}

// DisconnectNetworks undoes ConnectNetworks. Live flows between the two
// end at the backend's server (docs/security.md#tenants). It returns a.
func (r *Registry) DisconnectNetworks(ctx context.Context, a, b string) (Network, error) {
	return r.changeReach(ctx, a, "disconnect network "+a+" from "+b, func(nets map[string]*Network) error {
		na, nb, err := pair(nets, a, b)
		if err != nil {
			return err
		}
		if !slices.Contains(na.Connected, b) {
			return fieldErr("network", ErrNotFound, "network %s is not connected to %s", a, b)
		}
		na.Connected = slices.DeleteFunc(na.Connected, func(s string) bool { return s == b })
		nb.Connected = slices.DeleteFunc(nb.Connected, func(s string) bool { return s == a })
		return nil
	})
}

// ExportService lets the clients of network spec.To reach one service of
// network, and nothing else of it. It returns network.
func (r *Registry) ExportService(ctx context.Context, network string, spec ExportSpec) (Network, error) {
	if spec.Protocol == "" {
		spec.Protocol = TCP
	}
	return r.changeReach(ctx, network, "export a service of network "+network, func(nets map[string]*Network) error {
		n, to, err := pair(nets, network, spec.To)
		if err != nil {
			return err
		}
		if err := checkExport(n, spec); err != nil {
			return err
		}
		i, found := findExport(n.Exports, spec)
		if !found {
			if len(n.Exports) >= MaxExports {
				return invalid("service", "network %s exports %d services, the most one may", n.Name, MaxExports)
			}
			n.Exports = slices.Insert(n.Exports, i, Export{IP: spec.IP, Port: spec.Port, Protocol: spec.Protocol})
		}
		e := &n.Exports[i]
		if slices.Contains(e.To, to.Name) {
			return nil
		}
		if len(e.To) >= MaxExportTo {
			return invalid("to", "%s of network %s is exported to %d networks, the most one service may be", e.service(), n.Name, MaxExportTo)
		}
		e.To = insertSorted(e.To, to.Name)
		return nil
	})
}

// UnexportService undoes ExportService: for spec.To, or, when it is
// empty, for every network. It returns network.
func (r *Registry) UnexportService(ctx context.Context, network string, spec ExportSpec) (Network, error) {
	if spec.Protocol == "" {
		spec.Protocol = TCP
	}
	return r.changeReach(ctx, network, "unexport a service of network "+network, func(nets map[string]*Network) error {
		n, ok := nets[network]
		if !ok {
			return fieldErr("network", ErrNotFound, "network %s does not exist", network)
		}
		i, found := findExport(n.Exports, spec)
		svc := Export{IP: spec.IP, Port: spec.Port, Protocol: spec.Protocol}.service()
		if !found {
			return fieldErr("service", ErrNotFound, "network %s does not export %s", network, svc)
		}
		e := &n.Exports[i]
		if spec.To != "" {
			if !slices.Contains(e.To, spec.To) {
				return fieldErr("to", ErrNotFound, "network %s does not export %s to %s", network, svc, spec.To)
			}
			e.To = slices.DeleteFunc(e.To, func(s string) bool { return s == spec.To })
		}
		if spec.To == "" || len(e.To) == 0 {
			n.Exports = slices.Delete(n.Exports, i, i+1)
		}
		return nil
	})
}

// changeReach runs change on every network, by name, in one transaction,
// checks the result and writes the networks it changed. It returns the
// network named ret.
func (r *Registry) changeReach(ctx context.Context, ret, what string, change func(map[string]*Network) error) (Network, error) {
	var out Network
	_, err := r.update(ctx, func(t tx) error {
		nets := allNetworks(t)
		before := map[string]string{}
		for name, n := range nets {
			before[name] = encodeNetwork(n)
		}
		if err := change(nets); err != nil {
			return err
		}
		if err := checkReach(nets); err != nil {
			return err
		}
		for name, n := range nets {
			if encodeNetwork(n) != before[name] {
				t.put(networkKey(name), *n)
			}
		}
		out = *nets[ret]
		return nil
	})
	if err != nil {
		return Network{}, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// findExport returns where spec's service is, or would go, in exports,
// which are sorted by IP, port and protocol.
func findExport(exports []Export, spec ExportSpec) (int, bool) {
	key := func(ip netip.Addr, port uint16, proto Protocol) ServiceKey {
		return ServiceKey{IP: ip, Port: port, Protocol: proto}
	}
	return slices.BinarySearchFunc(exports, key(spec.IP, spec.Port, spec.Protocol), func(e Export, k ServiceKey) int {
		return compareServiceKeys(key(e.IP, e.Port, e.Protocol), k)
	})
}

// checkReachWith checks the reach of every network with n as it is to be
// written.
func checkReachWith(t tx, n *Network) error {
	nets := allNetworks(t)
	nets[n.Name] = n
	return checkReach(nets)
}

func encodeNetwork(n *Network) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func allNetworks(t tx) map[string]*Network {
	nets := map[string]*Network{}
	for _, kv := range t.List(networkPrefix) {
		var n Network
		if t.get(kv.Key, &n) {
			nets[n.Name] = &n
		}
	}
	return nets
}

// pair returns the networks a and b, which must exist and differ.
func pair(nets map[string]*Network, a, b string) (*Network, *Network, error) {
	na, ok := nets[a]
	if !ok {
		return nil, nil, fieldErr("network", ErrNotFound, "network %s does not exist", a)
	}
	if b == "" {
		return nil, nil, invalid("to", "missing; want the network to open it to")
	}
	nb, ok := nets[b]
	if !ok {
		return nil, nil, fieldErr("to", ErrNotFound, "network %s does not exist", b)
	}
	if a == b {
		return nil, nil, invalid("to", "network %s reaches its own services already", a)
	}
	return na, nb, nil
}

func checkExport(n *Network, spec ExportSpec) error {
	switch {
	case !spec.IP.Is4():
		return invalid("ip", "%v: want the IPv4 address of a service of network %s", spec.IP, n.Name)
	case !n.Subnet.Contains(spec.IP):
		return invalid("ip", "%s is outside network %s's subnet %s", spec.IP, n.Name, n.Subnet)
	case spec.Port == 0:
		return invalid("port", "missing; want the service's port, 1 to 65535")
	case spec.Protocol != TCP && spec.Protocol != UDP:
		return invalid("protocol", "%q: want tcp or udp", spec.Protocol)
	}
	return nil
}

// checkGroups checks a network's groups.
func checkGroups(groups []string) error {
	if len(groups) > MaxGroups {
		return invalid("groups", "%d groups; a network may be in at most %d", len(groups), MaxGroups)
	}
	for i, g := range groups {
		if err := validName("groups["+strconv.Itoa(i)+"]", g); err != nil {
			return err
		}
		if slices.Contains(groups[:i], g) {
			return invalid("groups["+strconv.Itoa(i)+"]", "group %q listed twice", g)
		}
	}
	return nil
}

// Reach is which networks' services each network's clients may reach,
// beyond its own, as connections, groups and exports say.
type Reach struct {
	// Full lists, per network, the networks it reaches every service of.
	Full map[string][]string
	// Only lists, per network, the networks it reaches some services of,
	// and those services.
	Only map[string]map[string][]Export
}

// ReachOf derives the reach of every network from the networks.
func ReachOf(networks []Network) Reach {
	r := Reach{Full: map[string][]string{}, Only: map[string]map[string][]Export{}}
	members := map[string][]string{}
	names := map[string]bool{}
	for _, n := range networks {
		names[n.Name] = true
		for _, g := range n.Groups {
			members[g] = append(members[g], n.Name)
		}
	}
	for _, n := range networks {
		full := map[string]bool{}
		for _, c := range n.Connected {
			if names[c] && c != n.Name {
				full[c] = true
			}
		}
		for _, g := range n.Groups {
			for _, m := range members[g] {
				if m != n.Name {
					full[m] = true
				}
			}
		}
		for m := range full {
			r.Full[n.Name] = append(r.Full[n.Name], m)
		}
		slices.Sort(r.Full[n.Name])
	}
	for _, n := range networks {
		for _, e := range n.Exports {
			for _, to := range e.To {
				if !names[to] || to == n.Name || slices.Contains(r.Full[to], n.Name) {
					continue
				}
				if r.Only[to] == nil {
					r.Only[to] = map[string][]Export{}
				}
				r.Only[to][n.Name] = append(r.Only[to][n.Name], Export{IP: e.IP, Port: e.Port, Protocol: e.Protocol})
			}
		}
	}
	return r
}

// checkReach says whether the networks may reach each other as they say:
// every network and the networks it reaches have disjoint subnets, and no
// group is larger than maxGroupMembers.
func checkReach(nets map[string]*Network) error {
	list := make([]Network, 0, len(nets))
	groups := map[string]int{}
	for _, n := range nets {
		list = append(list, *n)
		for _, g := range n.Groups {
			if groups[g]++; groups[g] > maxGroupMembers {
				return invalid("groups", "group %s would have more than %d networks", g, maxGroupMembers)
			}
		}
	}
	slices.SortFunc(list, func(a, b Network) int { return strings.Compare(a.Name, b.Name) })
	reach := ReachOf(list)
	for _, n := range list {
		seen := []string{n.Name}
		seen = append(seen, reach.Full[n.Name]...)
		for m := range reach.Only[n.Name] {
			seen = append(seen, m)
		}
		slices.Sort(seen[1:])
		for i, a := range seen {
			for _, b := range seen[i+1:] {
				pa, pb := nets[a].Subnet, nets[b].Subnet
				if pa.Overlaps(pb) {
					if a == n.Name || b == n.Name {
						other := b
						if b == n.Name {
							other = a
						}
						return fieldErr("network", ErrConflict, "network %s (%s) would reach network %s (%s): their subnets overlap, and networks that reach each other need disjoint subnets",
							n.Name, nets[n.Name].Subnet, other, nets[other].Subnet)
					}
					return fieldErr("network", ErrConflict, "network %s would reach both %s (%s) and %s (%s): their subnets overlap, and the networks one network reaches need disjoint subnets",
						n.Name, a, pa, b, pb)
				}
			}
		}
	}
	return nil
}

func insertSorted(s []string, v string) []string {
	i, found := slices.BinarySearch(s, v)
	if found {
		return s
	}
	return slices.Insert(s, i, v)
}

// forgetNetwork removes every reference to the network name from the
// other networks: their connections and exports.
func forgetNetwork(t tx, name string) {
	for other, n := range allNetworks(t) {
		if other == name {
			continue
		}
		changed := false
		if slices.Contains(n.Connected, name) {
			n.Connected = slices.DeleteFunc(n.Connected, func(s string) bool { return s == name })
			changed = true
		}
		for i := range n.Exports {
			if slices.Contains(n.Exports[i].To, name) {
				n.Exports[i].To = slices.DeleteFunc(n.Exports[i].To, func(s string) bool { return s == name })
				changed = true
			}
		}
		if changed {
			n.Exports = slices.DeleteFunc(n.Exports, func(e Export) bool { return len(e.To) == 0 })
			t.put(networkKey(other), *n)
		}
	}
}
