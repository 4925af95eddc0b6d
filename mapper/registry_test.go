package mapper_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
	"github.com/google/go-cmp/cmp"
)

var ctx = context.Background()

func newRegistry(t testing.TB, cfg mapper.Config) (*mapper.Registry, *store.Bolt) {
	t.Helper()
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(t.TempDir(), "registry.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg.Store = st
	reg, err := mapper.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reg, st
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

var (
	ip     = netip.MustParseAddr
	prefix = netip.MustParsePrefix
)

// diff compares with netip values treated as the comparable values they are.
func diff(want, got any) string {
	return cmp.Diff(want, got,
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }))
}

func mac(s string) mapper.MAC {
	m, err := mapper.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// world creates network net1 (10.1.0.0/24), net2 (10.1.0.0/24 too: CIDRs
// may overlap) and servers s1, s2.
func world(t testing.TB, reg *mapper.Registry) {
	t.Helper()
	must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "net1", Subnet: prefix("10.1.0.0/24")}))
	must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "net2", Subnet: prefix("10.1.0.0/24")}))
	must[mapper.Server](t)(reg.RegisterServer(ctx, mapper.ServerSpec{Name: "s1", IPs: []netip.Addr{ip("192.0.2.1")}, MAC: mac("52:54:00:00:00:01")}))
	must[mapper.Server](t)(reg.RegisterServer(ctx, mapper.ServerSpec{Name: "s2", IPs: []netip.Addr{ip("192.0.2.2")}, MAC: mac("52:54:00:00:00:02")}))
}

func web(name, server string) mapper.EndpointSpec {
	return mapper.EndpointSpec{Name: name, Network: "net1", IP: ip("10.1.0.5"), Server: server,
		Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}}}
}

// wantErr checks err against a sentinel, a field and a fragment of the
// message.
func wantErr(t *testing.T, err, sentinel error, field, fragment string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %v on %q", sentinel, field)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("error %q is not %v", err, sentinel)
	}
	var fe *mapper.FieldError
	if field != "" && (!errors.As(err, &fe) || fe.Field != field) {
		t.Errorf("error %q does not name field %q", err, field)
	}
	if !strings.Contains(err.Error(), fragment) {
		t.Errorf("error %q does not say %q", err, fragment)
	}
}

func TestCreateNetworkValidation(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	tests := []struct {
		name     string
		spec     mapper.NetworkSpec
		sentinel error
		field    string
		fragment string
	}{
		{"no name", mapper.NetworkSpec{Subnet: prefix("10.0.0.0/24")}, mapper.ErrInvalid, "name", "missing"},
		{"bad name", mapper.NetworkSpec{Name: "a b", Subnet: prefix("10.0.0.0/24")}, mapper.ErrInvalid, "name", "letters"},
		{"no subnet", mapper.NetworkSpec{Name: "n"}, mapper.ErrInvalid, "subnet", "missing"},
		{"host bits", mapper.NetworkSpec{Name: "n", Subnet: prefix("10.0.0.5/24")}, mapper.ErrInvalid, "subnet", "did you mean 10.0.0.0/24"},
		{"ipv6", mapper.NetworkSpec{Name: "n", Subnet: prefix("fd00::/64")}, mapper.ErrInvalid, "subnet", "not IPv4"},
		{"too small", mapper.NetworkSpec{Name: "n", Subnet: prefix("10.0.0.0/31")}, mapper.ErrInvalid, "subnet", "too small"},
		{"gateway outside", mapper.NetworkSpec{Name: "n", Subnet: prefix("10.0.0.0/24"), Gateway: ip("10.0.1.1")}, mapper.ErrInvalid, "gateway", "outside"},
		{"gateway broadcast", mapper.NetworkSpec{Name: "n", Subnet: prefix("10.0.0.0/24"), Gateway: ip("10.0.0.255")}, mapper.ErrInvalid, "gateway", "broadcast"},
		{"taken", mapper.NetworkSpec{Name: "net1", Subnet: prefix("10.9.0.0/24")}, mapper.ErrExists, "name", "already exists"},
		{"egress deny and prefixes", mapper.NetworkSpec{Name: "n", Subnet: prefix("10.0.0.0/24"),
			Egress: mapper.Egress{Deny: true, To: []netip.Prefix{prefix("203.0.113.0/24")}}}, mapper.ErrInvalid, "egress", "one or the other"},
		{"egress host bits", mapper.NetworkSpec{Name: "n", Subnet: prefix("10.0.0.0/24"),
			Egress: mapper.Egress{To: []netip.Prefix{prefix("203.0.113.0/24"), prefix("198.51.100.7/24")}}}, mapper.ErrInvalid, "egress.to[1]", "did you mean 198.51.100.0/24"},
		{"egress ipv6", mapper.NetworkSpec{Name: "n", Subnet: prefix("10.0.0.0/24"),
			Egress: mapper.Egress{To: []netip.Prefix{prefix("2001:db8::/32")}}}, mapper.ErrInvalid, "egress.to[0]", "not an IPv4"},
		{"egress twice", mapper.NetworkSpec{Name: "n", Subnet: prefix("10.0.0.0/24"),
			Egress: mapper.Egress{To: []netip.Prefix{prefix("203.0.113.0/24"), prefix("203.0.113.0/24")}}}, mapper.ErrInvalid, "egress.to[1]", "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := reg.CreateNetwork(ctx, tt.spec)
			wantErr(t, err, tt.sentinel, tt.field, tt.fragment)
		})
	}
	n := must[mapper.Network](t)(reg.Network(ctx, "net1"))
	if n.Gateway != ip("10.1.0.1") || n.ID != 1 {
		t.Errorf("net1: gateway %s id %d, want the first address 10.1.0.1 and id 1", n.Gateway, n.ID)
	}
}

