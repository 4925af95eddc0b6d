package dataplane

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// Addresses outside every network of the fixture.
var (
	ipOut    = netip.MustParseAddr("203.0.113.10") // a host outside
	ipOut2   = netip.MustParseAddr("203.0.113.11")
	ipRouter = netip.MustParseAddr("203.0.113.1") // a router outside
	ipNear   = netip.MustParseAddr("198.51.100.7")
	macPeer  = macAny // the next hop's MAC, as the uplink sees it
)

// outTCP is a segment C sends to an address outside; inFrom a packet an
// outside address sends to a port of server A.
func outTCP(dst netip.Addr, dport, sport uint16, syn bool) pkt {
	return pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: dst, proto: layers.IPProtocolTCP,
		sport: sport, dport: dport, syn: syn}
}

func inFrom(proto layers.IPProtocol, src netip.Addr, sport, dport uint16) pkt {
	return pkt{srcMAC: macPeer, dstMAC: macC, src: src, dst: serverA, proto: proto, sport: sport, dport: dport}
}

// TestEgress follows flows from C to addresses outside every network
// through the programs: they leave as ServerIP_A:wire_C+offset, their
// answers come back to C's own socket, and what may not leave does not.
func TestEgress(t *testing.T) {
	a := loadServer(t, serverA)
	shot := func(t *testing.T, fromNetwork bool, in []byte, reason DropReason) {
		t.Helper()
		prog := a.objs.FromContainer
		if fromNetwork {
			prog = a.objs.FromNetwork
		}
		before := drops(t, a)
		if ret, _ := run(t, prog, bytes.Clone(in)); ret != actShot {
			t.Fatalf("verdict %d, want shot (%s); drops %v", ret, reason, drops(t, a))
		}
		if got := drops(t, a)[reason] - before[reason]; got != 1 {
			t.Errorf("%s rose by %d, want 1; drops %v", reason, got, drops(t, a))
		}
	}
	inWire := func(port uint16) bool { return port >= 32768 && port < 32768+256 }

	t.Run("TCP", func(t *testing.T) {
		syn := outTCP(ipOut, 80, 40001, true)
		w := decode(t, mustRedirect(t, a, a.objs.FromContainer, syn.bytes(t)))
		if w.src != serverA || w.dst != ipOut || w.dport != 80 || !inWire(w.sport) || w.ttl != 63 {
			t.Fatalf("on the wire %s:%d -> %s:%d TTL %d, want %s:[32768,33024) -> %s:80 TTL 63",
				w.src, w.sport, w.dst, w.dport, w.ttl, serverA, ipOut)
		}
		ack := outTCP(ipOut, 80, 40001, false)
		if w2 := decode(t, mustRedirect(t, a, a.objs.FromContainer, ack.bytes(t))); w2.sport != w.sport {
			t.Errorf("the flow's next segment left from port %d, its SYN from %d", w2.sport, w.sport)
		}
		synack := inFrom(layers.IPProtocolTCP, ipOut, 80, w.sport)
		synack.syn = true
		r := decode(t, mustRedirect(t, a, a.objs.FromNetwork, synack.bytes(t)))
		if r.src != ipOut || r.sport != 80 || r.dst != ipC || r.dport != 40001 || r.ttl != 63 {
			t.Errorf("into C %s:%d -> %s:%d TTL %d, want %s:80 -> %s:40001 TTL 63", r.src, r.sport, r.dst, r.dport, r.ttl, ipOut, ipC)
		}
		if r.dstMAC.String() != macC.String() || r.srcMAC.String() != DefaultGatewayMAC.String() {
			t.Errorf("into C MACs %s -> %s, want %s -> %s", r.srcMAC, r.dstMAC, DefaultGatewayMAC, macC)
		}
		// Another outside destination is another flow, but may share
		// the offset: the 5-tuple on the wire differs.
		other := decode(t, mustRedirect(t, a, a.objs.FromContainer, outTCP(ipOut2, 80, 40002, true).bytes(t)))
		if !inWire(other.sport) {
			t.Errorf("second flow left from port %d, want C's wire block", other.sport)
		}
	})

	t.Run("TCP segment of an unknown flow is reset", func(t *testing.T) {
		mid := outTCP(ipOut2, 443, 40100, false)
		mid.ackNum = 5000
		before := drops(t, a)
		out := mustRedirect(t, a, a.objs.FromContainer, mid.bytes(t))
		expectReset(t, out, mid, false, 5000, 0)
		if got := drops(t, a)[DropCTMiss] - before[DropCTMiss]; got != 1 {
			t.Errorf("ct_miss rose by %d, want 1", got)
		}
	})

	t.Run("UDP", func(t *testing.T) {
		q := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipOut, proto: layers.IPProtocolUDP,
			sport: 5000, dport: 53, payload: []byte("question")}
		w := decode(t, mustRedirect(t, a, a.objs.FromContainer, q.bytes(t)))
		if w.src != serverA || w.dst != ipOut || w.dport != 53 || !inWire(w.sport) {
			t.Fatalf("on the wire %s:%d -> %s:%d, want %s:[32768,33024) -> %s:53", w.src, w.sport, w.dst, w.dport, serverA, ipOut)
		}
		ans := inFrom(layers.IPProtocolUDP, ipOut, 53, w.sport)
		ans.payload = []byte("answer")
		r := decode(t, mustRedirect(t, a, a.objs.FromNetwork, ans.bytes(t)))
		if r.src != ipOut || r.sport != 53 || r.dst != ipC || r.dport != 5000 || string(r.payload) != "answer" {
			t.Errorf("into C %s:%d -> %s:%d %q, want %s:53 -> %s:5000 \"answer\"", r.src, r.sport, r.dst, r.dport, r.payload, ipOut, ipC)
		}
		// The same port from another outside address is no flow of C.
		shot(t, true, inFrom(layers.IPProtocolUDP, ipOut2, 53, w.sport).bytes(t), DropCTMiss)
	})

	t.Run("outside TCP to a port of no flow is reset", func(t *testing.T) {
		in := inFrom(layers.IPProtocolTCP, ipOut2, 80, 32768+200)
		in.ackNum = 777
		expectReset(t, mustRedirect(t, a, a.objs.FromNetwork, in.bytes(t)), in, false, 777, 0)
	})

	t.Run("outside TCP to a stale wire port is reset", func(t *testing.T) {
		// 36000 is in the wire range, but no block of server A holds it:
		// its container moved away. A server's segment may be in flight
		// to it and is dropped (TestFromNetwork); an outside peer's
		// flow cannot follow, and is told at once.
		in := inFrom(layers.IPProtocolTCP, ipOut, 80, 36000)
		in.ackNum = 4242
		before := drops(t, a)
		expectReset(t, mustRedirect(t, a, a.objs.FromNetwork, in.bytes(t)), in, false, 4242, 0)
		if got := drops(t, a)[DropStaleWire] - before[DropStaleWire]; got != 1 {
			t.Errorf("stale_wire rose by %d, want 1", got)
		}
	})

	t.Run("ICMP echo", func(t *testing.T) {
		ping := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipOut, proto: layers.IPProtocolICMPv4,
			icmpType: layers.ICMPv4TypeEchoRequest, sport: 0x1234, ipID: 0x4242}
		w := decode(t, mustRedirect(t, a, a.objs.FromContainer, ping.bytes(t)))
		if w.src != serverA || w.dst != ipOut || !inWire(w.sport) || w.icmpCode != 0 || w.ipID != 0x4242 {
			t.Fatalf("on the wire %s -> %s id %d code %d ip id %#x, want %s -> %s, id in C's wire block, code 0, ip id 0x4242",
				w.src, w.dst, w.sport, w.icmpCode, w.ipID, serverA, ipOut)
		}
		pong := inFrom(layers.IPProtocolICMPv4, ipOut, w.sport, 0)
		pong.icmpType = layers.ICMPv4TypeEchoReply
		r := decode(t, mustRedirect(t, a, a.objs.FromNetwork, pong.bytes(t)))
		if r.src != ipOut || r.dst != ipC || r.sport != 0x1234 || r.icmpType != layers.ICMPv4TypeEchoReply {
			t.Errorf("into C %s -> %s id %#x type %d, want %s -> %s id 0x1234 echo reply", r.src, r.dst, r.sport, r.icmpType, ipOut, ipC)
		}
		// An echo reply of no flow is the host's own: it passes.
		stray := inFrom(layers.IPProtocolICMPv4, ipOut2, w.sport, 0)
		stray.icmpType = layers.ICMPv4TypeEchoReply
		if ret, out := run(t, a.objs.FromNetwork, stray.bytes(t)); ret != actOK || !bytes.Equal(out, stray.bytes(t)) {
			t.Errorf("stray echo reply: verdict %d (want ok), changed %t", ret, !bytes.Equal(out, stray.bytes(t)))
		}
	})

	t.Run("what never leaves", func(t *testing.T) {
		mdns := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: netip.MustParseAddr("224.0.0.251"),
			proto: layers.IPProtocolUDP, sport: 5353, dport: 5353}
		shot(t, false, mdns.bytes(t), DropNoService)
		shot(t, false, outTCP(netip.MustParseAddr("127.0.0.1"), 80, 40200, true).bytes(t), DropNoService)
		// An address of another network's subnet (network 8 overlaps 7,
		// so take one nobody serves) stays inside.
		shot(t, false, outTCP(netip.MustParseAddr("10.1.0.200"), 80, 40201, true).bytes(t), DropNoService)
		// A server's wire range belongs to the dataplane; its other ports
		// are the outside.
		shot(t, false, outTCP(serverB, 33000, 40202, true).bytes(t), DropEgressDenied)
		w := decode(t, mustRedirect(t, a, a.objs.FromContainer, outTCP(serverB, 22, 40203, true).bytes(t)))
		if w.src != serverA || w.dst != serverB || w.dport != 22 {
			t.Errorf("to server B's port 22: %s:%d -> %s:%d", w.src, w.sport, w.dst, w.dport)
		}
	})

	t.Run("egress limited to a prefix", func(t *testing.T) {
		established := outTCP(ipOut, 80, 40300, true)
		mustRedirect(t, a, a.objs.FromContainer, established.bytes(t))
		s := fixture(serverA)
		s.Networks[0].Egress = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		if err := a.Apply(s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Apply(fixture(serverA)) })
		shot(t, false, outTCP(ipOut, 80, 40301, true).bytes(t), DropEgressDenied)
		// The verdict holds for flows already open.
		established.syn = false
		shot(t, false, established.bytes(t), DropEgressDenied)
		w := decode(t, mustRedirect(t, a, a.objs.FromContainer, outTCP(ipNear, 80, 40302, true).bytes(t)))
		if w.dst != ipNear || w.src != serverA {
			t.Errorf("to %s: %s -> %s", ipNear, w.src, w.dst)
		}
	})

	t.Run("network without egress", func(t *testing.T) {
		s := fixture(serverA)
		s.Networks[0].Egress = nil
		if err := a.Apply(s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Apply(fixture(serverA)) })
		shot(t, false, outTCP(ipOut, 80, 40400, true).bytes(t), DropEgressDenied)
	})
}

