package dataplane

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
	"github.com/google/gopacket/layers"
)

// TestHostileContainer: a container that is root in its own namespace
// writes whatever frames it likes to its eth0. Every attack is dropped on
// its server with its own reason, the service it aims at accepts nothing
// from it, and a neighbour's connection to the same service, opened
// before, carries on, as does the neighbour's next new flow.
//
//	server A: X 10.1.0.2 (the attacker), V 10.1.0.3 (the victim), network 7
//	server B: S 10.1.0.9 8080/tcp 5353/udp (network 7), F 10.2.0.5 7000/tcp (network 9)
func TestHostileContainer(t *testing.T) {
	ip := netip.MustParseAddr
	tw := buildWorld(t, testbed.New(t, 2), Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: ip("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}, {5353, UDP}}}, 1},
		{Endpoint{ID: 3, Network: 7, IP: ip("10.1.0.3"), WireBase: 33024, IdentityBase: 1024}, 0},
		{Endpoint{ID: 4, Network: 9, IP: ip("10.2.0.5"), WireBase: 33024, IdentityBase: 1024, Ports: []Port{{7000, TCP}}}, 1},
	})
	// Egress is open, so that what stops a packet to a server's wire
	// port is the wire range, not a closed egress.
	tw.networks = []Network{
		{ID: 7, Subnet: netip.MustParsePrefix("10.1.0.0/24"), Egress: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
		{ID: 9, Subnet: netip.MustParsePrefix("10.2.0.0/24")},
	}
	tw.wirePorts = PortRange{First: 32768, Last: 40959}
	tw.apply(t)
	x, s, v, f := tw.containers[1], tw.containers[2], tw.containers[3], tw.containers[4]
	accepted := serveEcho(t, s, 8080)
	serveUDP(t, s, 5353, "S")
	foreign := serveEcho(t, f, 7000)
	service := netip.AddrPortFrom(trafficS, 8080)
	victim := dialEcho(t, v, service)
	defer victim.Close()

	// tcp is a SYN from X as X, to be bent by each attack.
	tcp := func(dst netip.Addr, dport, sport uint16) pkt {
		return pkt{srcMAC: x.MAC, dstMAC: DefaultGatewayMAC, src: x.IP, dst: dst, proto: layers.IPProtocolTCP,
			sport: sport, dport: dport, syn: true}
	}
	attacks := []struct {
		name   string
		frame  []byte
		reason DropReason
	}{
		{"the victim's address", func() []byte { p := tcp(trafficS, 8080, 40001); p.src = v.IP; return p.bytes(t) }(), DropSpoofed},
		{"the victim's MAC", func() []byte { p := tcp(trafficS, 8080, 40002); p.srcMAC = v.MAC; return p.bytes(t) }(), DropSpoofed},
		{"an ARP reply claiming the victim's address", arpFrame(t, layers.ARPReply, x.MAC, v.IP, DefaultGatewayMAC, DefaultGatewayMAC, v.Gateway), DropARP},
		{"an ARP request as the victim", arpRequest(t, x.MAC, v.IP, v.Gateway), DropSpoofed},
		{"another tenant's service", tcp(f.IP, 7000, 40003).bytes(t), DropNoService},
		{"another tenant's wire port on its server", tcp(tw.b.IP, 33024, 40004).bytes(t), DropEgressDenied},
		{"the victim's wire port on its own server", tcp(tw.a.IP, 33024, 40005).bytes(t), DropEgressDenied},
		{"a fragment", func() []byte { p := tcp(trafficS, 8080, 40006); p.flags = layers.IPv4MoreFragments; return p.bytes(t) }(), DropFragment},
		{"IPv4 options", withIPOptions(t, tcp(trafficS, 8080, 40007)), DropIPOptions},
		{"a wrong IPv4 header checksum", func() []byte {
			b := tcp(trafficS, 8080, 40008).bytes(t)
			b[14+10] ^= 0xff
			return b
		}(), DropBadChecksum},
		{"a total length beyond the frame", func() []byte {
			b := tcp(trafficS, 8080, 40009).bytes(t)
			binary.BigEndian.PutUint16(b[14+2:], uint16(len(b)-14+40))
			return fixIPChecksum(b)
		}(), DropMalformed},
		{"a TCP header cut short", func() []byte {
			b := tcp(trafficS, 8080, 40010).bytes(t)
			b = b[:14+20+10]
			binary.BigEndian.PutUint16(b[14+2:], 30)
			return fixIPChecksum(b)
		}(), DropMalformed},
		{"an ICMP error quoting the victim's flow", icmpErr{srcMAC: x.MAC, dstMAC: DefaultGatewayMAC, src: x.IP, dst: trafficS,
			typ: 3, code: 3, quote: quoteBytes(t, trafficS, v.IP, 8080, localPort(victim))}.bytes(t), DropCTMiss},
		{"an ICMP error about a flow it never had", icmpErr{srcMAC: x.MAC, dstMAC: DefaultGatewayMAC, src: x.IP, dst: trafficS,
			typ: 3, code: 1, quote: quoteBytes(t, trafficS, x.IP, 8080, 41000)}.bytes(t), DropCTMiss},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			before := drops(t, tw.dpA)
			if err := sendFrame(x, "eth0", a.frame); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(2 * time.Second); rose(before, drops(t, tw.dpA), a.reason) == 0 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			if got := rose(before, drops(t, tw.dpA), a.reason); got != 1 {
				t.Errorf("%s rose by %d, want 1; drops now %v", a.reason, got, mustDrops(tw.dpA))
			}
			echo(t, victim, "still here")
		})
	}

	t.Run("a wrong TCP checksum", func(t *testing.T) {
		// Rewritten by checksum deltas, the segment stays wrong: S's
		// kernel discards it and counts it.
		before := tcpCounter(t, s, "InCsumErrors")
		b := tcp(trafficS, 8080, 40011).bytes(t)
		b[14+20+16] ^= 0xff
		if err := sendFrame(x, "eth0", b); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(2 * time.Second); tcpCounter(t, s, "InCsumErrors") == before && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if tcpCounter(t, s, "InCsumErrors") == before {
			t.Error("S's kernel counted no TCP checksum error: the segment was delivered with a checksum made right")
		}
		echo(t, victim, "still here")
	})

	t.Run("its own offsets, exhausted", func(t *testing.T) {
		// 300 new UDP flows to one service in a burst: X's block towards S
		// has 256 offsets, and S answers each, so none frees for a second.
		before := drops(t, tw.dpA)
		var frames [][]byte
		for i := range 300 {
			p := pkt{srcMAC: x.MAC, dstMAC: DefaultGatewayMAC, src: x.IP, dst: trafficS, proto: layers.IPProtocolUDP,
				sport: uint16(20000 + i), dport: 5353, payload: []byte("x")}
			frames = append(frames, p.bytes(t))
		}
		if err := sendFrames(x, "eth0", frames); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(2 * time.Second); rose(before, drops(t, tw.dpA), DropOffsetsFull) < 44 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if got := rose(before, drops(t, tw.dpA), DropOffsetsFull); got < 44 {
			t.Errorf("offsets_full rose by %d, want at least the 44 flows beyond X's 256 offsets", got)
		}
		// The victim's offsets are its own.
		if answer, err := askUDP(v, netip.AddrPortFrom(trafficS, 5353), "hi"); err != nil || !strings.HasPrefix(answer, "S ") {
			t.Errorf("the victim's new UDP flow to S: %q, %v", answer, err)
		}
		echo(t, victim, "still here")
	})

	if n := accepted.Load(); n != 1 {
		t.Errorf("S accepted %d connections, want the victim's alone", n)
	}
	if n := foreign.Load(); n != 0 {
		t.Errorf("the other tenant accepted %d connections, want 0", n)
	}
	conn := dialEcho(t, v, service)
	conn.Close()
}