// TestEgress: a network reaches every outside address unless created or
// updated otherwise; an update is one change watchers see, and a bad one
// changes nothing.
func TestEgress(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	n := must[mapper.Network](t)(reg.Network(ctx, "net1"))
	if n.Egress.Deny || len(n.Egress.To) != 0 || n.Egress.String() != "allow" {
		t.Errorf("default egress %+v (%s), want the zero value: allow", n.Egress, n.Egress)
	}
	limited := mapper.Egress{To: []netip.Prefix{prefix("203.0.113.0/24")}}
	n = must[mapper.Network](t)(reg.UpdateNetwork(ctx, "net1", mapper.NetworkUpdate{Egress: &limited}))
	if n.Egress.String() != "203.0.113.0/24" || n.Subnet != prefix("10.1.0.0/24") {
		t.Errorf("after the update: %+v", n)
	}
	bad := mapper.Egress{Deny: true, To: limited.To}
	_, err := reg.UpdateNetwork(ctx, "net1", mapper.NetworkUpdate{Egress: &bad})
	wantErr(t, err, mapper.ErrInvalid, "egress", "one or the other")
	_, err = reg.UpdateNetwork(ctx, "nonet", mapper.NetworkUpdate{Egress: &limited})
	wantErr(t, err, mapper.ErrNotFound, "", "nonet")
	if got := must[mapper.Network](t)(reg.Network(ctx, "net1")); got.Egress.String() != "203.0.113.0/24" {
		t.Errorf("a refused update changed the network: egress %s", got.Egress)
	}
	for _, tc := range []struct {
		in, want string
	}{
		{"allow", "allow"}, {"DENY", "deny"}, {"203.0.113.0/24, 198.51.100.0/24", "203.0.113.0/24,198.51.100.0/24"},
	} {
		e, err := mapper.ParseEgress(tc.in)
		if err != nil || e.String() != tc.want {
			t.Errorf("ParseEgress(%q) = %s, %v; want %s", tc.in, e, err, tc.want)
		}
	}
	for _, in := range []string{"", "everywhere", "203.0.113.0/24,", "203.0.113.9/24"} {
		if _, err := mapper.ParseEgress(in); err == nil {
			t.Errorf("ParseEgress(%q) succeeded", in)
		}
	}
	if got := (mapper.Egress{}).Prefixes(); len(got) != 1 || got[0] != prefix("0.0.0.0/0") {
		t.Errorf("allow: prefixes %v, want 0.0.0.0/0", got)
	}
	if got := (mapper.Egress{Deny: true}).Prefixes(); len(got) != 0 {
		t.Errorf("deny: prefixes %v, want none", got)
	}
}

func TestRegisterServerValidation(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	good := mac("52:54:00:00:00:09")
	tests := []struct {
		name     string
		spec     mapper.ServerSpec
		sentinel error
		field    string
		fragment string
	}{
		{"no ips", mapper.ServerSpec{Name: "s", MAC: good}, mapper.ErrInvalid, "ips", "at least one"},
		{"ipv6", mapper.ServerSpec{Name: "s", IPs: []netip.Addr{ip("fd00::1")}, MAC: good}, mapper.ErrInvalid, "ips[0]", "not IPv4"},
		{"loopback", mapper.ServerSpec{Name: "s", IPs: []netip.Addr{ip("127.0.0.1")}, MAC: good}, mapper.ErrInvalid, "ips[0]", "cannot be"},
		{"twice", mapper.ServerSpec{Name: "s", IPs: []netip.Addr{ip("192.0.2.9"), ip("192.0.2.9")}, MAC: good}, mapper.ErrInvalid, "ips[1]", "twice"},
		{"no mac", mapper.ServerSpec{Name: "s", IPs: []netip.Addr{ip("192.0.2.9")}}, mapper.ErrInvalid, "mac", "unicast"},
		{"multicast mac", mapper.ServerSpec{Name: "s", IPs: []netip.Addr{ip("192.0.2.9")}, MAC: mac("01:00:5e:00:00:01")}, mapper.ErrInvalid, "mac", "unicast"},
		{"ip of another server", mapper.ServerSpec{Name: "s", IPs: []netip.Addr{ip("192.0.2.1")}, MAC: good}, mapper.ErrConflict, "ips[0]", "server s1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := reg.RegisterServer(ctx, tt.spec)
			wantErr(t, err, tt.sentinel, tt.field, tt.fragment)
		})
	}
}

