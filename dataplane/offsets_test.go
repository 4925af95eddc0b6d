package dataplane

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/daolinet/daoli/internal/testbed"
)

// smallBlocks loads server A of the unit-test world with 4-port blocks:
// C serves no port, so it has four flow offsets (0 to 3) per destination.
// S serves 80/tcp (index 0) and 53/udp (index 1).
func smallBlocks(t *testing.T) *Dataplane {
	t.Helper()
	a := newDataplane(t)
	setUplink(t, a, uplinkIfindex)
	s := fixture(serverA)
	s.BlockSize = 4
	if err := a.Apply(s); err != nil {
		t.Fatal(err)
	}
	return a
}

// oneOffset loads server A with 4-port blocks where C serves three ports:
// C has a single flow offset, 3, per destination.
func oneOffset(t *testing.T) *Dataplane {
	t.Helper()
	a := newDataplane(t)
	setUplink(t, a, uplinkIfindex)
	s := fixture(serverA)
	s.BlockSize = 4
	s.Endpoints[0].Ports = []Port{{7001, TCP}, {7002, TCP}, {7003, TCP}}
	if err := a.Apply(s); err != nil {
		t.Fatal(err)
	}
	return a
}

// from C to dst:dport from sport, as C's kernel sends it.
func fromC(proto layers.IPProtocol, dst netip.Addr, dport, sport uint16) pkt {
	p := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: dst, proto: proto, sport: sport, dport: dport}
	if proto == layers.IPProtocolICMPv4 {
		p.icmpType = layers.ICMPv4TypeEchoRequest
	}
	return p
}

// synFromC is a SYN from C to dst:dport.
func synFromC(dst netip.Addr, dport, sport uint16) pkt {
	p := fromC(layers.IPProtocolTCP, dst, dport, sport)
	p.syn = true
	return p
}

// fromS is a wire packet from S's ServerPort of index idx to C's wire
// port at offset off.
func fromS(proto layers.IPProtocol, idx, off uint16) pkt {
	return pkt{srcMAC: macAny, dstMAC: macAny, src: serverB, dst: serverA, proto: proto,
		sport: 32768 + idx, dport: 32768 + off}
}

// wireOffset runs p through A's from_container and returns the offset of
// C's wire port the flow left with.
func wireOffset(t *testing.T, a *Dataplane, p pkt) uint16 {
	t.Helper()
	w := decode(t, mustRedirect(t, a, a.objs.FromContainer, p.bytes(t)))
	if w.dst != serverB || w.sport < 32768 || w.sport >= 32768+4 {
		t.Fatalf("flow from %d left as %s:%d -> %s, want from C's wire block [32768, 32772) to %s",
			p.sport, w.src, w.sport, w.dst, serverB)
	}
	return w.sport - 32768
}

func tcpOf(t *testing.T, frame []byte) *layers.TCP {
	t.Helper()
	tcp, ok := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		t.Fatalf("no TCP in %x", frame)
	}
	return tcp
}

// expectReset checks that out is the reset a host without a listener
// sends back for segment in: swapped MACs, addresses and ports, RST|ACK
// acknowledging a SYN (ack set) or RST with sequence seq, no options, no
// payload, and every checksum right.
func expectReset(t *testing.T, out []byte, in pkt, ack bool, seq, ackNum uint32) {
	t.Helper()
	r := decode(t, out)
	if r.src != in.dst || r.dst != in.src || r.sport != in.dport || r.dport != in.sport {
		t.Errorf("reset %s:%d -> %s:%d, want %s:%d -> %s:%d", r.src, r.sport, r.dst, r.dport, in.dst, in.dport, in.src, in.sport)
	}
	if r.srcMAC.String() != in.dstMAC.String() || r.dstMAC.String() != in.srcMAC.String() {
		t.Errorf("reset MACs %s -> %s, want %s -> %s", r.srcMAC, r.dstMAC, in.dstMAC, in.srcMAC)
	}
	if r.ttl != 64 || len(out) != 14+20+20 {
		t.Errorf("reset TTL %d, %d bytes; want 64 and 54", r.ttl, len(out))
	}
	tcp := tcpOf(t, out)
	if !tcp.RST || tcp.ACK != ack || tcp.SYN || tcp.FIN || tcp.Seq != seq || tcp.Ack != ackNum || tcp.DataOffset != 5 || len(tcp.Payload) != 0 {
		t.Errorf("reset RST %t ACK %t SYN %t FIN %t seq %d ack %d doff %d payload %d; want RST, ACK %t, seq %d, ack %d, doff 5, no payload",
			tcp.RST, tcp.ACK, tcp.SYN, tcp.FIN, tcp.Seq, tcp.Ack, tcp.DataOffset, len(tcp.Payload), ack, seq, ackNum)
	}
}

