package dataplane

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/daolinet/daoli/internal/testbed"
)

// churn is a registry's worth of endpoints changing at random: adds,
// removes, moves between servers, state and priority changes, on shared
// service addresses of two networks, with policies coming and going.
type churn struct {
	rng     *rand.Rand
	s       State
	nextID  uint32
	servers []netip.Addr
	free    map[netip.Addr][]uint16 // free wire bases per server
}

func newChurn(seed uint64) *churn {
	c := &churn{rng: rand.New(rand.NewPCG(seed, 1)), free: map[netip.Addr][]uint16{}}
	c.s = State{BlockSize: 256, WirePorts: PortRange{First: 16384, Last: 32767}}
	for k := range 4 {
		ip := netip.AddrFrom4([4]byte{198, 18, byte(k), 1})
		c.servers = append(c.servers, ip)
		c.s.Servers = append(c.s.Servers, Server{IP: ip, MAC: net.HardwareAddr{2, 0xbe, 0, 0, 0, byte(k)}})
		for b := uint16(16384); b < 32768; b += 256 {
			c.free[ip] = append(c.free[ip], b)
		}
	}
	c.s.Networks = []Network{{ID: 1, Subnet: netip.MustParsePrefix("10.1.0.0/16")}, {ID: 2, Subnet: netip.MustParsePrefix("10.2.0.0/16")}}
	c.s.LocalIPs = []netip.Addr{c.servers[0]}
	return c
}

func (c *churn) take(server netip.Addr) uint16 {
	f := c.free[server]
	i := c.rng.IntN(len(f))
	b := f[i]
	c.free[server] = append(f[:i], f[i+1:]...)
	return b
}

func (c *churn) step() {
	n := len(c.s.Endpoints)
	switch op := c.rng.IntN(10); {
	case n < 50 || op < 4 && n < 200: // add (4 servers hold 256)
		c.nextID++
		network := uint32(1 + c.rng.IntN(2))
		host := 2 + c.rng.IntN(40) // few addresses, so services share them
		ip := netip.AddrFrom4([4]byte{10, byte(network), 0, byte(host)})
		mode := Balance
		if host%3 == 0 {
			mode = Failover
		}
		server := c.servers[c.rng.IntN(len(c.servers))]
		if len(c.free[server]) == 0 {
			return
		}
		e := Endpoint{ID: c.nextID, Network: network, IP: ip,
			MAC:    net.HardwareAddr{2, 0x42, 0, 0, byte(c.nextID >> 8), byte(c.nextID)},
			Server: server, WireBase: c.take(server), IdentityBase: uint16(32768 + 256*(int(c.nextID)%100)),
			Mode: mode, Priority: uint32(c.rng.IntN(3)),
			Ports: []Port{{80, TCP}}}
		if c.rng.IntN(2) == 0 {
			e.Ports = append(e.Ports, Port{53, UDP})
		}
		if server == c.servers[0] && c.rng.IntN(2) == 0 {
			e.Ifindex = int(1000 + c.nextID)
		}
		// One identity block per (network, IP): take another if taken.
		for c.identTaken(e) {
			e.IdentityBase += 256
		}
		c.s.Endpoints = append(c.s.Endpoints, e)
	case op < 6: // remove
		i := c.rng.IntN(n)
		e := c.s.Endpoints[i]
		c.free[e.Server] = append(c.free[e.Server], e.WireBase)
		c.s.Endpoints = append(c.s.Endpoints[:i], c.s.Endpoints[i+1:]...)
	case op < 7: // move
		e := &c.s.Endpoints[c.rng.IntN(n)]
		to := c.servers[c.rng.IntN(len(c.servers))]
		if to == e.Server || len(c.free[to]) == 0 {
			return
		}
		c.free[e.Server] = append(c.free[e.Server], e.WireBase)
		e.Server, e.WireBase, e.Ifindex = to, c.take(to), 0
	case op < 9: // state or priority
		e := &c.s.Endpoints[c.rng.IntN(n)]
		if c.rng.IntN(2) == 0 {
			e.State = Active + Down - e.State
		} else {
			e.Priority = uint32(c.rng.IntN(3))
		}
	default: // policies
		switch c.rng.IntN(3) {
		case 0:
			c.s.Policies = nil
		case 1:
			c.s.Policies = []Policy{{From: 1, To: 2, Allow: true}}
		default:
			c.s.Policies = []Policy{{From: 2, To: 1, Allow: true, Only: []ServiceRef{{netip.AddrFrom4([4]byte{10, 1, 0, 3}), Port{80, TCP}}}}}
		}
	}
}