func TestCreateEndpointValidation(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, mapper.EndpointSpec{Name: "taken", Network: "net1", IP: ip("10.1.0.9"), Server: "s1", MAC: mac("02:00:00:00:00:09")}))
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web", "s1")))
	with := func(f func(*mapper.EndpointSpec)) mapper.EndpointSpec {
		s := mapper.EndpointSpec{Network: "net1", IP: ip("10.1.0.20"), Server: "s1", Ports: []mapper.PortSpec{{Port: 8080, Protocol: mapper.TCP}}}
		f(&s)
		return s
	}
	tests := []struct {
		name     string
		spec     mapper.EndpointSpec
		sentinel error
		field    string
		fragment string
	}{
		{"outside subnet", with(func(s *mapper.EndpointSpec) { s.IP = ip("10.2.0.5") }), mapper.ErrInvalid, "ip", "outside the subnet 10.1.0.0/24"},
		{"network address", with(func(s *mapper.EndpointSpec) { s.IP = ip("10.1.0.0") }), mapper.ErrInvalid, "ip", "network address"},
		{"broadcast", with(func(s *mapper.EndpointSpec) { s.IP = ip("10.1.0.255") }), mapper.ErrInvalid, "ip", "broadcast"},
		{"gateway", with(func(s *mapper.EndpointSpec) { s.IP = ip("10.1.0.1") }), mapper.ErrInvalid, "ip", "gateway"},
		{"no ip", with(func(s *mapper.EndpointSpec) { s.IP = netip.Addr{} }), mapper.ErrInvalid, "ip", "missing"},
		{"port zero", with(func(s *mapper.EndpointSpec) { s.Ports[0].Port = 0 }), mapper.ErrInvalid, "ports[0].port", "1 to 65535"},
		{"protocol", with(func(s *mapper.EndpointSpec) { s.Ports[0].Protocol = "sctp" }), mapper.ErrInvalid, "ports[0].protocol", `"sctp"`},
		{"port twice", with(func(s *mapper.EndpointSpec) { s.Ports = append(s.Ports, s.Ports[0]) }), mapper.ErrInvalid, "ports[1]", "twice"},
		{"unknown network", with(func(s *mapper.EndpointSpec) { s.Network = "nope" }), mapper.ErrNotFound, "network", `"nope" does not exist`},
		{"unknown server", with(func(s *mapper.EndpointSpec) { s.Server = "nope" }), mapper.ErrNotFound, "server", `"nope" does not exist`},
		{"mac twice", with(func(s *mapper.EndpointSpec) { s.MAC = mac("02:00:00:00:00:09") }), mapper.ErrConflict, "mac", "already used"},
		{"group mac", with(func(s *mapper.EndpointSpec) { s.MAC = mac("03:00:00:00:00:09") }), mapper.ErrInvalid, "mac", "group"},
		{"mode", with(func(s *mapper.EndpointSpec) { s.Mode = "random" }), mapper.ErrInvalid, "mode", `"random"`},
		{"state", with(func(s *mapper.EndpointSpec) { s.State = "zombie" }), mapper.ErrInvalid, "state", `"zombie"`},
		{"name taken", with(func(s *mapper.EndpointSpec) { s.Name = "taken" }), mapper.ErrExists, "name", "already exists"},
		{"numeric name", with(func(s *mapper.EndpointSpec) { s.Name = "42" }), mapper.ErrInvalid, "name", "endpoint ID"},
		{"mode disagrees", mapper.EndpointSpec{Network: "net1", IP: ip("10.1.0.5"), Server: "s2", Mode: mapper.Failover,
			Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}}}, mapper.ErrConflict, "ports[0]", "is balance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := reg.CreateEndpoint(ctx, tt.spec)
			wantErr(t, err, tt.sentinel, tt.field, tt.fragment)
		})
	}
	// The same MAC is fine in another network, and so is the same IP.
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, mapper.EndpointSpec{Network: "net2", IP: ip("10.1.0.9"), Server: "s1", MAC: mac("02:00:00:00:00:09")}))
	// Another protocol on the same port is another service, free to differ.
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, mapper.EndpointSpec{Network: "net1", IP: ip("10.1.0.5"), Server: "s2", Mode: mapper.Failover,
		Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.UDP}}}))
}

