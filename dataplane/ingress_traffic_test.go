package dataplane

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
)

var (
	ingressS = netip.MustParseAddr("10.1.0.9")  // failover: master on A, backup on B
	ingressL = netip.MustParseAddr("10.1.0.20") // balance: one on A, one on B
)

// ingressWorld builds two servers and a host outside, behind a router:
//
//	server A 192.0.2.1: M 10.1.0.9 (master: 80/tcp, 53/udp, 7/tcp echo), L1 10.1.0.20 (8080/tcp, balance)
//	server B 192.0.2.2: K 10.1.0.9 (backup of M),                        L2 10.1.0.20
//	outside 203.0.113.10
//
// and publishes on every server 8080 -> 10.1.0.9:80/tcp, 5353 ->
// 10.1.0.9:53/udp, 7007 -> 10.1.0.9:7/tcp and 9090 -> 10.1.0.20:8080/tcp.
// The wire range is 32768-36863; its last block is the gateway block.
func ingressWorld(t *testing.T) (*trafficWorld, *testbed.Outside) {
	return ingressWorldOf(t, 2)
}

// ingressWorldOf is ingressWorld with n servers (the third and later
// empty).
func ingressWorldOf(t *testing.T, n int) (*trafficWorld, *testbed.Outside) {
	t.Helper()
	w := testbed.New(t, n)
	out := w.AddOutside(0)
	svc := []Port{{80, TCP}, {53, UDP}, {7, TCP}}
	bal := []Port{{8080, TCP}}
	tw := buildWorld(t, w, Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: ingressS, WireBase: 32768, IdentityBase: 1024, Ports: svc, Priority: 2}, 0},
		{Endpoint{ID: 2, Network: 7, IP: ingressS, WireBase: 32768, IdentityBase: 1280, Ports: svc, Priority: 1}, 1},
		{Endpoint{ID: 3, Network: 7, IP: ingressL, WireBase: 33024, IdentityBase: 1024, Ports: bal, Mode: Balance}, 0},
		{Endpoint{ID: 4, Network: 7, IP: ingressL, WireBase: 33024, IdentityBase: 1280, Ports: bal, Mode: Balance}, 1},
	})
	tw.wirePorts = PortRange{First: 32768, Last: 36863}
	tw.gatewayBase = 36608
	tw.published = []Published{
		{HostPort: 8080, Proto: TCP, Network: 7, IP: ingressS, Port: 80},
		{HostPort: 5353, Proto: UDP, Network: 7, IP: ingressS, Port: 53},
		{HostPort: 7007, Proto: TCP, Network: 7, IP: ingressS, Port: 7},
		{HostPort: 9090, Proto: TCP, Network: 7, IP: ingressL, Port: 8080},
	}
	tw.apply(t)
	return tw, out
}