// expectUnreachable checks that out is the ICMP port unreachable a host
// without a listener sends for datagram in (the frame C sent).
func expectUnreachable(t *testing.T, out []byte, in pkt, frame []byte) {
	t.Helper()
	e := decode(t, out)
	if e.src != in.dst || e.dst != in.src || e.icmpType != uint8(icmpUnreach) || e.icmpCode != uint8(codePortUnreach) {
		t.Errorf("answer %s -> %s ICMP %d/%d, want %s -> %s port unreachable", e.src, e.dst, e.icmpType, e.icmpCode, in.dst, in.src)
	}
	if e.srcMAC.String() != in.dstMAC.String() || e.dstMAC.String() != in.srcMAC.String() {
		t.Errorf("answer MACs %s -> %s, want %s -> %s", e.srcMAC, e.dstMAC, in.dstMAC, in.srcMAC)
	}
	expectQuote(t, quoteOf(t, e.payload), frame)
}

// TestOffsetPerDestination fills C's offsets towards one destination and
// checks that the next flow there is answered at once, while every other
// destination (another port of the same backend, another backend, ICMP
// echo) still has all its offsets, and that the replies of flows sharing
// an offset each reach their own socket.
func TestOffsetPerDestination(t *testing.T) {
	a := smallBlocks(t)
	full := func() uint64 { return drops(t, a)[DropOffsetsFull] }

	tcpPort := map[uint16]uint16{} // offset -> C's port
	for i := range uint16(4) {
		tcpPort[wireOffset(t, a, synFromC(ipS, 80, 50000+i))] = 50000 + i
	}
	if len(tcpPort) != 4 {
		t.Fatalf("4 flows to S:80 took offsets %v, want 4 distinct", tcpPort)
	}

	// The fifth flow to S:80 gets a reset from S:80, acknowledging its
	// SYN, straight back into C.
	before := full()
	syn := synFromC(ipS, 80, 50004)
	expectReset(t, mustRedirect(t, a, a.objs.FromContainer, syn.bytes(t)), syn, true, 0, 1001)
	// So does a segment of a flow that lost its state, with its ACK
	// number as sequence.
	stray := fromC(layers.IPProtocolTCP, ipS, 80, 50005)
	stray.ackNum = 4242
	expectReset(t, mustRedirect(t, a, a.objs.FromContainer, stray.bytes(t)), stray, false, 4242, 0)
	// A reset is not answered: it has no flow to end.
	reset := fromC(layers.IPProtocolTCP, ipS, 80, 50006)
	reset.rst = true
	if ret, _ := run(t, a.objs.FromContainer, reset.bytes(t)); ret != actShot {
		t.Errorf("reset of no flow: verdict %d, want shot", ret)
	}
	if got := full() - before; got != 2 {
		t.Errorf("offsets_full rose by %d, want 2 (the SYN and the stray segment)", got)
	}

	// Another port of the same backend has its own four offsets.
	udpPort := map[uint16]uint16{}
	for i := range uint16(4) {
		udpPort[wireOffset(t, a, fromC(layers.IPProtocolUDP, ipS, 53, 51000+i))] = 51000 + i
	}
	if len(udpPort) != 4 {
		t.Fatalf("4 flows to S:53/udp took offsets %v, want 4 distinct", udpPort)
	}
	dgram := fromC(layers.IPProtocolUDP, ipS, 53, 51004)
	dgram.payload = []byte("query")
	frame := dgram.bytes(t)
	before = full()
	expectUnreachable(t, mustRedirect(t, a, a.objs.FromContainer, frame), dgram, frame)
	if got := full() - before; got != 1 {
		t.Errorf("offsets_full rose by %d for the fifth UDP flow, want 1", got)
	}

	// Another backend, on this server, too.
	seen := map[uint16]bool{}
	for i := range uint16(4) {
		s := decode(t, mustRedirect(t, a, a.objs.FromContainer, synFromC(ipL, 8080, 52000+i).bytes(t)))
		if s.dst != ipL || s.sport < 1024 || s.sport >= 1028 {
			t.Fatalf("flow to L: %s:%d -> %s, want from C's identity block [1024, 1028) to %s", s.src, s.sport, s.dst, ipL)
		}
		seen[s.sport] = true
	}
	if len(seen) != 4 {
		t.Errorf("4 flows to L took identity ports %v, want 4 distinct", seen)
	}

	// ICMP echo to S is a destination of its own; when it is full the
	// request is dropped.
	for i := range uint16(4) {
		mustRedirect(t, a, a.objs.FromContainer, fromC(layers.IPProtocolICMPv4, ipS, 0, 0x100+i).bytes(t))
	}
	before = full()
	if ret, _ := run(t, a.objs.FromContainer, fromC(layers.IPProtocolICMPv4, ipS, 0, 0x104).bytes(t)); ret != actShot || full()-before != 1 {
		t.Errorf("fifth echo flow: verdict %d, offsets_full rose by %d; want shot and 1", ret, full()-before)
	}

	// Every offset now carries a TCP and a UDP flow to S: a reply from
	// S's port 80 or 53 reaches the socket that dialled it.
	for _, tc := range []struct {
		proto layers.IPProtocol
		idx   uint16
		svc   uint16
		ports map[uint16]uint16
	}{
		{layers.IPProtocolTCP, 0, 80, tcpPort},
		{layers.IPProtocolUDP, 1, 53, udpPort},
	} {
		for off, port := range tc.ports {
			c := decode(t, mustRedirect(t, a, a.objs.FromNetwork, fromS(tc.proto, tc.idx, off).bytes(t)))
			if c.src != ipS || c.sport != tc.svc || c.dst != ipC || c.dport != port {
				t.Errorf("reply to offset %d from S:%d: at C %s:%d -> %s:%d, want %s:%d -> %s:%d",
					off, tc.svc, c.src, c.sport, c.dst, c.dport, ipS, tc.svc, ipC, port)
			}
			// So does an error a router sends about the flow's wire
			// packet, quoting what C sent.
			wire := pkt{srcMAC: macAny, dstMAC: macAny, src: serverA, dst: serverB, proto: tc.proto,
				sport: 32768 + off, dport: 32768 + tc.idx}
			in := icmpErr{srcMAC: macAny, dstMAC: macAny, src: netip.MustParseAddr(routerOfTheFabric), dst: serverA,
				typ: icmpUnreach, code: codeFragNeeded, rest: 1400, quote: wire.bytes(t)[14:]}
			e := decode(t, mustRedirect(t, a, a.objs.FromNetwork, in.bytes(t)))
			if q := quoteOf(t, e.payload); e.dst != ipC || q.src != ipC || q.sport != port || q.dst != ipS || q.dport != tc.svc {
				t.Errorf("error about offset %d to S:%d: to %s quoting %s:%d -> %s:%d, want to %s quoting %s:%d -> %s:%d",
					off, tc.svc, e.dst, q.src, q.sport, q.dst, q.dport, ipC, ipC, port, ipS, tc.svc)
			}
		}
	}
}

