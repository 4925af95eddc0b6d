package dataplane

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValidate(t *testing.T) {
	good := fixture(serverA)
	if _, err := good.validate(); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*State)
	}{
		{"block size not a power of two", func(s *State) { s.BlockSize = 100 }},
		{"block size too small", func(s *State) { s.BlockSize = 2 }},
		{"short gateway MAC", func(s *State) { s.GatewayMAC = macC[:4] }},
		{"IPv6 server", func(s *State) { s.Servers[0].IP = netip.MustParseAddr("2001:db8::1") }},
		{"ID 0", func(s *State) { s.Endpoints[0].ID = 0 }},
		{"duplicate ID", func(s *State) { s.Endpoints[1].ID = s.Endpoints[0].ID }},
		{"IPv6 endpoint", func(s *State) { s.Endpoints[0].IP = netip.MustParseAddr("2001:db8::2") }},
		{"unknown server", func(s *State) { s.Endpoints[0].Server = netip.MustParseAddr("192.0.2.99") }},
		{"unaligned wire base", func(s *State) { s.Endpoints[0].WireBase = 32769 }},
		{"wire base 0", func(s *State) { s.Endpoints[0].WireBase = 0 }},
		{"unaligned identity base", func(s *State) { s.Endpoints[0].IdentityBase = 1000 }},
		{"wire block taken", func(s *State) { s.Endpoints[2].WireBase = s.Endpoints[0].WireBase }},
		{"identity block taken", func(s *State) {
			s.Endpoints[2].IP = s.Endpoints[0].IP
			s.Endpoints[2].IdentityBase = s.Endpoints[0].IdentityBase
		}},
		{"identity block holds a served port", func(s *State) { s.Endpoints[1].Ports[0].Number = 1030 }},
		{"port 0", func(s *State) { s.Endpoints[1].Ports[0].Number = 0 }},
		{"ICMP port", func(s *State) { s.Endpoints[1].Ports[0].Proto = 1 }},
		{"port twice", func(s *State) { s.Endpoints[1].Ports[1] = s.Endpoints[1].Ports[0] }},
		{"too many ports", func(s *State) { s.Endpoints[1].Ports = make([]Port, MaxPorts+1) }},
		{"modes disagree", func(s *State) {
			e := s.Endpoints[1]
			e.ID, e.WireBase, e.IdentityBase, e.Mode = 9, 40960, 4096, Balance
			s.Endpoints = append(s.Endpoints, e)
		}},
		{"ifindex twice", func(s *State) { s.Endpoints[2].Ifindex = s.Endpoints[0].Ifindex }},
		{"policy twice", func(s *State) { s.Policies = []Policy{{From: 7, To: 8, Allow: true}, {From: 7, To: 8, Allow: false}} }},
		{"two networks show one service", func(s *State) {
			// X (network 8) and W (network 9) both serve 10.1.0.9:80
			// and would both appear in network 10.
			w := s.Endpoints[3]
			w.ID, w.Network, w.WireBase = 9, 9, 40960
			s.Endpoints = append(s.Endpoints, w)
			s.Policies = []Policy{{From: 10, To: 8, Allow: true}, {From: 10, To: 9, Allow: false}}
		}},
		{"identity block taken in the reached network", func(s *State) {
			s.Endpoints[3].IdentityBase = s.Endpoints[1].IdentityBase // X's and S's, same IP
			s.Policies = []Policy{{From: 8, To: 7, Allow: true}}
		}},
		{"reached network serves a port in an identity block", func(s *State) {
			s.Endpoints[1].Ports[1].Number = 2100 // S serves inside X's identity block 2048
			s.Policies = []Policy{{From: 8, To: 7, Allow: true}}
		}},
		{"network ID 0", func(s *State) { s.Networks[0].ID = 0 }},
		{"network twice", func(s *State) { s.Networks[1].ID = s.Networks[0].ID }},
		{"subnet with host bits", func(s *State) { s.Networks[0].Subnet = netip.MustParsePrefix("10.1.0.5/24") }},
		{"IPv6 subnet", func(s *State) { s.Networks[0].Subnet = netip.MustParsePrefix("2001:db8::/64") }},
		{"egress prefix with host bits", func(s *State) {
			s.Networks[0].Egress = []netip.Prefix{netip.MustParsePrefix("203.0.113.7/24")}
		}},
		{"IPv6 egress prefix", func(s *State) { s.Networks[0].Egress = []netip.Prefix{netip.MustParsePrefix("::/0")} }},
		{"too many egress prefixes", func(s *State) {
			s.Networks[0].Egress = make([]netip.Prefix, MaxEgressPrefixes+1)
			for i := range s.Networks[0].Egress {
				s.Networks[0].Egress[i] = netip.MustParsePrefix("203.0.113.0/24")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fixture(serverA)
			s.Networks = slices.Clone(s.Networks)
			s.Endpoints = slices.Clone(s.Endpoints)
			for i := range s.Endpoints {
				s.Endpoints[i].Ports = slices.Clone(s.Endpoints[i].Ports)
			}
			tc.change(&s)
			_, err := s.validate()
			if !errors.Is(err, ErrInvalidState) {
				t.Errorf("validate: %v, want ErrInvalidState", err)
			}
			t.Log(err)
		})
	}
}

