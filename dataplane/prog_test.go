package dataplane

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// The unit-test world: network 7 has client C on server A, backend S on
// server B and backend L on server A; network 8 has X on server B with the
// same IP as S. Both networks are 10.1.0.0/24; network 7 may reach
// anywhere outside, network 8 nowhere.
var (
	serverA = netip.MustParseAddr("192.0.2.1")
	serverB = netip.MustParseAddr("192.0.2.2")
	ipC     = netip.MustParseAddr("10.1.0.2")
	ipS     = netip.MustParseAddr("10.1.0.9")
	ipL     = netip.MustParseAddr("10.1.0.20")
	ipGW    = netip.MustParseAddr("10.1.0.1")
	macC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0c}
	macS    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x05}
	macL    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macX    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x08}
	macAny  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xff}
)

const (
	idC, idS, idL, idX = 1, 2, 3, 4
	uplinkIfindex      = 99
	fakeIfindexL       = 77
)

// fixture is the State as server local sees it.
func fixture(local netip.Addr) State {
	ifindex := func(server netip.Addr, other int) int {
		if server != local {
			return 0
		}
		return other
	}
	return State{
		WirePorts: PortRange{First: 32768, Last: 36863},
		LocalIPs:  []netip.Addr{local},
		Servers:   []Server{{IP: serverA}, {IP: serverB}},
		// Network 7 reaches anywhere outside, network 8 nowhere.
		Networks: []Network{
			{ID: 7, Subnet: netip.MustParsePrefix("10.1.0.0/24"), Egress: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
			{ID: 8, Subnet: netip.MustParsePrefix("10.1.0.0/24")},
		},
		Endpoints: []Endpoint{
			{ID: idC, Network: 7, IP: ipC, MAC: macC, Server: serverA, WireBase: 32768, IdentityBase: 1024,
				Ifindex: ifindex(serverA, loopbackIfindex)},
			{ID: idS, Network: 7, IP: ipS, MAC: macS, Server: serverB, WireBase: 32768, IdentityBase: 1024,
				Ports: []Port{{80, TCP}, {53, UDP}}, Ifindex: ifindex(serverB, loopbackIfindex)},
			{ID: idL, Network: 7, IP: ipL, MAC: macL, Server: serverA, WireBase: 33024, IdentityBase: 1024,
				Ports: []Port{{8080, TCP}}, Ifindex: ifindex(serverA, fakeIfindexL)},
			{ID: idX, Network: 8, IP: ipS, MAC: macX, Server: serverB, WireBase: 33024, IdentityBase: 2048,
				Ports: []Port{{80, TCP}}},
		},
	}
}

func loadServer(t testing.TB, local netip.Addr) *Dataplane {
	t.Helper()
	d := newDataplane(t)
	if err := d.Apply(fixture(local)); err != nil {
		t.Fatal(err)
	}
	setUplink(t, d, uplinkIfindex)
	return d
}

// TestRoundTrip follows one packet and its answer through both servers:
// A from_container, B from_network, B from_container, A from_network.
func TestRoundTrip(t *testing.T) {
	a := loadServer(t, serverA)
	b := loadServer(t, serverB)
	for _, tc := range []struct {
		name      string
		proto     layers.IPProtocol
		port      uint16 // service port; 0 for ICMP
		portIndex uint16 // of the port among S's
	}{
		{"tcp", layers.IPProtocolTCP, 80, 0},
		{"udp", layers.IPProtocolUDP, 53, 1},
		{"icmp", layers.IPProtocolICMPv4, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			icmp := tc.proto == layers.IPProtocolICMPv4
			req := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipS, proto: tc.proto,
				sport: 40000, dport: tc.port, ipID: 4321, icmpType: layers.ICMPv4TypeEchoRequest,
				syn: true, payload: []byte("hello")}

			// 1. A, from_container: identity to wire.
			ret, wire := run(t, a.objs.FromContainer, req.bytes(t))
			if ret != actRedirect {
				t.Fatalf("A from_container: verdict %d, want redirect; drops %v", ret, drops(t, a))
			}
			w := decode(t, wire)
			if w.src != serverA || w.dst != serverB {
				t.Errorf("wire addresses %s -> %s, want %s -> %s", w.src, w.dst, serverA, serverB)
			}
			// A and B are routers: each takes its hop off the TTL.
			if w.ttl != 63 {
				t.Errorf("wire TTL %d, want 63", w.ttl)
			}
			clientWire := w.sport
			if clientWire < 32768 || clientWire >= 32768+256 {
				t.Errorf("wire client port %d, want within C's wire block [32768, 33024)", clientWire)
			}
			offset := clientWire - 32768
			serverWire := w.dport
			if icmp {
				serverWire = w.ipID
				if w.icmpCode != 0xda || w.icmpType != layers.ICMPv4TypeEchoRequest {
					t.Errorf("wire ICMP type/code %d/%#x, want echo request with code 0xda", w.icmpType, w.icmpCode)
				}
			}
			if want := 32768 + tc.portIndex; serverWire != want {
				t.Errorf("wire ServerPort %d, want %d", serverWire, want)
			}

			// The same flow keeps its offset.
			ret, again := run(t, a.objs.FromContainer, req.bytes(t))
			if ret != actRedirect || !equalBytes(again, wire) {
				t.Errorf("second packet of the flow: verdict %d, packet differs: %v", ret, !equalBytes(again, wire))
			}

			// 2. B, from_network: wire to identity, into S.
			ret, in := run(t, b.objs.FromNetwork, wire)
			if ret != actRedirect {
				t.Fatalf("B from_network: verdict %d, want redirect; drops %v", ret, drops(t, b))
			}
			s := decode(t, in)
			if s.ttl != 62 {
				t.Errorf("at S: TTL %d, want 62", s.ttl)
			}
			wantIdent := 1024 + offset
			if s.src != ipC || s.dst != ipS || s.sport != wantIdent || (!icmp && s.dport != tc.port) {
				t.Errorf("at S: %s:%d -> %s:%d, want %s:%d -> %s:%d", s.src, s.sport, s.dst, s.dport, ipC, wantIdent, ipS, tc.port)
			}
			if s.dstMAC.String() != macS.String() || s.srcMAC.String() != DefaultGatewayMAC.String() {
				t.Errorf("at S: MACs %s -> %s, want %s -> %s", s.srcMAC, s.dstMAC, DefaultGatewayMAC, macS)
			}
			if icmp && s.icmpCode != 0 {
				t.Errorf("at S: ICMP code %#x, want 0", s.icmpCode)
			}

			// 3. B, from_container: S answers the identity port.
			resp := pkt{srcMAC: macS, dstMAC: DefaultGatewayMAC, src: ipS, dst: ipC, proto: tc.proto,
				sport: tc.port, dport: wantIdent, ipID: 999, payload: []byte("world")}
			if icmp {
				resp.icmpType = layers.ICMPv4TypeEchoReply
				resp.sport = wantIdent
			}
			ret, wire2 := run(t, b.objs.FromContainer, resp.bytes(t))
			if ret != actRedirect {
				t.Fatalf("B from_container: verdict %d, want redirect; drops %v", ret, drops(t, b))
			}
			w2 := decode(t, wire2)
			gotServer, gotClient := w2.sport, w2.dport
			if icmp {
				gotServer, gotClient = w2.ipID, w2.sport
				if w2.icmpCode != 0xda {
					t.Errorf("wire reply ICMP code %#x, want 0xda", w2.icmpCode)
				}
			}
			if w2.src != serverB || w2.dst != serverA || gotServer != 32768+tc.portIndex || gotClient != clientWire {
				t.Errorf("wire reply %s:%d -> %s:%d, want %s:%d -> %s:%d", w2.src, gotServer, w2.dst, gotClient,
					serverB, 32768+tc.portIndex, serverA, clientWire)
			}

			// 4. A, from_network: back to what C dialled.
			ret, out := run(t, a.objs.FromNetwork, wire2)
			if ret != actRedirect {
				t.Fatalf("A from_network: verdict %d, want redirect; drops %v", ret, drops(t, a))
			}
			c := decode(t, out)
			gotC := c.dport
			if icmp {
				gotC = c.sport
				if c.icmpType != layers.ICMPv4TypeEchoReply || c.icmpCode != 0 {
					t.Errorf("at C: ICMP type/code %d/%d, want echo reply/0", c.icmpType, c.icmpCode)
				}
			}
			if c.src != ipS || c.dst != ipC || gotC != 40000 || (!icmp && c.sport != tc.port) {
				t.Errorf("at C: %s:%d -> %s:%d, want %s:%d -> %s:40000", c.src, c.sport, c.dst, gotC, ipS, tc.port, ipC)
			}
			if c.dstMAC.String() != macC.String() || c.srcMAC.String() != DefaultGatewayMAC.String() {
				t.Errorf("at C: MACs %s -> %s, want %s -> %s", c.srcMAC, c.dstMAC, DefaultGatewayMAC, macC)
			}
		})
	}
}

