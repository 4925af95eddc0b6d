package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// A Claim is the registry's memory of an owner's address in a network:
// an owner (a pod's namespace/name, a service that replicas declare, a
// container that restarts under one ID) that created an endpoint once gets
// the same IP, and the same MAC while no other endpoint uses it, every time
// it creates one again, on any server, after any number of deletions. An
// address claimed by one owner is refused to every other endpoint.
//
// A claim lives until it is forgotten (Forget) or, when the network has no
// other free address, until an endpoint without an address needs one: the
// claim unused longest whose address no endpoint holds then gives it up.
type Claim struct {
	Network string     `json:"network"`
	Owner   string     `json:"owner"`
	IP      netip.Addr `json:"ip"`
	MAC     MAC        `json:"mac"`
	// Used is when an endpoint of the owner was last created.
	Used time.Time `json:"used"`
}

func claimPrefix(net uint32) string { return fmt.Sprintf("%sclaim/%d/", idxPrefix, net) }
func claimKey(net uint32, owner string) string {
	return claimPrefix(net) + owner
}
func claimIPPrefix(net uint32) string { return fmt.Sprintf("%sclaim-ip/%d/", idxPrefix, net) }
func claimIPKey(net uint32, ip netip.Addr) string {
	return claimIPPrefix(net) + ip.String()
}
func membersPrefix(net uint32) string { return fmt.Sprintf("%smembers/%d/", idxPrefix, net) }

// maxOwner is enough for "service:NAMESPACE/NAME" with Kubernetes'
// longest names (63 and 253 characters).
const maxOwner = 330

// validOwner accepts 1 to maxOwner printable ASCII characters without
// spaces.
func validOwner(s string) error {
	if s == "" {
		return invalid("owner", "missing")
	}
	if len(s) > maxOwner {
		return invalid("owner", "%.40q... is longer than %d characters", s, maxOwner)
	}
	for _, c := range s {
		if c <= ' ' || c > '~' {
			return invalid("owner", "%q: want printable ASCII without spaces", s)
		}
	}
	return nil
}

// claimAddress settles spec's IP (and MAC, when spec has none) for an
// endpoint about to be created in network n, inside the creating
// transaction: the owner's claimed address, or the requested one, or a
// free one. It records the claim. An endpoint without an owner may not use
// an address another owner claims.
func (r *Registry) claimAddress(t tx, n Network, spec *EndpointSpec) error {
	if spec.Owner == "" {
		if !spec.IP.IsValid() {
			return invalid("ip", "missing; an endpoint without an owner must name its address")
		}
		var holder string
		if t.get(claimIPKey(n.ID, spec.IP), &holder) {
			return fieldErr("ip", ErrConflict, "%s in network %s is claimed by %s; only its endpoints may use it (daoli network forget %s %s releases it)",
				spec.IP, n.Name, holder, n.Name, holder)
		}
		return nil
	}
	var c Claim
	had := t.get(claimKey(n.ID, spec.Owner), &c)
	switch {
	case spec.IP.IsValid():
		// The owner asks for an address: that one, if no other owner has it.
	case had:
		spec.IP = c.IP
	default:
		ip, err := r.freeAddress(t, n)
		if err != nil {
			return err
		}
		spec.IP = ip
	}
	if err := checkHostAddr("ip", spec.IP, n.Subnet); err != nil {
		return err
	}
	var holder string
	if t.get(claimIPKey(n.ID, spec.IP), &holder) && holder != spec.Owner {
		return fieldErr("ip", ErrConflict, "%s in network %s is claimed by %s; owner %s may not use it",
			spec.IP, n.Name, holder, spec.Owner)
	}
	var members []uint32
	t.get(membersKey(n.ID, spec.IP), &members)
	for _, m := range members {
		var other Endpoint
		if t.get(endpointKey(m), &other) && other.Owner != spec.Owner {
			by := "no owner"
			if other.Owner != "" {
				by = "owner " + other.Owner
			}
			return fieldErr("ip", ErrConflict, "%s in network %s is held by endpoint %d (%s) on %s; owner %s may not share it",
				spec.IP, n.Name, other.ID, by, other.Server, spec.Owner)
		}
	}
	if had && c.IP != spec.IP {
		t.Del(claimIPKey(n.ID, c.IP)) // the owner moves to the address it asked for
		c.MAC = MAC{}
	}
	if spec.MAC.IsZero() && !c.MAC.IsZero() && !t.get(macKey(n.ID, c.MAC), new(uint32)) {
		spec.MAC = c.MAC
	}
	c = Claim{Network: n.Name, Owner: spec.Owner, IP: spec.IP, MAC: c.MAC, Used: time.Now().UTC()}
	t.put(claimKey(n.ID, spec.Owner), c)
	t.put(claimIPKey(n.ID, spec.IP), spec.Owner)
	return nil
}

