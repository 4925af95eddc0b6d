package agent

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/daolinet/daoli/dataplane"
	"github.com/daolinet/daoli/mapper"
)

func TestModelApplyReportsWhatMatters(t *testing.T) {
	m := newModel()
	m.reset(mapper.Snapshot{Revision: 10})
	srv := mapper.Server{Name: "s1", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, MAC: mapper.MAC{2, 0, 0, 0, 0, 1}}
	// Written again with nothing the dataplane holds changed (an agent
	// restarted and registered again).
	again := srv
	again.Since = again.Since.AddDate(0, 0, 1)
	moved := srv
	moved.IPs = []netip.Addr{netip.MustParseAddr("192.0.2.9")}
	ep := mapper.Endpoint{ID: 1, Server: "s1"}
	for _, tt := range []struct {
		name   string
		change mapper.Change
		want   bool
	}{
		{"new server", mapper.Change{Revision: 11, Type: "put", Server: &srv}, true},
		{"registered again", mapper.Change{Revision: 12, Type: "put", Server: &again}, false},
		{"new locator", mapper.Change{Revision: 13, Type: "put", Server: &moved}, true},
		{"older", mapper.Change{Revision: 12, Type: "put", Endpoint: &ep}, false},
		{"endpoint", mapper.Change{Revision: 14, Type: "put", Endpoint: &ep}, true},
		{"endpoint gone", mapper.Change{Revision: 15, Type: "delete", Endpoint: &ep}, true},
	} {
		if got := m.apply(tt.change); got != tt.want {
			t.Errorf("%s: apply reports %v, want %v", tt.name, got, tt.want)
		}
	}
	if m.rev() != 15 || len(m.endpoints) != 0 || m.servers["s1"].IPs[0] != moved.IPs[0] {
		t.Errorf("model at revision %d with %d endpoints and server %+v", m.rev(), len(m.endpoints), m.servers["s1"])
	}
	// A dataplane programmed at 15 is current through later writes that
	// change nothing it holds, one programmed at 13 is not current past it.
	m.apply(mapper.Change{Revision: 16, Type: "put", Server: &moved})
	if got := m.current(15); got != 16 {
		t.Errorf("programmed at 15, current up to %d after a write of nothing new; want 16", got)
	}
	if got := m.current(13); got != 13 {
		t.Errorf("programmed at 13, current up to %d; want 13", got)
	}
}

// TestModelBatchRevision: one write can make several changes at one
// revision (a batch of endpoints); all of them count, and replaying the
// revision after a reconnect changes nothing.
func TestModelBatchRevision(t *testing.T) {
	m := newModel()
	m.reset(mapper.Snapshot{Revision: 3})
	batch := []mapper.Change{
		{Revision: 4, Type: "put", Endpoint: &mapper.Endpoint{ID: 1}},
		{Revision: 4, Type: "put", Endpoint: &mapper.Endpoint{ID: 2}},
		{Revision: 4, Type: "put", Endpoint: &mapper.Endpoint{ID: 3}},
	}
	for _, c := range append(batch, batch...) {
		m.apply(c)
	}
	if len(m.endpoints) != 3 || m.rev() != 4 {
		t.Errorf("after a batch at revision 4 (twice): %d endpoints at revision %d, want 3 at 4", len(m.endpoints), m.rev())
	}
}

// TestModelPutDoesNotRevive: the agent's own write must not undo what the
// change log already brought: a deletion, or a newer copy.
func TestModelPutDoesNotRevive(t *testing.T) {
	m := newModel()
	m.reset(mapper.Snapshot{Revision: 1})
	e := mapper.Endpoint{ID: 7, Server: "s1", Interface: "dl1", State: mapper.Active}
	m.apply(mapper.Change{Revision: 2, Type: "put", Endpoint: &e})
	m.apply(mapper.Change{Revision: 3, Type: "delete", Endpoint: &e})
	m.put(e)
	if _, ok := m.endpoints[7]; ok {
		t.Error("put revived a deleted endpoint")
	}
	down := mapper.Endpoint{ID: 8, Server: "s1", Interface: "dl2", State: mapper.Down}
	m.apply(mapper.Change{Revision: 4, Type: "put", Endpoint: &down})
	created := down
	created.State = mapper.Active
	m.put(created)
	if m.endpoints[8].State != mapper.Down {
		t.Error("put replaced a newer copy from the change log")
	}
	moved := down
	moved.Server, moved.Interface = "s2", "dl3"
	m.put(moved)
	if m.endpoints[8].Server != "s2" {
		t.Error("put of a move the log has not shown yet was ignored")
	}
}

// TestLimitsAgree: the registry must refuse what every dataplane would
// reject, or one endpoint would stop every server's Apply.
func TestLimitsAgree(t *testing.T) {
	if mapper.MaxPorts != dataplane.MaxPorts {
		t.Errorf("mapper.MaxPorts %d, dataplane.MaxPorts %d", mapper.MaxPorts, dataplane.MaxPorts)
	}
	if mapper.MaxLocators != dataplane.MaxLocalIPs {
		t.Errorf("mapper.MaxLocators %d, dataplane.MaxLocalIPs %d", mapper.MaxLocators, dataplane.MaxLocalIPs)
	}
}