func TestMaglevTable(t *testing.T) {
	ids := []uint32{11, 5, 42}
	table := maglevTable(ids, MaglevSize)
	if diff := cmp.Diff(table, maglevTable([]uint32{42, 11, 5}, MaglevSize)); diff != "" {
		t.Errorf("table depends on the order of ids (-first +second):\n%s", diff)
	}
	counts := map[uint32]int{}
	for _, id := range table {
		counts[id]++
	}
	for _, id := range ids {
		if share := float64(counts[id]) / MaglevSize; share < 0.30 || share > 0.37 {
			t.Errorf("id %d owns %.2f of the slots, want about a third", id, share)
		}
	}

	// Removing a backend moves (almost) only its own slots.
	smaller := maglevTable([]uint32{5, 11}, MaglevSize)
	moved := 0
	for i := range table {
		if table[i] != 42 && table[i] != smaller[i] {
			moved++
		}
	}
	if moved > MaglevSize/10 {
		t.Errorf("removing one of three backends moved %d slots of the others, want at most %d", moved, MaglevSize/10)
	}
	if maglevTable(nil, MaglevSize) != nil {
		t.Error("table of no backends is not nil")
	}
}

func TestNewWithoutBPFFS(t *testing.T) {
	_, err := New(Config{BPFFSPath: t.TempDir() + "/daoli"})
	if !errors.Is(err, ErrNoBPFFS) {
		t.Errorf("New on a plain directory: %v, want ErrNoBPFFS", err)
	}
}

func TestValidateNamesTheEndpoint(t *testing.T) {
	s := State{Servers: []Server{{IP: netip.MustParseAddr("192.0.2.1")}}, Endpoints: []Endpoint{
		{ID: 5, Network: 1, IP: netip.MustParseAddr("10.1.0.5"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 5},
			Server: netip.MustParseAddr("192.0.2.1"), WireBase: 256, IdentityBase: 512, Ports: make([]Port, MaxPorts+1)},
	}}
	_, err := s.validate()
	var bad *InvalidEndpointError
	if !errors.As(err, &bad) || bad.ID != 5 || !errors.Is(err, ErrInvalidState) {
		t.Errorf("validate: %v, want an InvalidEndpointError for endpoint 5 that is ErrInvalidState", err)
	}
}

// TestApplyWritesOnlyDifferences: applying the state a dataplane already
// holds writes nothing; a one-endpoint change writes a few entries.
func TestApplyWritesOnlyDifferences(t *testing.T) {
	d := loadServer(t, serverA)
	before := d.Writes()
	if before == 0 {
		t.Fatal("loading a state wrote nothing")
	}
	if err := d.Apply(fixture(serverA)); err != nil {
		t.Fatal(err)
	}
	if got := d.Writes(); got != before {
		t.Errorf("applying the same state again wrote %d entries, want 0", got-before)
	}
	s := fixture(serverA)
	s.Endpoints[1].State = Down
	if err := d.Apply(s); err != nil {
		t.Fatal(err)
	}
	if got := d.Writes() - before; got == 0 || got > 4 {
		t.Errorf("marking one backend down wrote %d entries, want 1 to 4", got)
	}
}