func TestFromContainer(t *testing.T) {
	a := loadServer(t, serverA)
	tcp := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipS, proto: layers.IPProtocolTCP,
		sport: 40001, dport: 80, syn: true}
	with := func(f func(*pkt)) []byte {
		p := tcp
		f(&p)
		return p.bytes(t)
	}
	truncated := tcp.bytes(t)[:14+20+10]
	ipv6 := tcp.bytes(t)
	ipv6[12], ipv6[13] = 0x86, 0xdd

	for _, tc := range []struct {
		name    string
		in      []byte
		verdict uint32
		drop    DropReason // counted when verdict is shot
	}{
		{"no service on port", with(func(p *pkt) { p.dport = 81 }), actShot, DropNoService},
		{"no service on address", with(func(p *pkt) { p.dst = netip.MustParseAddr("10.1.0.99") }), actShot, DropNoService},
		{"spoofed IP", with(func(p *pkt) { p.src = ipL }), actShot, DropSpoofed},
		{"spoofed MAC", with(func(p *pkt) { p.srcMAC = macAny }), actShot, DropSpoofed},
		{"IPv6", ipv6, actShot, DropNotIPv4},
		{"fragment", with(func(p *pkt) { p.flags = layers.IPv4MoreFragments }), actShot, DropFragment},
		{"truncated TCP", truncated, actShot, DropMalformed},
		{"IPv4 header only", tcp.bytes(t)[:14+20], actShot, DropMalformed},
		{"ICMP unreachable", with(func(p *pkt) {
			p.proto, p.icmpType = layers.IPProtocolICMPv4, layers.ICMPv4TypeDestinationUnreachable
		}), actShot, DropUnsupported},
		{"TTL 1", with(func(p *pkt) { p.ttl = 1 }), actShot, DropTTL},
		{"ARP probe", arpRequest(t, macC, netip.IPv4Unspecified(), ipC), actShot, DropARP},
		{"ARP for itself", arpRequest(t, macC, ipC, ipC), actShot, DropARP},
		{"ARP spoofed", arpRequest(t, macC, ipL, ipGW), actShot, DropSpoofed},
		{"to local backend", with(func(p *pkt) { p.dst, p.dport = ipL, 8080 }), actRedirect, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := drops(t, a)
			ret, out := run(t, a.objs.FromContainer, tc.in)
			if ret != tc.verdict {
				t.Fatalf("verdict %d, want %d; drops %v", ret, tc.verdict, drops(t, a))
			}
			if ret == actShot {
				if got := drops(t, a)[tc.drop] - before[tc.drop]; got != 1 {
					t.Errorf("drop counter %s rose by %d, want 1", tc.drop, got)
				}
				return
			}
			// Same server: only the identity port and the MACs change.
			s := decode(t, out)
			if s.ttl != 63 {
				t.Errorf("at L: TTL %d, want 63 (one hop)", s.ttl)
			}
			if s.src != ipC || s.dst != ipL || s.dport != 8080 || s.sport < 1024 || s.sport >= 1024+256 {
				t.Errorf("at L: %s:%d -> %s:%d, want %s:[1024,1280) -> %s:8080", s.src, s.sport, s.dst, s.dport, ipC, ipL)
			}
			if s.dstMAC.String() != macL.String() || s.srcMAC.String() != DefaultGatewayMAC.String() {
				t.Errorf("at L: MACs %s -> %s, want %s -> %s", s.srcMAC, s.dstMAC, DefaultGatewayMAC, macL)
			}
		})
	}
}

