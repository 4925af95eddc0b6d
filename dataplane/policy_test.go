package dataplane

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

var (
	ipY  = netip.MustParseAddr("10.1.0.77")
	macY = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
)

const idY = 20

// withY is the fixture plus Y, network 8's 10.1.0.77 serving 443/tcp on
// server B, and policies. On server B, Y (not S) sits at loopbackIfindex,
// so from_container runs as Y there.
func withY(local netip.Addr, ps ...Policy) State {
	s := fixture(local)
	s.Endpoints = slices.Clone(s.Endpoints)
	y := Endpoint{ID: idY, Network: 8, IP: ipY, MAC: macY, Server: serverB, WireBase: 34048, IdentityBase: 1024,
		Ports: []Port{{443, TCP}}}
	if local == serverB {
		s.Endpoints[1].Ifindex = 0
		y.Ifindex = loopbackIfindex
	}
	s.Endpoints = append(s.Endpoints, y)
	s.Policies = ps
	return s
}

func TestPolicy(t *testing.T) {
	a, b := newDataplane(t), newDataplane(t)
	setUplink(t, a, uplinkIfindex)
	setUplink(t, b, uplinkIfindex)
	apply := func(d *Dataplane, local netip.Addr, ps ...Policy) {
		t.Helper()
		if err := d.Apply(withY(local, ps...)); err != nil {
			t.Fatal(err)
		}
	}
	shot := func(t *testing.T, d *Dataplane, prog string, in []byte, reason DropReason) {
		t.Helper()
		p := d.objs.FromContainer
		if prog == "from_network" {
			p = d.objs.FromNetwork
		}
		before := drops(t, d)
		if ret, _ := run(t, p, in); ret != actShot {
			t.Fatalf("%s: verdict %d, want shot", prog, ret)
		}
		if got := drops(t, d)[reason] - before[reason]; got != 1 {
			t.Errorf("%s rose by %d, want 1; drops %v", reason, got, mustDrops(d))
		}
	}
	allow78 := Policy{From: 7, To: 8, Allow: true}

	t.Run("no policy: the other network is invisible", func(t *testing.T) {
		apply(a, serverA)
		shot(t, a, "from_container", flowTo(ipY, 443, 42000).bytes(t), DropNoService)
	})
	t.Run("denied", func(t *testing.T) {
		apply(a, serverA, Policy{From: 7, To: 8, Allow: false})
		shot(t, a, "from_container", flowTo(ipY, 443, 42001).bytes(t), DropPolicy)
	})
	t.Run("network isolated from itself", func(t *testing.T) {
		apply(a, serverA, Policy{From: 7, To: 7, Allow: false})
		shot(t, a, "from_container", flowTo(ipS, 80, 42002).bytes(t), DropPolicy)
	})
	t.Run("own network shadows the other", func(t *testing.T) {
		// X of network 8 serves ipS:80 too; C must reach S.
		apply(a, serverA, Policy{From: 7, To: 8, Allow: true})
		w := decode(t, mustRedirect(t, a, a.objs.FromContainer, flowTo(ipS, 80, 42003).bytes(t)))
		if w.dport != 32768 {
			t.Errorf("wire ServerPort %d, want S's 32768 (X's is 33024)", w.dport)
		}
	})
	t.Run("allowed round trip", func(t *testing.T) {
		apply(a, serverA, allow78)
		apply(b, serverB, allow78)
		wire := mustRedirect(t, a, a.objs.FromContainer, flowTo(ipY, 443, 42004).bytes(t))
		if w := decode(t, wire); w.dst != serverB || w.dport != 34048 {
			t.Errorf("wire to %s:%d, want %s:34048", w.dst, w.dport, serverB)
		}
		atY := decode(t, mustRedirect(t, b, b.objs.FromNetwork, wire))
		if atY.src != ipC || atY.dst != ipY || atY.dport != 443 {
			t.Errorf("at Y: %s:%d -> %s:%d, want %s:* -> %s:443", atY.src, atY.sport, atY.dst, atY.dport, ipC, ipY)
		}
		// Y answers C's identity: network 8 sees C's identity blocks
		// because 7 may reach 8.
		resp := pkt{srcMAC: macY, dstMAC: DefaultGatewayMAC, src: ipY, dst: ipC, proto: layers.IPProtocolTCP,
			sport: 443, dport: atY.sport}
		wireBack := mustRedirect(t, b, b.objs.FromContainer, resp.bytes(t))
		atC := decode(t, mustRedirect(t, a, a.objs.FromNetwork, wireBack))
		if atC.src != ipY || atC.sport != 443 || atC.dst != ipC || atC.dport != 42004 {
			t.Errorf("at C: %s:%d -> %s:%d, want %s:443 -> %s:42004", atC.src, atC.sport, atC.dst, atC.dport, ipY, ipC)
		}

		// Without the policy, the backend's server drops the flow, and
		// Y cannot address C at all.
		apply(b, serverB)
		shot(t, b, "from_network", wire, DropPolicy)
		shot(t, b, "from_container", resp.bytes(t), DropNoService)
	})
	t.Run("applied as a diff", func(t *testing.T) {
		apply(a, serverA, allow78)
		key := daoliServiceKey{NetId: 7, Ip: addr(ipY), Port: 443, Proto: uint8(TCP)}
		var svc daoliService
		if err := a.objs.Services.Lookup(key, &svc); err != nil || svc.NetId != 8 {
			t.Errorf("network 7's view of %s:443: %+v, %v; want network 8's service", ipY, svc, err)
		}
		apply(a, serverA)
		if err := a.objs.Services.Lookup(key, &svc); err == nil {
			t.Errorf("network 7 still sees %s:443 after the policy went", ipY)
		}
		var k daoliPolicyKey
		var v daoliPolicyVerdict
		if it := a.objs.Policies.Iterate(); it.Next(&k, &v) {
			t.Errorf("policy %+v still in the map", k)
		}
	})
}