// closeFlow drives C's flow from port sport at offset off to a state, with
// the packets both sides would send: every segment has sequence number
// 1000 and acknowledges the other side's FIN (1001) once it was sent,
// except a "FIN!", which crossed the other side's FIN.
// Steps that leave the backend in TIME_WAIT (it acknowledges C's FIN
// after C acknowledged its own) make from_network send it a reset out of
// the interface the test runs on: such tests run in a namespace of their
// own (see TestEndTimeWait).
func closeFlow(t *testing.T, a *Dataplane, sport, off uint16, steps ...string) {
	t.Helper()
	fin := map[byte]bool{}
	for _, s := range steps {
		var out pkt
		prog := a.objs.FromContainer
		switch s {
		case "C ACK", "C FIN", "C FIN!", "C RST":
			out = fromC(layers.IPProtocolTCP, ipS, 80, sport)
		case "S ACK", "S FIN", "S FIN!", "S RST":
			out = fromS(layers.IPProtocolTCP, 0, off)
			prog = a.objs.FromNetwork
		case "S UDP": // S's answer from 53/udp, its port index 1
			out = fromS(layers.IPProtocolUDP, 1, off)
			prog = a.objs.FromNetwork
		default:
			t.Fatalf("unknown step %q", s)
		}
		out.fin = strings.HasPrefix(s[2:], "FIN")
		out.rst = s[2:] == "RST"
		out.ackNum = 1000
		if fin[s[0]^'C'^'S'] && !strings.HasSuffix(s, "!") { // the other side's FIN
			out.ackNum = 1001
		}
		fin[s[0]] = fin[s[0]] || out.fin
		mustRedirect(t, a, prog, out.bytes(t))
	}
}