func TestARPReply(t *testing.T) {
	a := loadServer(t, serverA)
	ret, out := run(t, a.objs.FromContainer, arpRequest(t, macC, ipC, ipGW))
	if ret != actRedirect {
		t.Fatalf("verdict %d, want redirect (back out of the same interface); drops %v", ret, drops(t, a))
	}
	p := decodeARP(t, out)
	if p.Operation != layers.ARPReply ||
		net.HardwareAddr(p.SourceHwAddress).String() != DefaultGatewayMAC.String() ||
		net.IP(p.SourceProtAddress).String() != ipGW.String() ||
		net.HardwareAddr(p.DstHwAddress).String() != macC.String() ||
		net.IP(p.DstProtAddress).String() != ipC.String() {
		t.Errorf("ARP reply %+v: want %s is-at %s, to %s/%s", p, ipGW, DefaultGatewayMAC, ipC, macC)
	}
}

func decodeARP(t *testing.T, data []byte) *layers.ARP {
	t.Helper()
	var eth layers.Ethernet
	var arp layers.ARP
	if err := eth.DecodeFromBytes(data, nil); err != nil {
		t.Fatal(err)
	}
	if err := arp.DecodeFromBytes(eth.Payload, nil); err != nil {
		t.Fatal(err)
	}
	if eth.DstMAC.String() != macC.String() || eth.SrcMAC.String() != DefaultGatewayMAC.String() {
		t.Errorf("ARP reply frame %s -> %s, want %s -> %s", eth.SrcMAC, eth.DstMAC, DefaultGatewayMAC, macC)
	}
	return &arp
}