func TestSharedIPAllocation(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	var eps []mapper.Endpoint
	for i, srv := range []string{"s1", "s2", "s1"} {
		eps = append(eps, must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web(fmt.Sprintf("web%d", i), srv))))
	}
	// Wire blocks are unique per server and aligned; identity blocks unique
	// per (network, IP).
	want := []struct{ wire, identity mapper.Block }{
		{mapper.Block{Addr: ip("192.0.2.1"), Base: 16384, Size: 256}, mapper.Block{Base: 32768, Size: 256}},
		{mapper.Block{Addr: ip("192.0.2.2"), Base: 16384, Size: 256}, mapper.Block{Base: 33024, Size: 256}},
		{mapper.Block{Addr: ip("192.0.2.1"), Base: 16640, Size: 256}, mapper.Block{Base: 33280, Size: 256}},
	}
	for i, e := range eps {
		if e.Wire != want[i].wire || e.Identity != want[i].identity {
			t.Errorf("endpoint %d: wire %v identity %v, want %v and %v", i, e.Wire, e.Identity, want[i].wire, want[i].identity)
		}
		if e.MAC.IsZero() || !e.MAC.IsUnicast() || e.MAC[0]&2 == 0 {
			t.Errorf("endpoint %d: generated MAC %s is not locally administered unicast", i, e.MAC)
		}
	}
	// 6-tuples: same (MAC-less) identity, distinct location.
	srv := must[mapper.Server](t)(reg.Server(ctx, "s2"))
	got := eps[1].SixTuples(&srv)
	wantTuple := []mapper.SixTuple{{ServerMAC: mac("52:54:00:00:00:02"), ServerIP: ip("192.0.2.2"), ServerPort: 16384,
		MAC: eps[1].MAC, IP: ip("10.1.0.5"), Port: 80, Protocol: mapper.TCP}}
	if d := diff(wantTuple, got); d != "" {
		t.Errorf("6-tuples (-want +got):\n%s", d)
	}
	// One service with three backends.
	snap := must[mapper.Snapshot](t)(reg.Snapshot(ctx))
	svcs := mapper.Services(snap.Servers, snap.Endpoints)
	if len(svcs) != 1 || len(svcs[0].Backends) != 3 || svcs[0].Mode != mapper.Balance {
		t.Fatalf("services: %+v, want one balance service with three backends", svcs)
	}
	// Freed blocks are reused.
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, "web0"))
	again := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web3", "s1")))
	if again.Wire != want[0].wire || again.Identity != want[0].identity {
		t.Errorf("after removing web0: wire %v identity %v, want its blocks %v %v back", again.Wire, again.Identity, want[0].wire, want[0].identity)
	}
}

func TestPortSpaceFull(t *testing.T) {
	// Two wire blocks per address (and the gateway block), three identity
	// blocks per IP.
	reg, _ := newRegistry(t, mapper.Config{BlockSize: 16,
		WirePorts: mapper.PortRange{First: 20000, Last: 20047}, IdentityPorts: mapper.PortRange{First: 40000, Last: 40047}})
	world(t, reg)
	for i := 0; i < 2; i++ {
		must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("", "s1")))
	}
	_, err := reg.CreateEndpoint(ctx, web("", "s1"))
	wantErr(t, err, mapper.ErrPortSpaceFull, "server", "server s1 has no free wire block of 16 ports in 20000-20031")
	// A second locator address doubles the server's room.
	must[mapper.Server](t)(reg.RegisterServer(ctx, mapper.ServerSpec{Name: "s1", IPs: []netip.Addr{ip("192.0.2.1"), ip("192.0.2.11")}, MAC: mac("52:54:00:00:00:01")}))
	e := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("", "s1")))
	if e.Wire.Addr != ip("192.0.2.11") {
		t.Errorf("third endpoint on s1 got wire block %v, want one on the new address", e.Wire)
	}
	_, err = reg.CreateEndpoint(ctx, web("", "s2"))
	wantErr(t, err, mapper.ErrPortSpaceFull, "ip", "3 endpoints already share 10.1.0.5")
	// Removing an address that carries blocks is refused.
	_, err = reg.RegisterServer(ctx, mapper.ServerSpec{Name: "s1", IPs: []netip.Addr{ip("192.0.2.11")}, MAC: mac("52:54:00:00:00:01")})
	wantErr(t, err, mapper.ErrInUse, "ips", "192.0.2.1 still carries")
}

func TestBlockSizeIsFixed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	st := must[*store.Bolt](t)(store.OpenBolt(store.BoltConfig{Path: path}))
	defer st.Close()
	first := must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st, BlockSize: 64}))
	world(t, first)
	a := must[mapper.Endpoint](t)(first.CreateEndpoint(ctx, web("a", "s1")))
	_, err := mapper.New(mapper.Config{Store: st, BlockSize: 256})
	if err == nil || !strings.Contains(err.Error(), "block size 256 differs from 64") {
		t.Errorf("a registry reopened with another block size: %v, want a refusal naming both sizes", err)
	}
	// Zero adopts the registry's size.
	again := must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st}))
	b := must[mapper.Endpoint](t)(again.CreateEndpoint(ctx, web("b", "s1")))
	if a.Wire.Size != 64 || b.Wire.Size != 64 || b.Wire.Base != a.Wire.Base+64 {
		t.Errorf("wire blocks %v then %v, want two adjacent 64-port blocks", a.Wire, b.Wire)
	}
}

func TestMoveKeepsIdentity(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("other", "s2")))
	before := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web", "s1")))
	after := must[mapper.Endpoint](t)(reg.MoveEndpoint(ctx, "web", "s2", "veth-new"))
	moved := before
	moved.Server, moved.Interface = "s2", "veth-new"
	moved.Wire = mapper.Block{Addr: ip("192.0.2.2"), Base: 16640, Size: 256}
	if d := diff(moved, after); d != "" {
		t.Errorf("moved endpoint (-want +got):\n%s", d)
	}
	// The old wire block is free again on s1.
	n := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("", "s1")))
	if n.Wire != before.Wire {
		t.Errorf("new endpoint on s1 got %v, want the freed %v", n.Wire, before.Wire)
	}
	if _, err := reg.MoveEndpoint(ctx, "web", "nope", ""); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("move to an unknown server: %v, want ErrNotFound", err)
	}
	if _, err := reg.MoveEndpoint(ctx, "nope", "s1", ""); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("move of an unknown endpoint: %v, want ErrNotFound", err)
	}
	same := must[mapper.Endpoint](t)(reg.MoveEndpoint(ctx, "web", "s2", "veth-new"))
	if d := diff(after, same); d != "" {
		t.Errorf("moving to its own server and interface changed it (-want +got):\n%s", d)
	}
}