// TestClosedOffsetReuse checks which offsets a new flow may take when none
// is free: those of TCP flows that are over (both FINs and the last ACK,
// or a reset), never those of open or half-closed ones.
func TestClosedOffsetReuse(t *testing.T) {
	a := smallBlocks(t)
	off := make([]uint16, 4)
	for i := range 4 {
		off[i] = wireOffset(t, a, synFromC(ipS, 80, uint16(50000+i)))
	}
	closeFlow(t, a, 50000, off[0], "S ACK", "C FIN", "S FIN", "C ACK") // over
	closeFlow(t, a, 50001, off[1], "S ACK", "C FIN")                   // half closed
	closeFlow(t, a, 50002, off[2], "S ACK", "S RST")                   // reset
	closeFlow(t, a, 50003, off[3], "S ACK")                            // open
	time.Sleep(5 * time.Millisecond)                                   // past CT_TCP_REUSE

	took := map[uint16]uint16{}
	for i := range uint16(2) {
		took[wireOffset(t, a, synFromC(ipS, 80, 50010+i))] = 50010 + i
	}
	if _, ok := took[off[0]]; !ok || len(took) != 2 {
		t.Errorf("new flows took offsets %v, want %d (closed) and %d (reset)", took, off[0], off[2])
	}
	if _, ok := took[off[2]]; !ok {
		t.Errorf("new flows took offsets %v, want %d (closed) and %d (reset)", took, off[0], off[2])
	}
	syn := synFromC(ipS, 80, 50012)
	expectReset(t, mustRedirect(t, a, a.objs.FromContainer, syn.bytes(t)), syn, true, 0, 1001)

	// A reply to a taken offset reaches the new flow, not the old one.
	c := decode(t, mustRedirect(t, a, a.objs.FromNetwork, fromS(layers.IPProtocolTCP, 0, off[0]).bytes(t)))
	if c.dport != took[off[0]] {
		t.Errorf("reply to offset %d reached port %d, want the new flow's %d", off[0], c.dport, took[off[0]])
	}
	// The half-closed and the open flow keep theirs.
	for i, o := range []uint16{off[1], off[3]} {
		port := uint16(50001 + 2*i)
		if got := wireOffset(t, a, fromC(layers.IPProtocolTCP, ipS, 80, port)); got != o {
			t.Errorf("flow from %d left with offset %d, want its own %d", port, got, o)
		}
	}
}