// withIPOptions is p's frame with four NOP options in its IPv4 header.
func withIPOptions(t testing.TB, p pkt) []byte {
	t.Helper()
	b := p.bytes(t)
	out := make([]byte, 0, len(b)+4)
	out = append(out, b[:14+20]...)
	out = append(out, 1, 1, 1, 1)
	out = append(out, b[14+20:]...)
	out[14] = 0x46 // version 4, 6 words
	binary.BigEndian.PutUint16(out[14+2:], uint16(len(out)-14))
	return fixIPChecksum(out)
}

// fixIPChecksum sets the checksum of frame's IPv4 header.
func fixIPChecksum(frame []byte) []byte {
	h := frame[14 : 14+int(frame[14]&0xf)*4]
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], ^onesSum(h))
	return frame
}

// quoteBytes is the start of a TCP packet src:sport -> dst:dport, as an
// ICMP error about it quotes it.
func quoteBytes(t testing.TB, src, dst netip.Addr, sport, dport uint16) []byte {
	t.Helper()
	p := pkt{srcMAC: make(net.HardwareAddr, 6), dstMAC: make(net.HardwareAddr, 6), src: src, dst: dst,
		proto: layers.IPProtocolTCP, sport: sport, dport: dport}
	return p.bytes(t)[14 : 14+28]
}