// TestDesiredPublished: the published ports of every endpoint reach the
// dataplane once per service; those of an endpoint left out go with it;
// where two services (from an older registry) publish one port, every
// server keeps the same one.
func TestDesiredPublished(t *testing.T) {
	m := newModel()
	m.reset(mapper.Snapshot{Revision: 1})
	srv := mapper.Server{Name: "s1", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, MAC: mapper.MAC{2, 0, 0, 0, 0, 1}}
	web := func(id uint32, ip string, published ...mapper.PublishedPort) mapper.Endpoint {
		return mapper.Endpoint{ID: id, NetworkID: 1, Network: "blue", IP: netip.MustParseAddr(ip), MAC: mapper.MAC{2, 0, 0, 0, 0, byte(id)},
			Server: "s1", Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}}, Mode: mapper.Balance, State: mapper.Active,
			Wire: mapper.Block{Addr: srv.IPs[0], Base: 16384 + 256*uint16(id), Size: 256}, Identity: mapper.Block{Base: 32768 + 256*uint16(id), Size: 256},
			Published: published}
	}
	p8080 := mapper.PublishedPort{HostPort: 8080, Port: 80, Protocol: mapper.TCP}
	m.apply(mapper.Change{Revision: 2, Type: "put", Server: &srv})
	for i, e := range []mapper.Endpoint{web(3, "10.1.0.9", p8080), web(1, "10.1.0.5", p8080), web(2, "10.1.0.5", p8080)} {
		m.apply(mapper.Change{Revision: int64(3 + i), Type: "put", Endpoint: &e})
	}
	st := m.desired("s1", 256, func(string) int { return 0 })
	if len(st.Published) != 2 {
		t.Fatalf("published %+v: want one per service, two", st.Published)
	}
	got := servedPublished(st)
	want := dataplane.Published{HostPort: 8080, Proto: dataplane.TCP, Network: 1, IP: netip.MustParseAddr("10.1.0.5"), Port: 80}
	if len(got) != 1 || got[0] != want {
		t.Errorf("served %+v, want only %+v", got, want)
	}
	st.Endpoints = st.Endpoints[2:] // only endpoint 3 is left
	got = servedPublished(st)
	if len(got) != 1 || got[0].IP != netip.MustParseAddr("10.1.0.9") {
		t.Errorf("with endpoints 1 and 2 left out, served %+v; want 10.1.0.9's", got)
	}
}

// TestGoneServersEndpointsAreDown: when a server's lease runs out, every
// other server treats its endpoints as down (nobody is left to mark them
// so), and the server itself, cut off but alive, keeps its own.
func TestGoneServersEndpointsAreDown(t *testing.T) {
	m := newModel()
	dead := mapper.Server{Name: "dead", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, MAC: mapper.MAC{2, 0, 0, 0, 0, 1}}
	m.reset(mapper.Snapshot{Revision: 1, Servers: []mapper.Server{dead}, Endpoints: []mapper.Endpoint{
		{ID: 1, Server: "dead", State: mapper.Active}}})
	state := func(self string) dataplane.EndpointState {
		return m.desired(self, 256, func(string) int { return 0 }).Endpoints[0].State
	}
	if got := state("other"); got != dataplane.Active {
		t.Fatalf("endpoint of a live server: %v, want active", got)
	}
	gone := dead
	gone.Gone = true
	if !m.apply(mapper.Change{Revision: 2, Type: "put", Kind: mapper.KindServer, Server: &gone}) {
		t.Error("a server marked gone does not matter to the dataplane")
	}
	if got := state("other"); got != dataplane.Down {
		t.Errorf("endpoint of a gone server, seen from another: %v, want down", got)
	}
	if got := state("dead"); got != dataplane.Active {
		t.Errorf("endpoint of a gone server, seen from itself: %v, want active", got)
	}
}

// BenchmarkDesired is the cost of deriving the dataplane's State from a
// model of 10,000 endpoints, the agent's first step per change.
func BenchmarkDesired(b *testing.B) {
	m := newModel()
	var s mapper.Snapshot
	s.Networks = []mapper.Network{{Name: "blue", ID: 1, Subnet: netip.MustParsePrefix("10.0.0.0/8")}}
	for k := range 40 {
		s.Servers = append(s.Servers, mapper.Server{Name: fmt.Sprintf("s%d", k), IPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 18, byte(k), 1})}})
	}
	for i := range 10000 {
		v := i + 2
		s.Endpoints = append(s.Endpoints, mapper.Endpoint{ID: uint32(i + 1), Network: "blue", NetworkID: 1,
			IP: netip.AddrFrom4([4]byte{10, byte(v >> 16), byte(v >> 8), byte(v)}), Server: fmt.Sprintf("s%d", i/250),
			Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}}, Mode: mapper.Balance, State: mapper.Active,
			Wire:     mapper.Block{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i / 250), 1}), Base: uint16(256 * (1 + i%250))},
			Identity: mapper.Block{Base: 32768}})
	}
	m.reset(s)
	b.ResetTimer()
	for range b.N {
		m.desired("s0", 256, func(string) int { return 0 })
	}
}