// TestSYNReopensFlow replays how a client recovers when its SYN reaches a
// backend that still holds the 4-tuple in TIME_WAIT with a newer
// timestamp: the backend answers with an ACK, the client resets it and
// resends its SYN. The flow must keep its offset through that, and be open
// again afterwards.
func TestSYNReopensFlow(t *testing.T) {
	a := smallBlocks(t)
	off := wireOffset(t, a, synFromC(ipS, 80, 50000))
	closeFlow(t, a, 50000, off, "S ACK", "C RST")
	time.Sleep(5 * time.Millisecond) // the reset flow is over: reusable
	if got := wireOffset(t, a, synFromC(ipS, 80, 50000)); got != off {
		t.Fatalf("resent SYN left with offset %d, want the flow's own %d", got, off)
	}
	time.Sleep(5 * time.Millisecond)
	// Open again: three new flows take the other offsets, the fourth
	// finds none.
	for i := range uint16(3) {
		if got := wireOffset(t, a, synFromC(ipS, 80, 50001+i)); got == off {
			t.Fatalf("new flow took offset %d of the reopened flow", off)
		}
	}
	syn := synFromC(ipS, 80, 50004)
	expectReset(t, mustRedirect(t, a, a.objs.FromContainer, syn.bytes(t)), syn, true, 0, 1001)
}

// ageFlows makes every flow of d look idle for by longer.
func ageFlows(t *testing.T, d *Dataplane, by time.Duration) {
	t.Helper()
	var k daoliCtKey
	var v daoliCtEntry
	keys := []daoliCtKey{}
	vals := []daoliCtEntry{}
	it := d.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		// It may wrap below zero (the clock counts from boot): the
		// programs take the difference modulo 2^64.
		v.LastSeen -= uint64(by)
		keys, vals = append(keys, k), append(vals, v)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if err := d.objs.Conntrack.Update(keys[i], vals[i], ebpf.UpdateExist); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConntrackTimeouts checks how long an idle flow in each state keeps
// its offset: C has a single flow offset, flow F takes it, idles, and a
// second flow G to the same destination either gets it or is answered.
func TestConntrackTimeouts(t *testing.T) {
	const (
		tcp  = layers.IPProtocolTCP
		udp  = layers.IPProtocolUDP
		icmp = layers.IPProtocolICMPv4
	)
	for _, tc := range []struct {
		name  string
		proto layers.IPProtocol
		steps []string // after F's first packet
		idle  time.Duration
		free  bool
	}{
		{"tcp unanswered", tcp, nil, 29 * time.Second, false},
		{"tcp unanswered, expired", tcp, nil, 31 * time.Second, true},
		{"tcp established", tcp, []string{"S ACK"}, 3599 * time.Second, false},
		{"tcp established, expired", tcp, []string{"S ACK"}, 3601 * time.Second, true},
		{"tcp half closed", tcp, []string{"S ACK", "C FIN"}, 119 * time.Second, false},
		{"tcp half closed, expired", tcp, []string{"S ACK", "C FIN"}, 121 * time.Second, true},
		{"tcp both FINs", tcp, []string{"S ACK", "S FIN", "C FIN"}, 1900 * time.Millisecond, false},
		{"tcp both FINs, expired", tcp, []string{"S ACK", "S FIN", "C FIN"}, 2100 * time.Millisecond, true},
		{"tcp closed", tcp, []string{"S ACK", "C FIN", "S FIN", "C ACK"}, 5 * time.Millisecond, true},
		{"tcp both FINs, one acknowledged", tcp, []string{"S ACK", "C FIN", "S FIN"}, 5 * time.Millisecond, false},
		{"tcp reset", tcp, []string{"S ACK", "C RST"}, 5 * time.Millisecond, true},
		{"udp", udp, nil, 29 * time.Second, false},
		{"udp expired", udp, nil, 31 * time.Second, true},
		{"udp answered", udp, []string{"S UDP"}, 900 * time.Millisecond, false},
		{"udp answered, idle 1 s", udp, []string{"S UDP"}, 1100 * time.Millisecond, true},
		{"icmp", icmp, nil, 59 * time.Second, false},
		{"icmp expired", icmp, nil, 61 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := oneOffset(t)
			flow := func(sport uint16) pkt {
				switch tc.proto {
				case tcp:
					return synFromC(ipS, 80, sport)
				case udp:
					return fromC(udp, ipS, 53, sport)
				}
				return fromC(icmp, ipS, 0, sport)
			}
			w := decode(t, mustRedirect(t, a, a.objs.FromContainer, flow(50000).bytes(t)))
			if w.dst != serverB || w.sport != 32768+3 {
				t.Fatalf("F left as %s:%d -> %s, want from %s:%d", w.src, w.sport, w.dst, serverA, 32768+3)
			}
			closeFlow(t, a, 50000, 3, tc.steps...)
			ageFlows(t, a, tc.idle)

			g := flow(50001)
			ret, out := run(t, a.objs.FromContainer, g.bytes(t))
			var to netip.Addr
			if ret == actRedirect {
				to = decode(t, out).dst
			}
			switch {
			case tc.free && to == serverB:
				// Over the wire: G took the offset.
				if w := decode(t, out); w.sport != 32768+3 {
					t.Errorf("G left from port %d, want %d", w.sport, 32768+3)
				}
			case tc.free:
				t.Errorf("G after %s idle: verdict %d to %s, want it on the wire with F's offset; drops %v",
					tc.idle, ret, to, mustDrops(a))
			case tc.proto == icmp && ret == actShot:
			case tc.proto != icmp && to == ipC:
				// Answered back into C: F still holds the offset.
			default:
				t.Errorf("G after %s idle: verdict %d to %s, want it refused: F still holds the offset", tc.idle, ret, to)
			}
		})
	}
}