func TestRemovalRules(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	e := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web", "s1")))
	wantErr(t, reg.DeleteNetwork(ctx, "net1"), mapper.ErrInUse, "", "still attached")
	wantErr(t, reg.DeleteServer(ctx, "s1"), mapper.ErrInUse, "", "1 endpoints still run there")
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, fmt.Sprint(e.ID)))
	if _, err := reg.Endpoint(ctx, "web"); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("removed endpoint is still found by name: %v", err)
	}
	if err := reg.DeleteNetwork(ctx, "net1"); err != nil {
		t.Error(err)
	}
	if err := reg.DeleteServer(ctx, "s1"); err != nil {
		t.Error(err)
	}
	// The name, the MAC and the server's address are free again.
	must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "net1", Subnet: prefix("10.1.0.0/24")}))
	must[mapper.Server](t)(reg.RegisterServer(ctx, mapper.ServerSpec{Name: "s9", IPs: []netip.Addr{ip("192.0.2.1")}, MAC: mac("52:54:00:00:00:01")}))
	spec := web("web", "s9")
	spec.MAC = e.MAC
	n := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, spec))
	if n.ID == e.ID {
		t.Errorf("endpoint ID %d was reused", n.ID)
	}
}

func TestBatchIsAllOrNothing(t *testing.T) {
	reg, st := newRegistry(t, mapper.Config{})
	world(t, reg)
	rev0, _, _ := st.Revision(ctx)
	bad := web("c", "s1")
	bad.IP = ip("10.1.0.1") // the gateway
	_, err := reg.CreateEndpoints(ctx, []mapper.EndpointSpec{web("a", "s1"), web("b", "s2"), bad})
	wantErr(t, err, mapper.ErrInvalid, "endpoints[2].ip", "gateway")
	snap := must[mapper.Snapshot](t)(reg.Snapshot(ctx))
	if len(snap.Endpoints) != 0 || snap.Revision != rev0 {
		t.Errorf("a failed batch left %d endpoints and moved the revision %d→%d", len(snap.Endpoints), rev0, snap.Revision)
	}
	eps := must[[]mapper.Endpoint](t)(reg.CreateEndpoints(ctx, []mapper.EndpointSpec{web("a", "s1"), web("b", "s1")}))
	if eps[0].Wire.Base == eps[1].Wire.Base {
		t.Errorf("one batch gave two endpoints the same wire block %v", eps[0].Wire)
	}
}

func TestStateAndFailoverOrder(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	for _, b := range []struct {
		name, server string
		prio         uint16
	}{{"backup", "s2", 10}, {"master", "s1", 100}} {
		s := web(b.name, b.server)
		s.Mode, s.Priority = mapper.Failover, b.prio
		must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, s))
	}
	order := func() []string {
		snap := must[mapper.Snapshot](t)(reg.Snapshot(ctx))
		var names []string
		for _, b := range mapper.Services(snap.Servers, snap.Endpoints)[0].Backends {
			names = append(names, b.Name+"/"+string(b.State))
		}
		return names
	}
	if d := diff([]string{"master/active", "backup/active"}, order()); d != "" {
		t.Errorf("failover order (-want +got):\n%s", d)
	}
	// An agent that lost a veth of an endpoint that moved away changes nothing.
	_, err := reg.SetEndpointState(ctx, "master", mapper.StateRequest{State: mapper.Down, IfServer: "s2"})
	wantErr(t, err, mapper.ErrConflict, "if_server", "runs on s1, not s2")
	_, err = reg.SetEndpointState(ctx, "master", mapper.StateRequest{State: mapper.Down, IfServer: "s1", IfInterface: "old"})
	wantErr(t, err, mapper.ErrConflict, "if_interface", `not "old"`)
	if d := diff([]string{"master/active", "backup/active"}, order()); d != "" {
		t.Errorf("failed guards changed the order (-want +got):\n%s", d)
	}
	must[mapper.Endpoint](t)(reg.SetEndpointState(ctx, "master", mapper.StateRequest{State: mapper.Down, IfServer: "s1"}))
	if d := diff([]string{"backup/active", "master/down"}, order()); d != "" {
		t.Errorf("failover order with the master down (-want +got):\n%s", d)
	}
	_, err = reg.SetEndpointState(ctx, "master", mapper.StateRequest{State: "gone"})
	wantErr(t, err, mapper.ErrInvalid, "state", `"gone"`)
}

