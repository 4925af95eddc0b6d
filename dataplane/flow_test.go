package dataplane

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket/layers"

	"github.com/daolinet/daoli/internal/testbed"
)

var ipR = netip.MustParseAddr("10.1.0.50")

// withReplicas adds three endpoints with IP ipR on server B serving 443/tcp
// in the given mode; priorities 30, 20, 10.
func withReplicas(s State, mode Mode, down ...uint32) State {
	s.Endpoints = append([]Endpoint(nil), s.Endpoints...)
	for i := range 3 {
		e := Endpoint{ID: uint32(10 + i), Network: 7, IP: ipR, MAC: macAny, Server: serverB,
			WireBase: uint16(40960 + 256*i), IdentityBase: uint16(1024 + 256*i),
			Ports: []Port{{443, TCP}}, Mode: mode, Priority: uint32(30 - 10*i)}
		for _, d := range down {
			if d == e.ID {
				e.State = Down
			}
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return s
}

func flowTo(dst netip.Addr, dport, sport uint16) pkt {
	return pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: dst, proto: layers.IPProtocolTCP,
		sport: sport, dport: dport}
}

// backendOf returns the endpoint whose wire block the packet goes to.
func backendOf(t *testing.T, wire []byte) (id uint32, clientPort uint16) {
	t.Helper()
	w := decode(t, wire)
	if w.dst != serverB {
		t.Fatalf("wire packet to %s, want %s", w.dst, serverB)
	}
	return uint32(10 + (w.dport-40960)/256), w.sport
}

func TestFailover(t *testing.T) {
	a := newDataplane(t)
	setUplink(t, a, uplinkIfindex)
	if err := a.Apply(withReplicas(fixture(serverA), Failover)); err != nil {
		t.Fatal(err)
	}
	flow := flowTo(ipR, 443, 41000).bytes(t)
	ret, wire := run(t, a.objs.FromContainer, flow)
	if ret != actRedirect {
		t.Fatalf("verdict %d; drops %v", ret, drops(t, a))
	}
	first, port := backendOf(t, wire)
	if first != 10 {
		t.Fatalf("flow went to %d, want 10 (highest priority)", first)
	}

	// The master goes down: the live flow moves on its next packet and
	// keeps its offset; a new flow goes to the backup too.
	if err := a.Apply(withReplicas(fixture(serverA), Failover, 10)); err != nil {
		t.Fatal(err)
	}
	_, wire = run(t, a.objs.FromContainer, flow)
	if id, p := backendOf(t, wire); id != 11 || p != port {
		t.Errorf("live flow now goes to %d from port %d, want 11 from port %d", id, p, port)
	}
	_, wire = run(t, a.objs.FromContainer, flowTo(ipR, 443, 41001).bytes(t))
	if id, _ := backendOf(t, wire); id != 11 {
		t.Errorf("new flow goes to %d, want 11", id)
	}

	// All down: the service has no backend.
	if err := a.Apply(withReplicas(fixture(serverA), Failover, 10, 11, 12)); err != nil {
		t.Fatal(err)
	}
	before := drops(t, a)[DropNoBackend]
	if ret, _ := run(t, a.objs.FromContainer, flowTo(ipR, 443, 41002).bytes(t)); ret != actShot {
		t.Errorf("verdict %d with every backend down, want shot", ret)
	}
	if got := drops(t, a)[DropNoBackend] - before; got != 1 {
		t.Errorf("no_backend rose by %d, want 1", got)
	}
}

func TestBalance(t *testing.T) {
	// Two servers that both hold the same State choose the same backend.
	a1, a2 := newDataplane(t), newDataplane(t)
	for _, d := range []*Dataplane{a1, a2} {
		setUplink(t, d, uplinkIfindex)
		if err := d.Apply(withReplicas(fixture(serverA), Balance)); err != nil {
			t.Fatal(err)
		}
	}
	count := map[uint32]int{}
	for i := range 90 {
		flow := flowTo(ipR, 443, uint16(20000+i)).bytes(t)
		_, w1 := run(t, a1.objs.FromContainer, flow)
		_, w2 := run(t, a2.objs.FromContainer, flow)
		id1, _ := backendOf(t, w1)
		id2, _ := backendOf(t, w2)
		if id1 != id2 {
			t.Errorf("flow %d: server 1 chose %d, server 2 chose %d", i, id1, id2)
		}
		_, again := run(t, a1.objs.FromContainer, flow)
		if id, _ := backendOf(t, again); id != id1 {
			t.Errorf("flow %d moved from %d to %d", i, id1, id)
		}
		count[id1]++
	}
	for id := uint32(10); id < 13; id++ {
		if count[id] < 15 {
			t.Errorf("backend %d got %d of 90 flows, want a fair share: %v", id, count[id], count)
		}
	}

	// A down replica takes no new flows; re-applying the same State keeps
	// the table.
	if err := a1.Apply(withReplicas(fixture(serverA), Balance, 12)); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		_, w := run(t, a1.objs.FromContainer, flowTo(ipR, 443, uint16(30000+i)).bytes(t))
		if id, _ := backendOf(t, w); id == 12 {
			t.Errorf("new flow %d went to the down replica", i)
		}
	}
}