// TestOffsetSearchCoversBlock frees one offset far from where the next
// search starts: a new flow must find it rather than be refused.
func TestOffsetSearchCoversBlock(t *testing.T) {
	a := loadServer(t, serverA) // 256-port blocks; C serves nothing
	port := map[uint16]uint16{} // offset -> C's port
	for i := range uint16(256) {
		w := decode(t, mustRedirect(t, a, a.objs.FromContainer, synFromC(ipS, 80, 40000+i).bytes(t)))
		port[w.sport-32768] = 40000 + i
	}
	if len(port) != 256 {
		t.Fatalf("256 flows took %d offsets, want 256", len(port))
	}
	syn := synFromC(ipS, 80, 41000)
	expectReset(t, mustRedirect(t, a, a.objs.FromContainer, syn.bytes(t)), syn, true, 0, 1001)

	// The backend resets the flow at offset 200; the next search starts
	// at offset 0.
	mustRedirect(t, a, a.objs.FromNetwork, pkt{srcMAC: macAny, dstMAC: macAny, src: serverB, dst: serverA,
		proto: layers.IPProtocolTCP, sport: 32768, dport: 32768 + 200, rst: true}.bytes(t))
	time.Sleep(5 * time.Millisecond)
	w := decode(t, mustRedirect(t, a, a.objs.FromContainer, synFromC(ipS, 80, 41001).bytes(t)))
	if w.dst != serverB || w.sport != 32768+200 {
		t.Errorf("new flow: %s:%d -> %s, want it on the wire from offset 200", w.src, w.sport, w.dst)
	}
}