// TestConcurrentAllocation has many clients register and remove endpoints
// at once: no two live endpoints may ever hold overlapping blocks, and no
// registration may be lost.
func TestConcurrentAllocation(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{BlockSize: 16})
	world(t, reg)
	const clients, each = 16, 30
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				spec := web(fmt.Sprintf("c%d-%d", c, i), []string{"s1", "s2"}[i%2])
				e, err := reg.CreateEndpoint(ctx, spec)
				if err != nil {
					t.Error(err)
					return
				}
				if i%3 == 0 { // churn: free blocks while others allocate
					if _, err := reg.DeleteEndpoint(ctx, e.Name); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	snap := must[mapper.Snapshot](t)(reg.Snapshot(ctx))
	if want := clients * (each - each/3); len(snap.Endpoints) != want {
		t.Errorf("%d endpoints registered, want %d", len(snap.Endpoints), want)
	}
	type span struct {
		space string
		b     mapper.Block
		id    uint32
	}
	var spans []span
	for _, e := range snap.Endpoints {
		spans = append(spans, span{"wire " + e.Wire.Addr.String(), e.Wire, e.ID}, span{"identity", e.Identity, e.ID})
	}
	for i, a := range spans {
		for _, b := range spans[i+1:] {
			if a.space == b.space && a.b.Base < b.b.Base+b.b.Size && b.b.Base < a.b.Base+a.b.Size {
				t.Errorf("%s blocks overlap: endpoint %d %v and endpoint %d %v", a.space, a.id, a.b, b.id, b.b)
			}
		}
	}
}

func TestWatchFollowsChanges(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	snap := must[mapper.Snapshot](t)(reg.Snapshot(ctx))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := reg.Watch(cctx, snap.Revision+1)
	e := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web", "s1")))
	must[mapper.Endpoint](t)(reg.MoveEndpoint(ctx, "web", "s2", ""))
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, "web"))
	var got []string
	for len(got) < 3 {
		r := <-w
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		for _, c := range r.Changes {
			got = append(got, fmt.Sprintf("%d %s %s %d@%s", c.Revision-snap.Revision, c.Type, c.Kind, c.Endpoint.ID, c.Endpoint.Server))
		}
	}
	want := []string{
		fmt.Sprintf("1 put endpoint %d@s1", e.ID),
		fmt.Sprintf("2 put endpoint %d@s2", e.ID),
		fmt.Sprintf("3 delete endpoint %d@s2", e.ID),
	}
	if d := diff(want, got); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
}

func TestConfigValidation(t *testing.T) {
	st := must[*store.Bolt](t)(store.OpenBolt(store.BoltConfig{Path: filepath.Join(t.TempDir(), "db")}))
	defer st.Close()
	for _, tt := range []struct {
		cfg      mapper.Config
		fragment string
	}{
		{mapper.Config{}, "no store"},
		{mapper.Config{Store: st, BlockSize: 100}, "power of two"},
		{mapper.Config{Store: st, BlockSize: 4}, "power of two"},
		{mapper.Config{Store: st, WirePorts: mapper.PortRange{First: 100, Last: 200}}, "holds no aligned block"},
		{mapper.Config{Store: st, WirePorts: mapper.PortRange{First: 32768, Last: 40000}}, "overlap"},
	} {
		if _, err := mapper.New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.fragment) {
			t.Errorf("New(%+v): %v, want an error saying %q", tt.cfg, err, tt.fragment)
		}
	}
}

