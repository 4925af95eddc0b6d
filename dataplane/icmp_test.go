package dataplane

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// icmpErr describes an ICMP error to craft.
type icmpErr struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	typ, code      uint8
	rest           uint32 // ICMP bytes 4 to 7: a frag-needed's next-hop MTU
	ttl            uint8  // 0 means 64
	quote          []byte // the IPv4 packet the error is about, from its header on
}

func (e icmpErr) bytes(t testing.TB) []byte {
	t.Helper()
	ttl := e.ttl
	if ttl == 0 {
		ttl = 64
	}
	eth := &layers.Ethernet{SrcMAC: e.srcMAC, DstMAC: e.dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: ttl, Protocol: layers.IPProtocolICMPv4,
		SrcIP: e.src.AsSlice(), DstIP: e.dst.AsSlice()}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(e.typ, e.code),
		Id: uint16(e.rest >> 16), Seq: uint16(e.rest)}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, icmp, gopacket.Payload(e.quote)); err != nil {
		t.Fatalf("craft ICMP error: %v", err)
	}
	return buf.Bytes()
}

// quoted is the start of a packet as an ICMP error quotes it.
type quoted struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        layers.IPProtocol
	id           uint16
	l4           []byte // what the quote holds after the IPv4 header
}

// quoteOf decodes a quote (an ICMP error's payload) and checks that its
// IPv4 header checksum is right.
func quoteOf(t testing.TB, b []byte) quoted {
	t.Helper()
	var ip layers.IPv4
	if err := ip.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
		t.Fatalf("decode quote %x: %v", b, err)
	}
	hlen := int(ip.IHL) * 4
	if len(b) < hlen+8 {
		t.Fatalf("quote of %d bytes, want the IPv4 header and 8 more", len(b))
	}
	if sum := onesSum(b[:hlen]); sum != 0xffff {
		t.Errorf("quoted IPv4 header checksum %#04x is wrong (header sums to %#04x)", ip.Checksum, sum)
	}
	q := quoted{proto: ip.Protocol, id: ip.Id, l4: b[hlen:]}
	q.src, _ = netip.AddrFromSlice(ip.SrcIP)
	q.dst, _ = netip.AddrFromSlice(ip.DstIP)
	q.sport = binary.BigEndian.Uint16(b[hlen:])
	q.dport = binary.BigEndian.Uint16(b[hlen+2:])
	return q
}

func onesSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// expectQuote checks that q quotes frame, the packet as some hop saw it:
// same addresses, IP id and protocol, and byte for byte the same L4 header
// and payload as far as the quote reaches, checksum included. TTL and the
// IPv4 checksum may differ (every hop changes them).
func expectQuote(t testing.TB, q quoted, frame []byte) {
	t.Helper()
	want := quoteOf(t, frame[14:])
	if q.src != want.src || q.dst != want.dst || q.proto != want.proto || q.id != want.id {
		t.Errorf("quote %s -> %s proto %d id %d, want %s -> %s proto %d id %d",
			q.src, q.dst, q.proto, q.id, want.src, want.dst, want.proto, want.id)
	}
	if len(q.l4) > len(want.l4) || !bytes.Equal(q.l4, want.l4[:len(q.l4)]) {
		t.Errorf("quoted L4 %s:%d -> %s:%d\n  %x\nwant %s:%d -> %s:%d\n  %x",
			q.src, q.sport, q.dst, q.dport, q.l4, want.src, want.sport, want.dst, want.dport, want.l4)
	}
}

const (
	icmpUnreach       = layers.ICMPv4TypeDestinationUnreachable
	icmpTimeExceeded  = layers.ICMPv4TypeTimeExceeded
	codePortUnreach   = layers.ICMPv4CodePort
	codeFragNeeded    = layers.ICMPv4CodeFragmentationNeeded
	codeTTLExceeded   = layers.ICMPv4CodeTTLExceeded
	routerOfTheFabric = "192.0.2.254"
)