// TestEndTimeWait closes flows the three ways TCP can and checks that only
// a backend left in TIME_WAIT (it sent its FIN before it had the client's)
// gets a reset that ends it, once: reflected back out of the interface
// when the backend closed first and its ACK of the client's FIN completes
// the close, or made of the client's ACK of the backend's FIN when the
// FINs crossed. The programs run in a namespace of the test's own, since
// the reflected reset leaves through its loopback.
func TestEndTimeWait(t *testing.T) {
	w := testbed.New(t, 1)
	ns := w.AddNamespace("tw")
	for i, tc := range []struct {
		name  string
		steps []string
		// reflect: a reset goes back to S; lastReset: the last packet
		// leaves as a reset.
		reflect, lastReset bool
	}{
		{"backend first", []string{"S ACK", "S FIN", "C ACK", "C FIN", "S ACK"}, true, false},
		{"backend first, FIN acknowledged with the client's", []string{"S ACK", "S FIN", "C FIN", "S ACK"}, true, false},
		{"at once", []string{"S ACK", "C FIN", "S FIN!", "C ACK"}, false, true},
		{"at once, the backend's ACK first", []string{"S ACK", "C FIN", "S FIN!", "S ACK", "C ACK"}, false, true},
		{"at once, ended once", []string{"S ACK", "C FIN", "S FIN!", "C ACK", "S ACK"}, false, false},
		{"client first", []string{"S ACK", "C FIN", "S FIN", "C ACK"}, false, false},
		{"client first, FINs apart", []string{"S ACK", "C FIN", "S ACK", "S FIN", "C ACK"}, false, false},
		{"reset", []string{"S ACK", "S FIN", "C ACK", "C RST"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := smallBlocks(t)
			capt := startCapture(t, ns, "lo")
			sport := uint16(50000 + i)
			var last []byte
			var off uint16
			err := ns.Do(func() error {
				off = wireOffset(t, a, synFromC(ipS, 80, sport))
				closeFlow(t, a, sport, off, tc.steps[:len(tc.steps)-1]...)
				// The last step, by hand, to see what leaves.
				step := tc.steps[len(tc.steps)-1]
				p, prog := fromS(layers.IPProtocolTCP, 0, off), a.objs.FromNetwork
				if step[0] == 'C' {
					p, prog = fromC(layers.IPProtocolTCP, ipS, 80, sport), a.objs.FromContainer
				}
				p.rst = step == "C RST"
				p.ackNum = 1001
				last = mustRedirect(t, a, prog, p.bytes(t))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			frames := capt.stop()
			if tcp := tcpOf(t, last); tcp.RST != (tc.lastReset || step(tc.steps) == "C RST") {
				t.Errorf("last packet leaves with RST %t, want %t", tcp.RST, tc.lastReset)
			} else if tc.lastReset {
				// To S over the wire, with the sequence S expects.
				w := decode(t, last)
				if w.dst != serverB || !tcp.ACK || tcp.Seq != 1000 {
					t.Errorf("last packet to %s ACK %t seq %d, want to %s, RST|ACK, seq 1000", w.dst, tcp.ACK, tcp.Seq, serverB)
				}
			}
			var resets [][]byte
			for _, f := range frames {
				// The loopback shows a frame going out and coming in.
				if len(f) > 14+20 && f[12] == 0x08 && f[13] == 0 &&
					(len(resets) == 0 || !bytes.Equal(f, resets[len(resets)-1])) {
					resets = append(resets, f)
				}
			}
			if !tc.reflect {
				if len(resets) != 0 {
					t.Errorf("%d packets sent back, want none", len(resets))
				}
				return
			}
			if len(resets) != 1 {
				t.Fatalf("%d packets sent back, want one reset", len(resets))
			}
			r := decode(t, resets[0]) // checks every checksum
			tcp := tcpOf(t, resets[0])
			if r.src != serverA || r.dst != serverB || r.sport != 32768+off || r.dport != 32768 {
				t.Errorf("reset %s:%d -> %s:%d, want %s:C's wire port -> %s:32768", r.src, r.sport, r.dst, r.dport, serverA, serverB)
			}
			if !tcp.RST || tcp.ACK || tcp.SYN || tcp.FIN || tcp.Seq != 1001 || len(tcp.Payload) != 0 {
				t.Errorf("reset RST %t ACK %t SYN %t FIN %t seq %d, %d bytes of payload; want RST only, seq 1001 (S's ACK number), no payload",
					tcp.RST, tcp.ACK, tcp.SYN, tcp.FIN, tcp.Seq, len(tcp.Payload))
			}
			for _, o := range tcp.Options {
				if o.OptionType == layers.TCPOptionKindTimestamps {
					t.Error("reset carries a timestamp: PAWS would apply to it")
				}
			}
		})
	}
}

func step(steps []string) string { return steps[len(steps)-1] }
