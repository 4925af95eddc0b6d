package mapper_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/daolinet/daoli/mapper"
)

func owned(owner, server string) mapper.EndpointSpec {
	return mapper.EndpointSpec{Owner: owner, Network: "net1", Server: server,
		Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}}}
}

// TestClaimGivesTheAddressBack: an owner gets a free address the first
// time and the same IP and MAC every time after, on any server; nobody
// else may use it until it is forgotten.
func TestClaimGivesTheAddressBack(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	first := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, owned("pod:default/db-0", "s1")))
	if first.IP != ip("10.1.0.2") || first.Owner != "pod:default/db-0" {
		t.Fatalf("first endpoint of an owner: %s owned by %q, want the first free address 10.1.0.2 (10.1.0.1 is the gateway)", first.IP, first.Owner)
	}
	other := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, owned("pod:default/db-1", "s1")))
	if other.IP != ip("10.1.0.3") {
		t.Errorf("a second owner got %s, want 10.1.0.3", other.IP)
	}
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, fmt.Sprint(first.ID)))
	// Released, the address stays the owner's: an endpoint without an
	// owner, or another owner, may not take it.
	_, err := reg.CreateEndpoint(ctx, mapper.EndpointSpec{Network: "net1", IP: ip("10.1.0.2"), Server: "s2"})
	wantErr(t, err, mapper.ErrConflict, "ip", "claimed by pod:default/db-0")
	spec := owned("pod:default/intruder", "s2")
	spec.IP = ip("10.1.0.2")
	_, err = reg.CreateEndpoint(ctx, spec)
	wantErr(t, err, mapper.ErrConflict, "ip", "claimed by pod:default/db-0")
	// Rescheduled on another server: the same IP and MAC.
	again := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, owned("pod:default/db-0", "s2")))
	if again.IP != first.IP || again.MAC != first.MAC || again.ID == first.ID {
		t.Errorf("the owner's endpoint again: %s %s (id %d), want %s %s under a new id", again.IP, again.MAC, again.ID, first.IP, first.MAC)
	}
	claims := must[[]mapper.Claim](t)(reg.Claims(ctx, "net1"))
	if len(claims) != 2 || claims[0].Owner != "pod:default/db-0" || claims[0].IP != first.IP || claims[0].MAC != first.MAC || claims[0].Used.IsZero() {
		t.Errorf("claims: %+v, want db-0 at %s %s and db-1", claims, first.IP, first.MAC)
	}
	// Forgotten, the address goes to the next owner once it is free.
	must[mapper.Claim](t)(reg.Forget(ctx, "net1", "pod:default/db-0"))
	_, err = reg.Forget(ctx, "net1", "pod:default/db-0")
	wantErr(t, err, mapper.ErrNotFound, "owner", "has no claim")
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, fmt.Sprint(again.ID)))
	next := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, owned("pod:default/web-7", "s1")))
	if next.IP != first.IP {
		t.Errorf("after forgetting: a new owner got %s, want the freed %s", next.IP, first.IP)
	}
}

// TestOwnerSharesItsAddress: endpoints of one owner (the replicas of a
// service) share its IP with MACs of their own; an endpoint of another
// owner, or of none, may not join them.
func TestOwnerSharesItsAddress(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	a := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, owned("service:web", "s1")))
	b := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, owned("service:web", "s2")))
	if a.IP != b.IP || a.MAC == b.MAC {
		t.Errorf("replicas: %s %s and %s %s, want one IP and two MACs", a.IP, a.MAC, b.IP, b.MAC)
	}
	if a.Identity == b.Identity {
		t.Errorf("replicas share identity block %s", a.Identity)
	}
	// An owner-less endpoint holding an address keeps owners off it.
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, mapper.EndpointSpec{Network: "net1", IP: ip("10.1.0.9"), Server: "s1"}))
	spec := owned("service:api", "s1")
	spec.IP = ip("10.1.0.9")
	_, err := reg.CreateEndpoint(ctx, spec)
	wantErr(t, err, mapper.ErrConflict, "ip", "held by endpoint")
	// An owner that asks for another address moves its claim there.
	spec = owned("service:web", "s1")
	spec.IP = ip("10.1.0.20")
	c := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, spec))
	claims := must[[]mapper.Claim](t)(reg.Claims(ctx, "net1"))
	if len(claims) != 1 || claims[0].IP != c.IP {
		t.Errorf("claims after asking for %s: %+v", c.IP, claims)
	}
}