// TestICMPErrors follows ICMP errors about a flow of C (server A) to S
// (server B) through the rewrite: an error a router sends about a wire
// packet reaches C as the error about the packet C sent, and an error a
// container sends reaches its peer as the error about the packet the peer
// sent. Every checksum, the quoted ones included, must be right.
func TestICMPErrors(t *testing.T) {
	a := loadServer(t, serverA)
	b := loadServer(t, serverB)
	router := netip.MustParseAddr(routerOfTheFabric)
	for _, tc := range []struct {
		name  string
		proto layers.IPProtocol
		port  uint16
		sport uint16
	}{
		{"tcp", layers.IPProtocolTCP, 80, 40100},
		{"udp", layers.IPProtocolUDP, 53, 40101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The flow: C's request, on the wire, at S; S's reply, on
			// the wire, at C.
			req := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipS, proto: tc.proto,
				sport: tc.sport, dport: tc.port, ipID: 77, payload: []byte("a request long enough to quote")}
			atC := req.bytes(t)
			wire := mustRedirect(t, a, a.objs.FromContainer, atC)
			atS := mustRedirect(t, b, b.objs.FromNetwork, wire)
			ident := decode(t, atS).sport
			resp := pkt{srcMAC: macS, dstMAC: DefaultGatewayMAC, src: ipS, dst: ipC, proto: tc.proto,
				sport: tc.port, dport: ident, ipID: 88, payload: []byte("a reply long enough to quote too")}
			fromS := resp.bytes(t)
			wireBack := mustRedirect(t, b, b.objs.FromContainer, fromS)
			back := mustRedirect(t, a, a.objs.FromNetwork, wireBack)

			// intoC checks an error as C must get it: from S, about
			// the request C sent.
			intoC := func(t *testing.T, out []byte, typ, code uint8, rest uint32, ttl uint8) {
				t.Helper()
				e := decode(t, out)
				if e.src != ipS || e.dst != ipC || e.icmpType != typ || e.icmpCode != code || e.icmpRest != rest {
					t.Errorf("at C: %s -> %s ICMP %d/%d rest %#x, want %s -> %s ICMP %d/%d rest %#x",
						e.src, e.dst, e.icmpType, e.icmpCode, e.icmpRest, ipS, ipC, typ, code, rest)
				}
				if e.dstMAC.String() != macC.String() || e.srcMAC.String() != DefaultGatewayMAC.String() {
					t.Errorf("at C: MACs %s -> %s, want %s -> %s", e.srcMAC, e.dstMAC, DefaultGatewayMAC, macC)
				}
				if e.ttl != ttl {
					t.Errorf("at C: TTL %d, want %d", e.ttl, ttl)
				}
				expectQuote(t, quoteOf(t, e.payload), atC)
			}

			t.Run("frag-needed from a router", func(t *testing.T) {
				in := icmpErr{srcMAC: macAny, dstMAC: macAny, src: router, dst: serverA,
					typ: icmpUnreach, code: codeFragNeeded, rest: 1400, quote: wire[14:]}
				out := mustRedirect(t, a, a.objs.FromNetwork, in.bytes(t))
				intoC(t, out, icmpUnreach, codeFragNeeded, 1400, 63)
			})
			t.Run("time exceeded quoting 8 bytes of L4", func(t *testing.T) {
				in := icmpErr{srcMAC: macAny, dstMAC: macAny, src: router, dst: serverA,
					typ: icmpTimeExceeded, code: codeTTLExceeded, quote: wire[14 : 14+20+8]}
				out := mustRedirect(t, a, a.objs.FromNetwork, in.bytes(t))
				intoC(t, out, icmpTimeExceeded, codeTTLExceeded, 0, 63)
			})
			t.Run("unreachable from the backend", func(t *testing.T) {
				// S's kernel complains about the request it got; on
				// the wire it is B's complaint about the wire packet.
				in := icmpErr{srcMAC: macS, dstMAC: DefaultGatewayMAC, src: ipS, dst: ipC,
					typ: icmpUnreach, code: codePortUnreach, quote: atS[14:]}
				w := mustRedirect(t, b, b.objs.FromContainer, in.bytes(t))
				e := decode(t, w)
				if e.src != serverB || e.dst != serverA || e.ttl != 63 {
					t.Errorf("on the wire: %s -> %s TTL %d, want %s -> %s TTL 63", e.src, e.dst, e.ttl, serverB, serverA)
				}
				expectQuote(t, quoteOf(t, e.payload), wire)
				out := mustRedirect(t, a, a.objs.FromNetwork, w)
				intoC(t, out, icmpUnreach, codePortUnreach, 0, 62)
			})
			t.Run("unreachable from the client", func(t *testing.T) {
				// C's kernel complains about S's reply; S must get
				// the complaint about the reply it sent.
				in := icmpErr{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipS,
					typ: icmpUnreach, code: codePortUnreach, quote: back[14:]}
				w := mustRedirect(t, a, a.objs.FromContainer, in.bytes(t))
				e := decode(t, w)
				if e.src != serverA || e.dst != serverB {
					t.Errorf("on the wire: %s -> %s, want %s -> %s", e.src, e.dst, serverA, serverB)
				}
				expectQuote(t, quoteOf(t, e.payload), wireBack)
				out := mustRedirect(t, b, b.objs.FromNetwork, w)
				e = decode(t, out)
				if e.src != ipC || e.dst != ipS || e.dstMAC.String() != macS.String() {
					t.Errorf("at S: %s -> %s (MAC %s), want %s -> %s (MAC %s)", e.src, e.dst, e.dstMAC, ipC, ipS, macS)
				}
				expectQuote(t, quoteOf(t, e.payload), fromS)
			})

			// Errors that are not about a flow of ours.
			hostFlow := pkt{srcMAC: macAny, dstMAC: macAny, src: serverA, dst: serverB, proto: tc.proto,
				sport: 22, dport: 50000}
			echo := pkt{srcMAC: macAny, dstMAC: macAny, src: serverA, dst: serverB, proto: layers.IPProtocolICMPv4,
				icmpType: layers.ICMPv4TypeEchoRequest, icmpCode: 0xda, sport: 32768 + 5, ipID: 32768}
			noFlow := pkt{srcMAC: macAny, dstMAC: macAny, src: serverA, dst: serverB, proto: tc.proto,
				sport: 32768 + 200, dport: 32768}
			withOptions := bytes.Clone(wire[14:])
			withOptions[0] = 0x46
			fromRouter := func(quote []byte, ttl uint8) []byte {
				return icmpErr{srcMAC: macAny, dstMAC: macAny, src: router, dst: serverA, typ: icmpUnreach,
					code: codeFragNeeded, rest: 1400, ttl: ttl, quote: quote}.bytes(t)
			}
			fromC := func(quote []byte) []byte {
				return icmpErr{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipS, typ: icmpUnreach,
					code: codePortUnreach, quote: quote}.bytes(t)
			}
			otherFlow := bytes.Clone(back)
			binary.BigEndian.PutUint16(otherFlow[14+20:], tc.port+1) // a source port C never dialled
			for _, nc := range []struct {
				name    string
				prog    string
				in      []byte
				verdict uint32
				drop    DropReason
			}{
				{"host's own flow passes", "from_network", fromRouter(hostFlow.bytes(t)[14:], 0), actOK, 0},
				{"quoted echo passes", "from_network", fromRouter(echo.bytes(t)[14:], 0), actOK, 0},
				{"quoted IP options pass", "from_network", fromRouter(withOptions, 0), actOK, 0},
				{"no conntrack", "from_network", fromRouter(noFlow.bytes(t)[14:], 0), actShot, DropCTMiss},
				{"TTL 1", "from_network", fromRouter(wire[14:], 1), actShot, DropTTL},
				{"quote not to C", "from_container", fromC(atS[14:]), actShot, DropCTMiss},
				{"quote of no flow", "from_container", fromC(otherFlow[14:]), actShot, DropCTMiss},
				{"quote truncated", "from_container", fromC(back[14 : 14+20+4]), actShot, DropUnsupported},
			} {
				t.Run(nc.name, func(t *testing.T) {
					prog := a.objs.FromNetwork
					if nc.prog == "from_container" {
						prog = a.objs.FromContainer
					}
					before := drops(t, a)
					ret, out := run(t, prog, bytes.Clone(nc.in))
					if ret != nc.verdict {
						t.Fatalf("%s: verdict %d, want %d; drops %v", nc.prog, ret, nc.verdict, mustDrops(a))
					}
					if ret == actOK && !bytes.Equal(out, nc.in) {
						t.Errorf("passed packet changed:\n got %x\nwant %x", out, nc.in)
					}
					if ret == actShot {
						if got := drops(t, a)[nc.drop] - before[nc.drop]; got != 1 {
							t.Errorf("drop counter %s rose by %d, want 1", nc.drop, got)
						}
					}
				})
			}
		})
	}
}

// mustRedirect runs prog of d over in and fails unless it redirects.
func mustRedirect(t testing.TB, d *Dataplane, prog *ebpf.Program, in []byte) []byte {
	t.Helper()
	ret, out := run(t, prog, bytes.Clone(in))
	if ret != actRedirect {
		t.Fatalf("%s: verdict %d, want redirect; drops %v", prog, ret, mustDrops(d))
	}
	return out
}