// localPort is conn's local port.
func localPort(conn net.Conn) uint16 {
	return uint16(conn.LocalAddr().(*net.TCPAddr).Port)
}

// tcpCounter reads one of the Tcp counters of /proc/net/snmp in c.
func tcpCounter(t testing.TB, c *testbed.Container, name string) uint64 {
	t.Helper()
	var names, values []string
	for _, l := range strings.Split(c.Run("cat", "/proc/net/snmp"), "\n") {
		if !strings.HasPrefix(l, "Tcp: ") {
			continue
		}
		if names == nil {
			names = strings.Fields(l)
		} else {
			values = strings.Fields(l)
		}
	}
	for i, n := range names {
		if n == name && i < len(values) {
			v, err := strconv.ParseUint(values[i], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no Tcp %s in /proc/net/snmp", name)
	return 0
}

// TestFlowLimit: a container that opens more flows than its share of
// conntrack (Config.MaxFlowsPerEndpoint) has the rest refused, counted as
// flow_limit, while its neighbour's flows go on; flows that end stop
// counting at once, and AccountFlows takes off those that went idle.
func TestFlowLimit(t *testing.T) {
	ip := netip.MustParseAddr
	tw := buildWorld(t, testbed.New(t, 2), Config{MaxFlowsPerEndpoint: 100}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: ip("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}, {5353, UDP}}}, 1},
		{Endpoint{ID: 3, Network: 7, IP: ip("10.1.0.3"), WireBase: 33024, IdentityBase: 1024}, 0},
	})
	x, s, v := tw.containers[1], tw.containers[2], tw.containers[3]
	serveEcho(t, s, 8080)
	serveUDP(t, s, 5353, "S")
	service := netip.AddrPortFrom(trafficS, 8080)
	victim := dialEcho(t, v, service)
	defer victim.Close()
	// udp is n new UDP flows from X to S, each from another port.
	udp := func(from, n int) [][]byte {
		var frames [][]byte
		for i := range n {
			p := pkt{srcMAC: x.MAC, dstMAC: DefaultGatewayMAC, src: x.IP, dst: trafficS, proto: layers.IPProtocolUDP,
				sport: uint16(from + i), dport: 5353, payload: []byte("x")}
			frames = append(frames, p.bytes(t))
		}
		return frames
	}
	refused := func(frames [][]byte, want uint64) {
		t.Helper()
		before := drops(t, tw.dpA)
		if err := sendFrames(x, "eth0", frames); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(2 * time.Second); rose(before, drops(t, tw.dpA), DropFlowLimit) < want && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // and no more than that
		if got := rose(before, drops(t, tw.dpA), DropFlowLimit); got != want {
			t.Errorf("%d new flows: flow_limit rose by %d, want %d", len(frames), got, want)
		}
	}

	refused(udp(30000, 150), 50)
	echo(t, victim, "still here")
	dialEcho(t, v, service).Close()
	held, err := tw.dpA.AccountFlows()
	if err != nil {
		t.Fatal(err)
	}
	if held[1] != 100 || held[3] == 0 || held[3] > 2 {
		t.Errorf("flows held: the attacker %d (want 100), the victim %d (want its 1 or 2)", held[1], held[3])
	}
	refused(udp(31000, 5), 5)

	// Answered and idle for a second, the UDP flows give their places up
	// at the next count.
	time.Sleep(ctUDPReuse + 500*time.Millisecond)
	if held, err = tw.dpA.AccountFlows(); err != nil || held[1] != 0 {
		t.Fatalf("after the attacker's flows went idle: it holds %d, %v; want 0", held[1], err)
	}
	refused(udp(32000, 10), 0)

	// TCP connections that end stop counting when they end: one after
	// another, many more than the limit all go through.
	before := drops(t, tw.dpA)
	for i := range 150 {
		conn := dialEcho(t, x, service)
		conn.Close()
		if t.Failed() {
			t.Fatalf("connection %d failed", i)
		}
	}
	if got := rose(before, drops(t, tw.dpA), DropFlowLimit); got != 0 {
		t.Errorf("150 connections one after another: flow_limit rose by %d, want 0", got)
	}
	echo(t, victim, "still here")
}