func (c *churn) identTaken(e Endpoint) bool {
	for _, o := range c.s.Endpoints {
		if o.IP == e.IP && o.IdentityBase == e.IdentityBase {
			return true
		}
	}
	return false
}

// state is the State as it stands, deep enough a copy for Apply.
func (c *churn) state() State {
	s := c.s
	s.Endpoints = append([]Endpoint(nil), c.s.Endpoints...)
	return s
}

// TestApplyFromMemoryMatchesTheMaps: over thousands of random changes, a
// Dataplane that diffs against what it last wrote leaves its maps exactly
// as a Dataplane that reads them back would make them: one adopting the
// same maps and applying the same State writes nothing.
func TestApplyFromMemoryMatchesTheMaps(t *testing.T) {
	testbed.RequirePrivileged(t)
	path := testbed.BPFFS(t) + "/daoli"
	d, err := New(Config{BPFFSPath: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Remove(); d.Close() })
	c := newChurn(7)
	applied := 0
	for step := range 3000 {
		c.step()
		s := c.state()
		if err := d.Apply(s); err != nil {
			// The generator may make a state the dataplane refuses (two
			// networks showing one service); that is not this test's
			// business: undo and go on.
			t.Logf("step %d: %v", step, err)
			continue
		}
		applied++
		if step%250 != 249 {
			continue
		}
		fresh, err := New(Config{BPFFSPath: path})
		if err != nil {
			t.Fatal(err)
		}
		before := fresh.Writes()
		if err := fresh.Apply(s); err != nil {
			t.Fatalf("step %d: the adopting dataplane: %v", step, err)
		}
		if w := fresh.Writes() - before; w != 0 {
			t.Errorf("step %d (%d endpoints): reading the maps back, Apply wrote %d entries; the maps were not what the last Apply meant", step, len(s.Endpoints), w)
		}
		fresh.Close()
	}
	if applied < 2500 {
		t.Errorf("only %d of 3000 random states applied", applied)
	}
}

// BenchmarkApplyOneChange is the cost of an Apply that changes one
// endpoint of n: the agent's step per change today, O(n) in memory.
func BenchmarkApplyOneChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			d := newDataplane(b)
			s := State{BlockSize: 256}
			const perServer = 250
			for k := range (n + perServer - 1) / perServer {
				s.Servers = append(s.Servers, Server{IP: netip.AddrFrom4([4]byte{198, 18 + byte(k>>8), byte(k), 1}),
					MAC: net.HardwareAddr{0x02, 0xbe, 0, 0, byte(k >> 8), byte(k)}})
			}
			for i := range n {
				v := i + 2
				s.Endpoints = append(s.Endpoints, Endpoint{ID: uint32(i + 1), Network: 1,
					IP:     netip.AddrFrom4([4]byte{10, byte(v >> 16), byte(v >> 8), byte(v)}),
					MAC:    net.HardwareAddr{0x02, 0x42, 0, byte(v >> 16), byte(v >> 8), byte(v)},
					Server: s.Servers[i/perServer].IP, WireBase: uint16(256 * (1 + i%perServer)), IdentityBase: 32768,
					Ports: []Port{{Number: 80, Proto: TCP}}})
			}
			if err := d.Apply(s); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				s.Endpoints[0].Priority = uint32(i % 2)
				if err := d.Apply(s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
