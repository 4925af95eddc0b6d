package agent

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/daolinet/daoli/dataplane"
	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
)

// offlineAgent is an agent of server s1 with a real dataplane (maps for
// maxEndpoints, 0: the default) in a private bpffs and no mapper: tests
// fill its model by hand and call reconcile.
func offlineAgent(t *testing.T, maxEndpoints int) (*Agent, *dataplane.Dataplane) {
	t.Helper()
	testbed.RequirePrivileged(t)
	dp, err := dataplane.New(dataplane.Config{BPFFSPath: filepath.Join(testbed.BPFFS(t), "s"), MaxEndpoints: maxEndpoints})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Remove() })
	a, err := New(Config{Mapper: mapper.NewClient("127.0.0.1:1", nil), Name: "s1", Uplink: "up", RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a.dp, a.ctx, a.alloc = dp, context.Background(), mapper.Allocation{BlockSize: 256}
	return a, dp
}

// TestReconcileLeavesOutARefusedEndpoint: an endpoint the dataplane
// refuses costs only itself; the rest of the server is programmed.
func TestReconcileLeavesOutARefusedEndpoint(t *testing.T) {
	a, dp := offlineAgent(t, 0)
	server := mapper.Server{Name: "s2", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}, MAC: mapper.MAC{2, 0, 0, 0, 0, 2}}
	endpoint := func(id uint32, ip string, ports int) mapper.Endpoint {
		e := mapper.Endpoint{ID: id, NetworkID: 1, IP: netip.MustParseAddr(ip), MAC: mapper.MAC{2, 0, 0, 0, 1, byte(id)},
			Server: "s2", Mode: mapper.Balance, State: mapper.Active,
			Wire:     mapper.Block{Addr: server.IPs[0], Base: uint16(16384 + 256*id), Size: 256},
			Identity: mapper.Block{Base: 32768, Size: 256}}
		for p := 0; p < ports; p++ {
			e.Ports = append(e.Ports, mapper.PortSpec{Port: uint16(1000 + p), Protocol: mapper.TCP})
		}
		return e
	}
	a.model.reset(mapper.Snapshot{Revision: 1, Servers: []mapper.Server{server}, Endpoints: []mapper.Endpoint{
		endpoint(1, "10.1.0.5", 1),
		endpoint(2, "10.1.0.6", dataplane.MaxPorts+1), // more than the dataplane holds
	}})
	if err := a.reconcile(context.Background()); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	fill, _, err := dp.Fill()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fill {
		if f.Name == "endpoints" && f.Entries != 1 {
			t.Errorf("the dataplane holds %d endpoints, want the good one", f.Entries)
		}
	}
	if n := a.m.excluded.Load(); n != 1 {
		t.Errorf("excluded %d endpoints, want 1", n)
	}
}

// TestReconcileKeepsTheOldestWhenFull: more endpoints than the maps hold
// program the oldest ones, on every server alike, instead of nothing.
func TestReconcileKeepsTheOldestWhenFull(t *testing.T) {
	a, dp := offlineAgent(t, 2)
	server := mapper.Server{Name: "s2", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}, MAC: mapper.MAC{2, 0, 0, 0, 0, 2}}
	var eps []mapper.Endpoint
	for id := uint32(3); id >= 1; id-- {
		eps = append(eps, mapper.Endpoint{ID: id, NetworkID: 1, IP: netip.AddrFrom4([4]byte{10, 1, 0, byte(id + 4)}),
			MAC: mapper.MAC{2, 0, 0, 0, 1, byte(id)}, Server: "s2", Mode: mapper.Balance, State: mapper.Active, Ports: []mapper.PortSpec{},
			Wire: mapper.Block{Addr: server.IPs[0], Base: uint16(16384 + 256*id), Size: 256}, Identity: mapper.Block{Base: 32768, Size: 256}})
	}
	a.model.reset(mapper.Snapshot{Revision: 1, Servers: []mapper.Server{server}, Endpoints: eps})
	if err := a.reconcile(context.Background()); err != nil {
		t.Fatalf("reconcile with 3 endpoints for maps of 2: %v", err)
	}
	fill, _, err := dp.Fill()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fill {
		if f.Name == "endpoints" && f.Entries != 2 {
			t.Errorf("the dataplane holds %d endpoints, want the 2 oldest", f.Entries)
		}
	}
	if n := a.m.excluded.Load(); n != 1 {
		t.Errorf("excluded %d, want 1", n)
	}
}