// TestPublished: the ports an endpoint publishes on every server are
// checked, lead to one service cluster-wide (its replicas may share
// them), stay through a move and are freed on removal.
func TestPublished(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	spec := web("web1", "s1")
	spec.Ports = append(spec.Ports, mapper.PortSpec{Port: 53, Protocol: mapper.UDP})
	e1 := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, spec))
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web2", "s1")))
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web3", "s2")))
	pub := func(host, port uint16, proto mapper.Protocol) mapper.PublishedPort {
		return mapper.PublishedPort{HostPort: host, Port: port, Protocol: proto}
	}

	got := must[mapper.Endpoint](t)(reg.SetPublished(ctx, "web1", []mapper.PublishedPort{pub(8080, 80, mapper.TCP), pub(5353, 53, mapper.UDP)}))
	if d := diff([]mapper.PublishedPort{pub(8080, 80, mapper.TCP), pub(5353, 53, mapper.UDP)}, got.Published); d != "" {
		t.Errorf("published (-want +got):\n%s", d)
	}
	if s := fmt.Sprint(got.Published); s != "[8080->80/tcp 5353->53/udp]" {
		t.Errorf("text form %s", s)
	}
	if e := must[mapper.Endpoint](t)(reg.Endpoint(ctx, "web1")); len(e.Published) != 2 || e.Wire != e1.Wire {
		t.Errorf("stored endpoint %+v: want 2 published ports and the same wire block", e)
	}

	// Another service, on another IP.
	dbSpec := web("db", "s2")
	dbSpec.IP = ip("10.1.0.6")
	dbSpec.Ports = append(dbSpec.Ports, mapper.PortSpec{Port: 80, Protocol: mapper.UDP})
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, dbSpec))

	tests := []struct {
		name     string
		ref      string
		ps       []mapper.PublishedPort
		sentinel error
		field    string
		fragment string
	}{
		{"host port 0", "web2", []mapper.PublishedPort{pub(0, 80, mapper.TCP)}, mapper.ErrInvalid, "published[0].host_port", "from 1 to 65535"},
		{"port 0", "web2", []mapper.PublishedPort{pub(8081, 0, mapper.TCP)}, mapper.ErrInvalid, "published[0].port", "from 1 to 65535"},
		{"protocol", "web2", []mapper.PublishedPort{pub(8081, 80, "sctp")}, mapper.ErrInvalid, "published[0].protocol", "sctp"},
		{"not served", "web2", []mapper.PublishedPort{pub(8081, 81, mapper.TCP)}, mapper.ErrInvalid, "published[0].port", "does not serve 81/tcp"},
		{"wire range", "web2", []mapper.PublishedPort{pub(16400, 80, mapper.TCP)}, mapper.ErrInvalid, "published[0].host_port", "wire range"},
		{"gateway block", "web2", []mapper.PublishedPort{pub(32600, 80, mapper.TCP)}, mapper.ErrInvalid, "published[0].host_port", "wire range"},
		{"twice", "web2", []mapper.PublishedPort{pub(8081, 80, mapper.TCP), pub(8081, 80, mapper.TCP)}, mapper.ErrInvalid, "published[1].host_port", "also published[0]"},
		{"another service", "db", []mapper.PublishedPort{pub(8080, 80, mapper.TCP)}, mapper.ErrConflict, "published[0].host_port", "already leads to net1/10.1.0.5:80 (published by endpoint web1)"},
		{"another port", "web2", []mapper.PublishedPort{pub(5353, 80, mapper.UDP)}, mapper.ErrInvalid, "published[0].port", "does not serve 80/udp"},
		{"unknown endpoint", "nope", nil, mapper.ErrNotFound, "", "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := must[mapper.Endpoint](t)(reg.Endpoint(ctx, "db"))
			_, err := reg.SetPublished(ctx, tt.ref, tt.ps)
			wantErr(t, err, tt.sentinel, tt.field, tt.fragment)
			if after := must[mapper.Endpoint](t)(reg.Endpoint(ctx, "db")); len(after.Published) != len(before.Published) {
				t.Errorf("a refused publish changed db's ports: %v", after.Published)
			}
		})
	}
	// Replicas of one service, on any server, publish the same port; the
	// same host port over another protocol leads elsewhere.
	must[mapper.Endpoint](t)(reg.SetPublished(ctx, "web2", []mapper.PublishedPort{pub(8080, 80, mapper.TCP)}))
	must[mapper.Endpoint](t)(reg.SetPublished(ctx, "web3", []mapper.PublishedPort{pub(8080, 80, mapper.TCP)}))
	must[mapper.Endpoint](t)(reg.SetPublished(ctx, "db", []mapper.PublishedPort{pub(8080, 80, mapper.UDP)}))
	_, err := reg.SetPublished(ctx, "db", []mapper.PublishedPort{pub(5353, 80, mapper.UDP)})
	wantErr(t, err, mapper.ErrConflict, "published[0].host_port", "5353/udp already leads to net1/10.1.0.5:53")

	// A move keeps the published ports: they are the cluster's.
	moved := must[mapper.Endpoint](t)(reg.MoveEndpoint(ctx, "web1", "s2", ""))
	if len(moved.Published) != 2 {
		t.Errorf("moved endpoint publishes %v, want both ports", moved.Published)
	}

	// The port leads to the service while any endpoint publishes it.
	must[mapper.Endpoint](t)(reg.DeleteEndpoint(ctx, "web1"))
	must[mapper.Endpoint](t)(reg.SetPublished(ctx, "web2", nil))
	_, err = reg.SetPublished(ctx, "db", []mapper.PublishedPort{pub(8080, 80, mapper.TCP)})
	wantErr(t, err, mapper.ErrConflict, "published[0].host_port", "published by endpoint web3")
	must[mapper.Endpoint](t)(reg.SetPublished(ctx, "web3", nil))
	must[mapper.Endpoint](t)(reg.SetPublished(ctx, "db", []mapper.PublishedPort{pub(8080, 80, mapper.TCP)}))
	// 5353/udp went with web1.
	if e := must[mapper.Endpoint](t)(reg.SetPublished(ctx, "db", []mapper.PublishedPort{pub(8080, 80, mapper.TCP), pub(5353, 80, mapper.UDP)})); len(e.Published) != 2 {
		t.Errorf("db publishes %v, want 8080 and 5353", e.Published)
	}
}

func TestServedPortsAndIdentityBlocks(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	many := web("many", "s1")
	for p := uint16(1); len(many.Ports) <= mapper.MaxPorts; p++ {
		many.Ports = append(many.Ports, mapper.PortSpec{Port: 1000 + p, Protocol: mapper.TCP})
	}
	_, err := reg.CreateEndpoint(ctx, many)
	wantErr(t, err, mapper.ErrInvalid, "ports", "at most 32")

	// web0 holds identity block 32768-33023 at 10.1.0.5: no endpoint
	// sharing that IP may serve a port in it.
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web0", "s1")))
	grpc := web("grpc", "s2")
	grpc.Ports = []mapper.PortSpec{{Port: 32800, Protocol: mapper.TCP}}
	_, err = reg.CreateEndpoint(ctx, grpc)
	wantErr(t, err, mapper.ErrConflict, "ports[0]", "identity block 32768-33023 of endpoint 1")
	// A port above the blocks held is fine, and later identity blocks at
	// that IP steer clear of it.
	grpc.Ports = []mapper.PortSpec{{Port: 33100, Protocol: mapper.TCP}}
	g := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, grpc))
	if g.Identity.Contains(33100) {
		t.Errorf("grpc's own identity block %v holds the port it serves", g.Identity)
	}
	next := must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, web("web1", "s2")))
	if next.Identity.Contains(33100) || next.Identity.Base != 33536 {
		t.Errorf("identity block %v: want the first block clear of the served 33100 and of those held (33536)", next.Identity)
	}
	// The same port elsewhere (another IP) is no conflict.
	other := grpc
	other.Name, other.IP, other.Ports = "other", ip("10.1.0.6"), []mapper.PortSpec{{Port: 32800, Protocol: mapper.TCP}}
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, other))
}