// askOutside dials addr from the outside host and returns the answer's two
// words (see serveTCP) and the local address it dialled from.
func askOutside(out *testbed.Outside, network string, addr netip.AddrPort) (name string, remote, local netip.AddrPort, err error) {
	var conn net.Conn
	if err = out.Do(func() (err error) {
		conn, err = (&net.Dialer{Timeout: 3 * time.Second}).Dial(network, addr.String())
		return err
	}); err != nil {
		return "", remote, local, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if network == "udp4" {
		if _, err = conn.Write([]byte("hi")); err != nil {
			return "", remote, local, err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", remote, local, err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", remote, local, fmt.Errorf("answer %q: want two words", line)
	}
	if remote, err = netip.ParseAddrPort(f[1]); err != nil {
		return "", remote, local, err
	}
	local = netip.MustParseAddrPort(conn.LocalAddr().String())
	return f[0], remote, local, nil
}

// dialOutside connects from the outside host to addr over TCP; the
// connection is closed at cleanup.
func dialOutside(t *testing.T, out *testbed.Outside, addr netip.AddrPort) net.Conn {
	t.Helper()
	var conn net.Conn
	if err := out.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp4", addr.String(), 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s from outside: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// serveCopy sends back every byte of every connection on port of c.
func serveCopy(t *testing.T, c *testbed.Container, port int) {
	t.Helper()
	serveConns(t, c, port, func(conn net.Conn) {
		go func() {
			defer conn.Close()
			io.Copy(conn, conn)
		}()
	})
}

// TestIngressTraffic: a client outside reaches a published service
// through every server, the server the backend runs on (delivered
// straight in) and another (forwarded over the wire); the backend sees
// the client's own address and port; a UDP request gets its answer; 2 MB
// echo through the gateway intact; the fabric carries the client's
// address in the option of the flow's first packet only, never a
// container's address; a balanced service spreads outside clients; when
// the master goes down, the backup answers on the same ServerIP:port.
func TestIngressTraffic(t *testing.T) {
	tw, out := ingressWorld(t)
	serveTCP(t, tw.containers[1], 80, "master")
	serveTCP(t, tw.containers[2], 80, "backup")
	serveUDP(t, tw.containers[1], 53, "master")
	serveUDP(t, tw.containers[2], 53, "backup")
	serveCopy(t, tw.containers[1], 7)
	serveTCP(t, tw.containers[3], 8080, "left")
	serveTCP(t, tw.containers[4], 8080, "right")

	capt := startCapture(t, tw.w.Fabric, "s1") // server B's port
	for _, srv := range []*testbed.Server{tw.a, tw.b} {
		for _, network := range []string{"tcp4", "udp4"} {
			port := uint16(8080)
			if network == "udp4" {
				port = 5353
			}
			addr := netip.AddrPortFrom(srv.IP, port)
			name, remote, local, err := askOutside(out, network, addr)
			if err != nil {
				t.Fatalf("%s %s from outside: %v; drops %v", network, addr, err, tw.drops(t))
			}
			if name != "master" || remote != local {
				t.Errorf("%s %s from outside %s: answered by %s, who saw the client as %s; want master, seeing %s", network, addr, local, name, remote, local)
			}
		}
	}
	frames := capt.stop()
	tagged := 0
	for _, f := range frames {
		ip, src, dst, ok := ipv4Of(f)
		if !ok {
			continue
		}
		if ingressS == src || ingressS == dst {
			t.Errorf("the fabric carried the service's address: %s -> %s", src, dst)
		}
		for _, o := range ip.Options {
			if o.OptionType == 0x9e {
				if len(o.OptionData) != 6 || netip.AddrFrom4([4]byte(o.OptionData[2:6])) != out.IP || src != tw.b.IP || dst != tw.a.IP {
					t.Errorf("ingress option %x on %s -> %s: want the client %s, from B to A", o.OptionData, src, dst, out.IP)
				}
				tagged++
			}
		}
	}
	// One SYN and one datagram went from B's gateway to A.
	if tagged != 2 {
		t.Errorf("%d packets carried the client's address from B to A, want 2 (a SYN and a datagram)", tagged)
	}

	// 2 MB through B's gateway to the master on A and back.
	conn := dialOutside(t, out, netip.AddrPortFrom(tw.b.IP, 7007))
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	data := make([]byte, 2<<20)
	rand.Read(data)
	go func() { conn.Write(data); conn.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(conn)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("echo of 2 MB through B: %d bytes back, equal %v, err %v; drops %v", len(got), bytes.Equal(got, data), err, tw.drops(t))
	}

	// A balanced service spreads outside clients over both backends.
	seen := map[string]int{}
	for i := range 40 {
		srv := []*testbed.Server{tw.a, tw.b}[i%2]
		name, remote, local, err := askOutside(out, "tcp4", netip.AddrPortFrom(srv.IP, 9090))
		if err != nil {
			t.Fatalf("balanced service through %s: %v; drops %v", srv.IP, err, tw.drops(t))
		}
		if remote != local {
			t.Errorf("%s saw the client as %s, want %s", name, remote, local)
		}
		seen[name]++
	}
	if seen["left"] == 0 || seen["right"] == 0 {
		t.Errorf("40 outside clients of the balanced service: %v, want both backends", seen)
	}

	// The master goes down: the same ServerIP:port of both servers is
	// answered by the backup, seeing the client as before.
	tw.setState(1, Down)
	tw.apply(t)
	for _, srv := range []*testbed.Server{tw.a, tw.b} {
		addr := netip.AddrPortFrom(srv.IP, 8080)
		name, remote, local, err := askOutside(out, "tcp4", addr)
		if err != nil {
			t.Fatalf("%s after the master went down: %v; drops %v", addr, err, tw.drops(t))
		}
		if name != "backup" || remote != local {
			t.Errorf("%s after the master went down: %s saw %s, want backup seeing %s", addr, name, remote, local)
		}
	}
}

// TestIngressFailoverUDP: a UDP flow from outside that was answered by the
// master goes on to the backup once the master is down, from the same
// client socket, and the backup's server learns the client from the
// option again.
func TestIngressFailoverUDP(t *testing.T) {
	tw, out := ingressWorld(t)
	serveUDP(t, tw.containers[1], 53, "master")
	serveUDP(t, tw.containers[2], 53, "backup")
	var conn *net.UDPConn
	if err := out.Do(func() (err error) {
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(tw.a.IP, 5353)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	local := conn.LocalAddr().String()
	for _, want := range []string{"master", "backup"} {
		if want == "backup" {
			tw.setState(1, Down)
			tw.apply(t)
		}
		got, err := exchange(conn, "q")
		if err != nil || strings.TrimSpace(got) != want+" "+local {
			t.Fatalf("datagram to %s:5353: %q, %v; want %q; drops %v", tw.a.IP, got, err, want+" "+local, tw.drops(t))
		}
	}
}

// TestIngressEdges: a port nobody published is the server's own (its
// stack refuses the connection); an established TCP connection whose
// backend goes down ends with a reset, not a hang; a first datagram that
// the client's address would make too big for the uplink is dropped as
// too_big, one that fits gets through, and once answered the flow takes
// full-size datagrams.
func TestIngressEdges(t *testing.T) {
	tw, out := ingressWorld(t)
	serveCopy(t, tw.containers[1], 7)
	serveUDP(t, tw.containers[1], 53, "master")

	err := out.Do(func() error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(tw.a.IP, 7070).String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial an unpublished port of server A: %v, want the server's own refusal", err)
	}

	conn := dialOutside(t, out, netip.AddrPortFrom(tw.b.IP, 7007))
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 5)
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo through B: %q, %v", buf, err)
	}
	tw.setState(1, Down)
	tw.apply(t)
	start := time.Now()
	conn.Write([]byte("again"))
	_, err = io.ReadFull(conn, buf)
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("the connection after its backend went down: %v after %v, want a reset", err, time.Since(start))
	}
	tw.setState(1, Active)
	tw.apply(t)

	// Through B to the master on A: the option takes 8 bytes.
	var uc *net.UDPConn
	if err := out.Do(func() (err error) {
		uc, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(tw.b.IP, 5353)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	before := tw.drops(t)[DropTooBig]
	if _, err := exchange(uc, strings.Repeat("x", 1500-20-8)); err == nil {
		t.Errorf("a full-size first datagram through B was answered; want it dropped as too_big")
	}
	if n := tw.drops(t)[DropTooBig]; n <= before {
		t.Errorf("too_big drops: %d, want more than %d", n, before)
	}
	if got, err := exchange(uc, strings.Repeat("y", 1500-20-8-8)); err != nil || !strings.HasPrefix(got, "master ") {
		t.Errorf("a datagram 8 bytes smaller: %q, %v; want the master's answer", got, err)
	}
	// Answered, the flow carries the option no more: full size passes.
	if got, err := exchange(uc, strings.Repeat("z", 1500-20-8)); err != nil || !strings.HasPrefix(got, "master ") {
		t.Errorf("a full-size datagram once the flow was answered: %q, %v; want the master's answer", got, err)
	}
}

// TestIngressMove: an outside client's connection through server B to
// the master on A goes on when the master moves to B, the server the
// client dialled (its flow lives there), and back to A, which still knows
// the flow; when the master moves to a third server, which does not, the
// connection ends with a reset at the client's next segment, never a
// hang.
func TestIngressMove(t *testing.T) {
	tw, out := ingressWorldOf(t, 3)
	serveCopy(t, tw.containers[1], 7)
	conn := dialOutside(t, out, netip.AddrPortFrom(tw.b.IP, 7007))
	echo := func(msg string) error {
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echoed %q, want %q", buf, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatalf("through B to the master on A: %v; drops %v", err, tw.drops(t))
	}
	tw.move(t, 1, 1, 33280)
	if err := echo("moved to B"); err != nil {
		t.Fatalf("after the master moved to B, the server dialled: %v; drops %v", err, tw.drops(t))
	}
	tw.move(t, 1, 0, 33280)
	if err := echo("back on A"); err != nil {
		t.Fatalf("after the master moved back to A: %v; drops %v", err, tw.drops(t))
	}
	tw.move(t, 1, 2, 32768)
	err := echo("on C")
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("after the master moved to a third server: %v, want a reset", err)
	}
}