// TestExport: a Policy with Only shows network 8's Y:443 in network 7 and
// nothing else of network 8: Y's other port is invisible at the client's
// server, and a packet crafted straight to its wire port is dropped at
// Y's server.
func TestExport(t *testing.T) {
	a, b := newDataplane(t), newDataplane(t)
	setUplink(t, a, uplinkIfindex)
	setUplink(t, b, uplinkIfindex)
	export := Policy{From: 7, To: 8, Allow: true, Only: []ServiceRef{{ipY, Port{443, TCP}}}}
	apply := func(d *Dataplane, local netip.Addr, ps ...Policy) {
		t.Helper()
		s := withY(local, ps...)
		s.Endpoints[len(s.Endpoints)-1].Ports = []Port{{443, TCP}, {8443, TCP}}
		if err := d.Apply(s); err != nil {
			t.Fatal(err)
		}
	}
	apply(a, serverA, export)
	apply(b, serverB, export)

	wire := mustRedirect(t, a, a.objs.FromContainer, flowTo(ipY, 443, 43000).bytes(t))
	atY := decode(t, mustRedirect(t, b, b.objs.FromNetwork, wire))
	if atY.src != ipC || atY.dst != ipY || atY.dport != 443 {
		t.Errorf("at Y: %s:%d -> %s:%d, want %s:* -> %s:443", atY.src, atY.sport, atY.dst, atY.dport, ipC, ipY)
	}
	resp := pkt{srcMAC: macY, dstMAC: DefaultGatewayMAC, src: ipY, dst: ipC, proto: layers.IPProtocolTCP, sport: 443, dport: atY.sport}
	atC := decode(t, mustRedirect(t, a, a.objs.FromNetwork, mustRedirect(t, b, b.objs.FromContainer, resp.bytes(t))))
	if atC.src != ipY || atC.sport != 443 || atC.dport != 43000 {
		t.Errorf("the answer at C: %s:%d -> :%d, want %s:443 -> :43000", atC.src, atC.sport, atC.dport, ipY)
	}

	dropped := func(d *Dataplane, prog *ebpf.Program, in []byte, reason DropReason) {
		t.Helper()
		before := drops(t, d)
		if ret, _ := run(t, prog, in); ret != actShot {
			t.Fatalf("verdict %d, want shot", ret)
		}
		if got := drops(t, d)[reason] - before[reason]; got != 1 {
			t.Errorf("%s rose by %d, want 1; drops %v", reason, got, mustDrops(d))
		}
	}
	dropped(a, a.objs.FromContainer, flowTo(ipY, 8443, 43001).bytes(t), DropNoService)
	w := decode(t, wire)
	crafted := pkt{srcMAC: w.srcMAC, dstMAC: w.dstMAC, src: w.src, dst: w.dst, proto: layers.IPProtocolTCP,
		sport: w.sport, dport: w.dport + 1}
	dropped(b, b.objs.FromNetwork, crafted.bytes(t), DropPolicy)

	var k daoliExportKey
	var v uint8
	if it := a.objs.Exports.Iterate(); !it.Next(&k, &v) || k.From != 7 || k.To != 8 || k.Port != 443 || it.Next(&k, &v) {
		t.Errorf("the exports map does not hold exactly 7->8 %s:443", ipY)
	}
	apply(a, serverA)
	if it := a.objs.Exports.Iterate(); it.Next(&k, &v) {
		t.Errorf("export %+v still in the map after its policy went", k)
	}
	for _, bad := range []Policy{
		{From: 7, To: 8, Allow: false, Only: export.Only},
		{From: 7, To: 8, Allow: true, Only: []ServiceRef{{ipY, Port{443, TCP}}, {ipY, Port{443, TCP}}}},
		{From: 7, To: 8, Allow: true, Only: []ServiceRef{{ipY, Port{0, TCP}}}},
	} {
		if err := a.Apply(withY(serverA, bad)); !errors.Is(err, ErrInvalidState) {
			t.Errorf("policy %+v: %v, want ErrInvalidState", bad, err)
		}
	}
}