func TestOffsetsFull(t *testing.T) {
	a := newDataplane(t)
	setUplink(t, a, uplinkIfindex)
	s := fixture(serverA)
	s.BlockSize = 4
	s.Endpoints = []Endpoint{
		{ID: idC, Network: 7, IP: ipC, MAC: macC, Server: serverA, WireBase: 32768, IdentityBase: 1024, Ifindex: loopbackIfindex},
		{ID: idS, Network: 7, IP: ipS, MAC: macS, Server: serverB, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{80, TCP}}},
	}
	if err := a.Apply(s); err != nil {
		t.Fatal(err)
	}
	ports := map[uint16]bool{}
	for i := range 4 {
		ret, w := run(t, a.objs.FromContainer, flowTo(ipS, 80, uint16(50000+i)).bytes(t))
		if ret != actRedirect {
			t.Fatalf("flow %d: verdict %d; drops %v", i, ret, drops(t, a))
		}
		ports[decode(t, w).sport] = true
	}
	if len(ports) != 4 {
		t.Errorf("4 flows used wire ports %v, want 4 distinct", ports)
	}
	// The fifth flow finds every offset busy and must not steal one.
	ret, _ := run(t, a.objs.FromContainer, flowTo(ipS, 80, 50004).bytes(t))
	if ret != actShot || drops(t, a)[DropOffsetsFull] != 1 {
		t.Errorf("fifth flow: verdict %d, offsets_full %d; want shot and 1", ret, drops(t, a)[DropOffsetsFull])
	}
}

// TestInstructionBudget keeps the verifier's work visible: a change that
// makes a program much more expensive to verify must say so here. The
// counts include the global functions a program calls (the ICMP error
// handlers, verified once per program). On Linux 6.18: from_container
// 41189 (36294 before ICMP errors, policy and TTL), from_network 2840
// (1971 before); the budgets still leave room for that much again.
func TestInstructionBudget(t *testing.T) {
	d := newDataplane(t)
	for _, tc := range []struct {
		name   string
		budget uint32
		prog   *ebpf.Program
	}{
		{"from_container", 50000, d.objs.FromContainer},
		{"from_network", 4000, d.objs.FromNetwork},
	} {
		info, err := tc.prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		n, ok := info.VerifiedInstructions()
		if !ok {
			t.Skipf("%s: kernel does not report verified instructions", tc.name)
		}
		t.Logf("%s: %d verified instructions (budget %d)", tc.name, n, tc.budget)
		if n > tc.budget {
			t.Errorf("%s: %d verified instructions, budget %d", tc.name, n, tc.budget)
		}
	}
}

// TestAdopt restarts the Dataplane: the new one adopts the pinned maps and
// tcx links, and Remove detaches everything.
func TestAdopt(t *testing.T) {
	w := testbed.New(t, 1)
	s := w.Servers[0]
	c := w.AddContainer(s, netip.MustParsePrefix("10.1.0.2/24"), netip.MustParseAddr("10.1.0.1"))
	path := testbed.BPFFS(t) + "/daoli"
	linkID := func(d *Dataplane) link.ID {
		l, err := link.LoadPinnedLink(filepath.Join(path, "links", fmt.Sprint(c.HostIfindex)), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	state := State{Servers: []Server{{IP: s.IP}}, Endpoints: []Endpoint{{ID: 1, Network: 7, IP: c.IP, MAC: c.MAC,
		Server: s.IP, WireBase: 32768, IdentityBase: 1024, Ifindex: c.HostIfindex}}}

	d1, err := New(Config{BPFFSPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Do(func() error { return d1.AttachEndpoint(c.HostIfindex) }); err != nil {
		t.Fatal(err)
	}
	if err := d1.Apply(state); err != nil {
		t.Fatal(err)
	}
	id1 := linkID(d1)
	d1.Close()

	d2, err := New(Config{BPFFSPath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	var n uint32
	if err := d2.objs.EndpointByIfindex.Lookup(uint32(c.HostIfindex), &n); err != nil || n != 1 {
		t.Errorf("adopted endpoint_by_ifindex[%d] = %d, %v; want 1", c.HostIfindex, n, err)
	}
	if err := s.Do(func() error { return d2.AttachEndpoint(c.HostIfindex) }); err != nil {
		t.Fatal(err)
	}
	if id2 := linkID(d2); id2 != id1 {
		t.Errorf("re-attach created link %d, want the pinned link %d adopted", id2, id1)
	}
	if err := d2.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("pin directory after Remove: %v, want it gone", err)
	}
	var attached int
	err = s.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: c.HostIfindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		attached = len(res.Programs)
		return nil
	})
	if err != nil || attached != 0 {
		t.Errorf("after Remove: %d programs on %s (%v), want 0", attached, c.HostIfname, err)
	}
}
