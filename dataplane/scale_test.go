package dataplane

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/daolinet/daoli/internal/testbed"
)

// manyServices is a State with n balance services at distinct IPs, each
// with backends active endpoints; 200 endpoints per server, so wire
// blocks stay unique per server.
func manyServices(n, backends int) State {
	var s State
	for i := 0; i < n*backends; i++ {
		svc, b, id := i/backends, i%backends, uint32(i+1)
		server := netip.AddrFrom4([4]byte{192, 0, byte(2 + i/200), 1})
		if i%200 == 0 {
			s.Servers = append(s.Servers, Server{IP: server})
		}
		s.Endpoints = append(s.Endpoints, Endpoint{
			ID: id, Network: 1, IP: netip.AddrFrom4([4]byte{10, byte(svc >> 16), byte(svc >> 8), byte(svc)}),
			MAC: net.HardwareAddr{2, 0, byte(id >> 16), byte(id >> 8), byte(id), 1}, Server: server,
			WireBase: uint16(256 * (i%200 + 1)), IdentityBase: uint16(256 * (b + 1)),
			Ports: []Port{{80, TCP}}, Mode: Balance,
		})
	}
	return s
}

// TestMaglevTables: balance services with one backend take no table, and
// when two-backend services outnumber the tables, the extra ones send
// their flows to one backend instead of failing the whole Apply.
func TestMaglevTables(t *testing.T) {
	d := newDataplane(t)
	if err := d.Apply(manyServices(maxTables+100, 1)); err != nil {
		t.Fatalf("%d single-backend balance services: %v", maxTables+100, err)
	}
	if n := d.Unbalanced(); n != 0 {
		t.Errorf("%d single-backend services left unbalanced, want 0: they need no table", n)
	}
	if err := d.Apply(manyServices(maxTables+1, 2)); err != nil {
		t.Fatalf("%d two-backend balance services: %v", maxTables+1, err)
	}
	if n := d.Unbalanced(); n != 1 {
		t.Errorf("%d services unbalanced with %d tables for %d services, want 1", n, maxTables, maxTables+1)
	}
}

// TestMaxEndpoints: the maps are sized by Config, and a state larger than
// them is refused whole, naming the limit.
func TestMaxEndpoints(t *testing.T) {
	testbed.RequirePrivileged(t)
	d, err := New(Config{BPFFSPath: testbed.BPFFS(t) + "/daoli", MaxEndpoints: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Remove(); d.Close() })
	if d.MaxEndpoints() != 10 || d.objs.Endpoints.MaxEntries() != 10 || d.objs.Services.MaxEntries() != 40 {
		t.Errorf("maps hold %d endpoints and %d services, want 10 and 40", d.objs.Endpoints.MaxEntries(), d.objs.Services.MaxEntries())
	}
	if err := d.Apply(manyServices(10, 1)); err != nil {
		t.Errorf("10 endpoints: %v", err)
	}
	if err := d.Apply(manyServices(11, 1)); !errors.Is(err, ErrInvalidState) {
		t.Errorf("11 endpoints in maps for 10: %v, want ErrInvalidState", err)
	}
	if _, err := New(Config{BPFFSPath: testbed.BPFFS(t) + "/x", MaxEndpoints: -1}); err == nil {
		t.Error("a negative MaxEndpoints was accepted")
	}
}