// TestEgressICMPErrors: a router outside that cannot forward C's packet
// (frag needed) reaches C as an error about the packet C sent, and an
// error C sends about an outside host's datagram reaches that host as an
// error about the datagram it sent.
func TestEgressICMPErrors(t *testing.T) {
	a := loadServer(t, serverA)

	big := outTCP(ipOut, 80, 41000, true)
	big.payload = bytes.Repeat([]byte{7}, 64)
	frame := big.bytes(t)
	wire := mustRedirect(t, a, a.objs.FromContainer, bytes.Clone(frame))
	w := decode(t, wire)
	fragNeeded := icmpErr{srcMAC: macPeer, dstMAC: macC, src: ipRouter, dst: serverA,
		typ: uint8(icmpUnreach), code: uint8(codeFragNeeded), rest: 1400, quote: wire[14:]}
	e := decode(t, mustRedirect(t, a, a.objs.FromNetwork, fragNeeded.bytes(t)))
	if e.src != ipRouter || e.dst != ipC || e.icmpCode != uint8(codeFragNeeded) || e.icmpRest != 1400 {
		t.Errorf("into C: %s -> %s code %d rest %d, want %s -> %s frag needed, MTU 1400", e.src, e.dst, e.icmpCode, e.icmpRest, ipRouter, ipC)
	}
	expectQuote(t, quoteOf(t, e.payload), frame)

	q := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipOut, proto: layers.IPProtocolUDP, sport: 5001, dport: 53}
	w = decode(t, mustRedirect(t, a, a.objs.FromContainer, q.bytes(t)))
	sent := inFrom(layers.IPProtocolUDP, ipOut, 53, w.sport)
	sent.payload = []byte("late answer")
	asSent := sent.bytes(t)
	inC := mustRedirect(t, a, a.objs.FromNetwork, bytes.Clone(asSent))
	unreach := icmpErr{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipOut,
		typ: uint8(icmpUnreach), code: uint8(codePortUnreach), quote: inC[14:]}
	out := decode(t, mustRedirect(t, a, a.objs.FromContainer, unreach.bytes(t)))
	if out.src != serverA || out.dst != ipOut || out.icmpCode != uint8(codePortUnreach) {
		t.Errorf("on the wire: %s -> %s code %d, want %s -> %s port unreachable", out.src, out.dst, out.icmpCode, serverA, ipOut)
	}
	expectQuote(t, quoteOf(t, out.payload), asSent)
}