func TestInterfaceNames(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	a := web("a", "s1")
	a.Interface = "dlaaaa"
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, a))
	for _, tt := range []struct {
		iface, server string
		sentinel      error
		fragment      string
	}{
		{"dlaaaa", "s1", mapper.ErrConflict, "already endpoint 1's"},
		{"eth0/x", "s1", mapper.ErrInvalid, "not an interface name"},
		{"averyverylongname", "s1", mapper.ErrInvalid, "at most 15"},
	} {
		b := web("", tt.server)
		b.Interface = tt.iface
		_, err := reg.CreateEndpoint(ctx, b)
		wantErr(t, err, tt.sentinel, "interface", tt.fragment)
	}
	// The same name on another server is another interface.
	b := web("b", "s2")
	b.Interface = "dlaaaa"
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, b))
	// Moving takes the name along; the old one is free again.
	moved := must[mapper.Endpoint](t)(reg.MoveEndpoint(ctx, "a", "s2", "dlbbbb"))
	if moved.Interface != "dlbbbb" {
		t.Errorf("after the move the interface is %q", moved.Interface)
	}
	c := web("c", "s1")
	c.Interface = "dlaaaa"
	must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, c))
	// A move to the server it is on records the new interface.
	same := must[mapper.Endpoint](t)(reg.MoveEndpoint(ctx, "c", "s1", "dlcccc"))
	if same.Interface != "dlcccc" || same.Wire.Addr != ip("192.0.2.1") {
		t.Errorf("same-server move: %+v, want interface dlcccc and the same wire block", same)
	}
	if _, err := reg.MoveEndpoint(ctx, "b", "s2", "dlbbbb"); !errors.Is(err, mapper.ErrConflict) {
		t.Errorf("moving onto an interface another endpoint holds: %v, want a conflict", err)
	}
}

func TestLocatorLimit(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	var ips []netip.Addr
	for i := 1; i <= mapper.MaxLocators+1; i++ {
		ips = append(ips, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
	}
	_, err := reg.RegisterServer(ctx, mapper.ServerSpec{Name: "big", IPs: ips, MAC: mac("52:54:00:00:00:01")})
	wantErr(t, err, mapper.ErrInvalid, "ips", "at most 8")
}

func TestParsePublishedPort(t *testing.T) {
	for _, tt := range []struct {
		in, want, err string
	}{
		{"8080:80", "8080->80/tcp", ""},
		{"5353:53/udp", "5353->53/udp", ""},
		{"8080->80/tcp", "8080->80/tcp", ""},
		{"8080", "8080->8080/tcp", ""},
		{"9000/udp", "9000->9000/udp", ""},
		{"x:80", "", `host port "x"`},
		{"0:80", "", `host port "0"`},
		{"8080:0", "", "from 1 to 65535"},
		{"8080:80/sctp", "", `unknown protocol "sctp"`},
		{"70000:80", "", `host port "70000"`},
	} {
		p, err := mapper.ParsePublishedPort(tt.in)
		switch {
		case tt.err == "" && (err != nil || p.String() != tt.want):
			t.Errorf("ParsePublishedPort(%q) = %v, %v; want %s", tt.in, p, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), tt.in)):
			t.Errorf("ParsePublishedPort(%q) = %v, %v; want an error naming %q and saying %q", tt.in, p, err, tt.in, tt.err)
		}
	}
}

// TestWatchDeleteWithoutPreviousValue: a deletion whose previous value
// the store lost (etcd at its compaction revision) still reaches
// watchers as a deletion of the object its key names.
func TestWatchDeleteWithoutPreviousValue(t *testing.T) {
	for _, tt := range []struct {
		key  string
		want mapper.Change
	}{
		{"/daoli/obj/endpoints/0000000042", mapper.Change{Kind: mapper.KindEndpoint, Endpoint: &mapper.Endpoint{ID: 42}}},
		{"/daoli/obj/servers/s1", mapper.Change{Kind: mapper.KindServer, Server: &mapper.Server{Name: "s1"}}},
		{"/daoli/obj/networks/blue", mapper.Change{Kind: mapper.KindNetwork, Network: &mapper.Network{Name: "blue"}}},
	} {
		got, err := mapper.DeletedObject(tt.key)
		if err != nil || diff(tt.want, got) != "" {
			t.Errorf("%s: %+v, %v; want %+v", tt.key, got, err, tt.want)
		}
	}
	if _, err := mapper.DeletedObject("/daoli/obj/endpoints/x"); err == nil {
		t.Error("a malformed endpoint key was accepted")
	}
}