// rememberMAC records the MAC of an owner's first endpoint in its claim.
func rememberMAC(t tx, e Endpoint) {
	if e.Owner == "" {
		return
	}
	var c Claim
	if t.get(claimKey(e.NetworkID, e.Owner), &c) && c.MAC.IsZero() {
		c.MAC = e.MAC
		t.put(claimKey(e.NetworkID, e.Owner), c)
	}
}

// freeAddress picks the first host address of n that no endpoint holds and
// no owner claims; failing that, the address of the claim unused longest
// that no endpoint holds, which it forgets.
func (r *Registry) freeAddress(t tx, n Network) (netip.Addr, error) {
	taken := map[netip.Addr]bool{n.Gateway: true}
	held := map[netip.Addr]bool{}
	for _, kv := range t.List(membersPrefix(n.ID)) {
		if ip, err := netip.ParseAddr(strings.TrimPrefix(kv.Key, membersPrefix(n.ID))); err == nil {
			taken[ip], held[ip] = true, true
		}
	}
	claims := t.List(claimIPPrefix(n.ID))
	for _, kv := range claims {
		if ip, err := netip.ParseAddr(strings.TrimPrefix(kv.Key, claimIPPrefix(n.ID))); err == nil {
			taken[ip] = true
		}
	}
	last := lastAddr(n.Subnet)
	for ip := n.Subnet.Masked().Addr().Next(); ip.IsValid() && ip != last; ip = ip.Next() {
		if !taken[ip] {
			return ip, nil
		}
	}
	var oldest *Claim
	for _, kv := range t.List(claimPrefix(n.ID)) {
		var c Claim
		if err := json.Unmarshal(kv.Value, &c); err != nil {
			panic(fmt.Errorf("%w %s: %v", errCorrupt, kv.Key, err))
		}
		if !held[c.IP] && (oldest == nil || c.Used.Before(oldest.Used)) {
			oldest = &c
		}
	}
	if oldest == nil {
		return netip.Addr{}, fieldErr("ip", ErrNetworkFull, "network %s (%s) has no free address: every one is held by an endpoint", n.Name, n.Subnet)
	}
	t.Del(claimKey(n.ID, oldest.Owner))
	t.Del(claimIPKey(n.ID, oldest.IP))
	return oldest.IP, nil
}

// Claims returns the claims of a network, by owner.
func (r *Registry) Claims(ctx context.Context, network string) ([]Claim, error) {
	var n Network
	if err := r.getObject(ctx, networkKey(network), &n); err != nil {
		return nil, fmt.Errorf("claims of network %s: %w", network, err)
	}
	kvs, _, err := r.st.List(ctx, claimPrefix(n.ID))
	if err != nil {
		return nil, fmt.Errorf("claims of network %s: %w", network, err)
	}
	out := make([]Claim, 0, len(kvs))
	for _, kv := range kvs {
		var c Claim
		if err := json.Unmarshal(kv.Value, &c); err != nil {
			return nil, fmt.Errorf("%w %s: %v", errCorrupt, kv.Key, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// Forget removes an owner's claim: its address may go to anyone once no
// endpoint holds it. Endpoints of the owner keep running as they are.
func (r *Registry) Forget(ctx context.Context, network, owner string) (Claim, error) {
	var c Claim
	_, err := r.update(ctx, func(t tx) error {
		var n Network
		if !t.get(networkKey(network), &n) {
			return fieldErr("network", ErrNotFound, "network %q does not exist", network)
		}
		if !t.get(claimKey(n.ID, owner), &c) {
			return fieldErr("owner", ErrNotFound, "%q has no claim in network %s", owner, network)
		}
		t.Del(claimKey(n.ID, owner))
		t.Del(claimIPKey(n.ID, c.IP))
		return nil
	})
	if err != nil {
		return Claim{}, fmt.Errorf("forget %s in network %s: %w", owner, network, err)
	}
	return c, nil
}

// dropClaims removes every claim of a network that is being deleted.
func dropClaims(t tx, n Network) {
	for _, p := range []string{claimPrefix(n.ID), claimIPPrefix(n.ID)} {
		for _, kv := range t.List(p) {
			t.Del(kv.Key)
		}
	}
}