// TestClaimsWhenTheNetworkIsFull: with every address claimed, an owner
// without a claim takes the address of the claim unused longest that no
// endpoint holds; with every address held, it gets a clear error.
func TestClaimsWhenTheNetworkIsFull(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "small", Subnet: prefix("10.9.0.0/29")}))
	var eps []mapper.Endpoint
	for i := range 5 { // .2 to .6: .1 is the gateway, .7 the broadcast address
		spec := owned(fmt.Sprintf("pod:ns/p%d", i), "s1")
		spec.Network = "small"
		eps = append(eps, must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, spec)))
	}
	spec := owned("pod:ns/late", "s1")
	spec.Network = "small"
	_, err := reg.CreateEndpoint(ctx, spec)
	wantErr(t, err, mapper.ErrNetworkFull, "ip", "network small (10.9.0.0/29) has no free address")
	// p1 and p3 stop; p1 stopped first, but p3 was used longer ago.
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, fmt.Sprint(eps[1].ID)))
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, fmt.Sprint(eps[3].ID)))
	p1 := owned("pod:ns/p1", "s2")
	p1.Network = "small"
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, fmt.Sprint(must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, p1)).ID)))
	late := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, spec))
	if late.IP != eps[3].IP {
		t.Errorf("the late owner got %s, want p3's %s (unused longest)", late.IP, eps[3].IP)
	}
	p3 := owned("pod:ns/p3", "s1")
	p3.Network = "small"
	back := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, p3))
	if back.IP != eps[1].IP {
		t.Errorf("p3, whose claim was taken, got %s; want the only free address %s", back.IP, eps[1].IP)
	}
	// Deleting the network deletes its claims.
	for _, e := range must[mapper.Snapshot](t)(reg.Snapshot(ctx)).Endpoints {
		if e.Network == "small" {
			must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, fmt.Sprint(e.ID)))
		}
	}
	if err := reg.DeleteNetwork(ctx, "small"); err != nil {
		t.Fatal(err)
	}
	must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "small", Subnet: prefix("10.9.0.0/29")}))
	if cs := must[[]mapper.Claim](t)(reg.Claims(ctx, "small")); len(cs) != 0 {
		t.Errorf("a new network of the old name has claims %+v", cs)
	}
}

// TestClaimsInOneBatch: two owners without addresses in one batch get two
// addresses.
func TestClaimsInOneBatch(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	eps := must[[]mapper.Endpoint](t)(reg.CreateEndpoints(ctx, []mapper.EndpointSpec{owned("pod:a/x", "s1"), owned("pod:a/y", "s2")}))
	if eps[0].IP == eps[1].IP {
		t.Errorf("two owners in one batch share %s", eps[0].IP)
	}
}

func TestOwnerValidation(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	for _, tc := range []struct{ owner, fragment string }{
		{"pod:a b", "printable ASCII without spaces"},
		{"pod:\x00", "printable ASCII without spaces"},
		{"pod:" + strings.Repeat("a", 327), "longer than 330"},
	} {
		_, err := reg.CreateEndpoint(ctx, owned(tc.owner, "s1"))
		wantErr(t, err, mapper.ErrInvalid, "owner", tc.fragment)
	}
	_, err := reg.CreateEndpoint(ctx, mapper.EndpointSpec{Network: "net1", Server: "s1"})
	wantErr(t, err, mapper.ErrInvalid, "ip", "missing")
}