func TestFromNetwork(t *testing.T) {
	a := loadServer(t, serverA)
	wireTCP := pkt{srcMAC: macAny, dstMAC: macAny, src: serverB, dst: serverA, proto: layers.IPProtocolTCP,
		sport: 32768 + 7, dport: 33024, syn: true}
	with := func(f func(*pkt)) []byte {
		p := wireTCP
		f(&p)
		return p.bytes(t)
	}
	arp := arpRequest(t, macAny, serverB, serverA)
	ipv6 := wireTCP.bytes(t)
	ipv6[12], ipv6[13] = 0x86, 0xdd

	for _, tc := range []struct {
		name    string
		in      []byte
		verdict uint32
		drop    DropReason
	}{
		// Not ours: must come out byte-identical.
		{"host TCP", with(func(p *pkt) { p.dport = 22 }), actOK, 0},
		{"host UDP below the blocks", with(func(p *pkt) { p.proto, p.dport = layers.IPProtocolUDP, 5353 }), actOK, 0},
		{"host ping", with(func(p *pkt) {
			p.proto, p.icmpType, p.ipID, p.sport = layers.IPProtocolICMPv4, layers.ICMPv4TypeEchoRequest, 33024, 32768
		}), actOK, 0},
		{"ARP", arp, actOK, 0},
		{"IPv6", ipv6, actOK, 0},
		{"truncated", wireTCP.bytes(t)[:14+20+4], actOK, 0},
		{"fragment", with(func(p *pkt) { p.fragOffset = 100 }), actOK, 0},
		{"other server IP", with(func(p *pkt) { p.dst = netip.MustParseAddr("192.0.2.77") }), actOK, 0},
		// Ours but wrong.
		{"unknown peer server", with(func(p *pkt) { p.src = netip.MustParseAddr("192.0.2.9") }), actShot, DropUnknownPeer},
		{"peer on its served port", with(func(p *pkt) { p.sport = 32768 }), actShot, DropUnknownPeer},
		{"peer of another network", with(func(p *pkt) { p.sport = 33024 + 5 }), actShot, DropPolicy},
		{"wrong protocol", with(func(p *pkt) { p.proto = layers.IPProtocolUDP }), actShot, DropNoService},
		{"reply without conntrack", with(func(p *pkt) { p.sport, p.dport = 32768, 32768+100 }), actShot, DropCTMiss},
		{"reply from a port the peer does not serve", with(func(p *pkt) { p.dport = 32768 + 100 }), actShot, DropUnknownPeer},
		{"TTL 1", with(func(p *pkt) { p.ttl = 1 }), actShot, DropTTL},
		// A wire port no block holds (its endpoint moved away) is still
		// ours: the host must not answer it with a reset.
		{"stale wire port", with(func(p *pkt) { p.dport = 36000 }), actShot, DropStaleWire},
		{"stale wire port, UDP", with(func(p *pkt) { p.proto, p.dport = layers.IPProtocolUDP, 32767+4096 }), actShot, DropStaleWire},
		// A backend that moved to server B answers from its new block
		// before this server knows it: dropped (the next segment finds
		// the block), never taken for an outside host and reset.
		{"reply from a wire port no block holds yet", with(func(p *pkt) { p.syn, p.sport, p.dport = false, 35000, 32768+100 }), actShot, DropStaleWire},
		{"past the wire range", with(func(p *pkt) { p.dport = 36864 }), actOK, 0},
		{"host TCP with TTL 1", with(func(p *pkt) { p.dport, p.ttl = 22, 1 }), actOK, 0},
		// Ours and right.
		{"to local backend", wireTCP.bytes(t), actRedirect, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := drops(t, a)
			in := append([]byte(nil), tc.in...)
			ret, out := run(t, a.objs.FromNetwork, in)
			if ret != tc.verdict {
				t.Fatalf("verdict %d, want %d; drops %v", ret, tc.verdict, drops(t, a))
			}
			switch ret {
			case actOK:
				if !equalBytes(out, tc.in) {
					t.Errorf("packet changed:\n got %x\nwant %x", out, tc.in)
				}
			case actShot:
				if got := drops(t, a)[tc.drop] - before[tc.drop]; got != 1 {
					t.Errorf("drop counter %s rose by %d, want 1", tc.drop, got)
				}
			case actRedirect:
				s := decode(t, out)
				if s.src != ipS || s.sport != 1024+7 || s.dst != ipL || s.dport != 8080 {
					t.Errorf("at L: %s:%d -> %s:%d, want %s:%d -> %s:8080", s.src, s.sport, s.dst, s.dport, ipS, 1024+7, ipL)
				}
				if s.dstMAC.String() != macL.String() {
					t.Errorf("at L: dst MAC %s, want %s", s.dstMAC, macL)
				}
			}
		})
	}
}
