package dataplane

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
)

// outsideWorld builds two servers and the host outside, behind a router
// whose link to it has an MTU of 1400:
//
//	server A 192.0.2.1: C 10.1.0.2 (network 7, may reach anywhere outside),
//	                    D 10.2.0.2 (network 8, may reach nothing outside)
//	server B 192.0.2.2: nothing yet (C moves there)
//	outside 203.0.113.10, behind the router 192.0.2.254 / 203.0.113.1
func outsideWorld(t *testing.T) (*trafficWorld, *testbed.Outside) {
	t.Helper()
	w := testbed.New(t, 2)
	out := w.AddOutside(1400)
	tw := buildWorld(t, w, Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: netip.MustParseAddr("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 8, IP: netip.MustParseAddr("10.2.0.2"), WireBase: 33024, IdentityBase: 1024}, 0},
	})
	// The agent's settings: the wire range is the dataplane's.
	tw.wirePorts = PortRange{First: 32768, Last: 36863}
	tw.networks = []Network{
		{ID: 7, Subnet: netip.MustParsePrefix("10.1.0.0/24"), Egress: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
		{ID: 8, Subnet: netip.MustParsePrefix("10.2.0.0/24")},
	}
	tw.apply(t)
	return tw, out
}

// listenOutside opens a listener of network ("tcp4" or "udp4") on port of
// the outside host, closed at cleanup.
func listenOutside[L io.Closer](t *testing.T, out *testbed.Outside, listen func(addr string) (L, error), port int) L {
	t.Helper()
	var l L
	err := out.Do(func() (err error) {
		l, err = listen(fmt.Sprintf("%s:%d", out.IP, port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestEgressTraffic: a container reaches a host outside the cluster with
// TCP (HTTP), UDP (also a query per new socket, more than its offsets)
// and ping; the host sees the server's address, never the
// container's, and so does the fabric; 2 MB with DF set cross a 1400-byte
// hop outside (the router's frag-needed reaches the container); a network
// without egress reaches nothing.
func TestEgressTraffic(t *testing.T) {
	tw, out := outsideWorld(t)
	c, d := tw.containers[1], tw.containers[2]

	// HTTP: the server answers with the address it saw.
	hl := listenOutside(t, out, func(a string) (net.Listener, error) { return net.Listen("tcp4", a) }, 80)
	go http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s\n", r.RemoteAddr)
	}))
	capt := startCapture(t, tw.w.Fabric, "s0")
	body, err := httpGet(c, netip.AddrPortFrom(out.IP, 80))
	frames := capt.stop()
	if err != nil {
		t.Fatalf("GET from the container: %v; drops %v", err, tw.drops(t))
	}
	seenBy, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(body), "hello "), ":")
	if seenBy != tw.a.IP.String() {
		t.Errorf("the outside host saw the request from %q, want the server's address %s", seenBy, tw.a.IP)
	}
	var toOut, fromOut int
	for _, f := range frames {
		_, src, dst, ok := ipv4Of(f)
		if !ok {
			continue
		}
		if src == c.IP || dst == c.IP {
			t.Errorf("the fabric carried the container's address: %s -> %s", src, dst)
		}
		switch {
		case dst == out.IP && src == tw.a.IP:
			toOut++
		case src == out.IP && dst == tw.a.IP:
			fromOut++
		}
	}
	if toOut == 0 || fromOut == 0 {
		t.Errorf("fabric capture: %d packets %s -> %s and %d back, want both", toOut, tw.a.IP, out.IP, fromOut)
	}

	// UDP: one request, one answer.
	serveUDPOutside(t, out, 53)
	if got, err := askUDP(c, netip.AddrPortFrom(out.IP, 53), "question"); err != nil || got != "question from "+tw.a.IP.String() {
		t.Errorf("UDP to the outside: %q, %v; want the answer, seen from %s; drops %v", got, err, tw.a.IP, tw.drops(t))
	}

	// DNS-like: every query from a new socket, more of them than C has
	// offsets towards the resolver (256); an answered one gives its
	// offset to a new query after 1 s.
	for i := range 300 {
		if got, err := askUDP(c, netip.AddrPortFrom(out.IP, 53), fmt.Sprint(i)); err != nil || got != fmt.Sprint(i)+" from "+tw.a.IP.String() {
			t.Fatalf("query %d from a new socket: %q, %v; drops %v", i, got, err, tw.drops(t))
		}
		time.Sleep(5 * time.Millisecond)
	}

	if err := pingFor(c, out.IP, 0x77, 2*time.Second); err != nil {
		t.Errorf("ping the outside: %v; drops %v", err, tw.drops(t))
	}

	// Path MTU: the router's hop to the outside is 1400 bytes.
	sl := listenOutside(t, out, func(a string) (net.Listener, error) { return net.Listen("tcp4", a) }, 9000)
	go serveSinkOn(sl)
	unreach := snmp(t, c.Namespace, "Icmp", "InDestUnreachs")
	if err := sendBulk(t, c, netip.AddrPortFrom(out.IP, 9000), pattern(2<<20), 20*time.Second); err != nil {
		t.Fatalf("2 MB with DF to the outside over a 1400-byte hop: %v; drops %v", err, tw.drops(t))
	}
	if got := snmp(t, c.Namespace, "Icmp", "InDestUnreachs") - unreach; got == 0 {
		t.Error("the container got no destination-unreachable from the router")
	}
	if route := c.Run("ip", "route", "get", out.IP.String()); !strings.Contains(route, "mtu 1400") {
		t.Errorf("container's route to %s: %q, want the learnt mtu 1400", out.IP, route)
	}

	// Network 8 has no egress.
	before := tw.drops(t)
	dialFails(t, d, netip.Addr{}, netip.AddrPortFrom(out.IP, 80))
	if got := rose(before, tw.drops(t), DropEgressDenied); got == 0 {
		t.Error("egress_denied did not rise for a network without egress")
	}
}

// TestEgressMove moves a container that has connections to the outside:
// TCP connections end with a reset, for whichever side sends first (the
// container's from its new server, the outside host's from the old one),
// never with a silent hang; a UDP exchange goes on from the new server's
// address.
func TestEgressMove(t *testing.T) {
	tw, out := outsideWorld(t)
	c := tw.containers[1]

	tl := listenOutside(t, out, func(a string) (net.Listener, error) { return net.Listen("tcp4", a) }, 7000)
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			conn, err := tl.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	serveUDPOutside(t, out, 7001)

	dial := func() (net.Conn, net.Conn) {
		t.Helper()
		var conn net.Conn
		if err := c.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(out.IP, 7000).String(), 3*time.Second)
			return err
		}); err != nil {
			t.Fatalf("dial the outside: %v; drops %v", err, tw.drops(t))
		}
		t.Cleanup(func() { conn.Close() })
		select {
		case peer := <-accepted:
			t.Cleanup(func() { peer.Close() })
			return conn, peer
		case <-time.After(3 * time.Second):
			t.Fatal("the outside host accepted nothing")
		}
		return nil, nil
	}
	mine, theirs := dial() // the container will send first
	mine2, theirs2 := dial()
	for _, p := range [][2]net.Conn{{mine, theirs}, {mine2, theirs2}} {
		if _, err := p[0].Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		p[1].SetReadDeadline(time.Now().Add(3 * time.Second))
		if line, err := bufio.NewReader(p[1]).ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("before the move: %q, %v", line, err)
		}
	}
	var udp *net.UDPConn
	if err := c.Do(func() (err error) {
		udp, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(out.IP, 7001)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if got, err := exchange(udp, "before"); err != nil || got != "before from "+tw.a.IP.String() {
		t.Fatalf("UDP before the move: %q, %v", got, err)
	}

	// The move: C's wire block is now one of server B's.
	tw.move(t, 1, 1, 33280)
	to := tw.servers[1]

	if got, err := exchange(udp, "after"); err != nil || got != "after from "+to.IP.String() {
		t.Errorf("UDP after the move: %q, %v; want the answer, now seen from %s", got, err, to.IP)
	}
	// Each side learns with a reset, well before any TCP timeout.
	expectReset := func(who string, conn net.Conn) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		var err error
		for i := 0; i < 3 && err == nil; i++ {
			if _, err = conn.Write([]byte("after the move\n")); err == nil {
				_, err = conn.Read(make([]byte, 64))
			}
		}
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Errorf("%s: %v after the move, want a reset", who, err)
		}
	}
	expectReset("the container, sending first", mine)
	expectReset("the outside host, sending first", theirs2)
}

// httpGet fetches / from addr in container c. The connection is dialled in
// c's namespace: net/http's own dialer would run in another goroutine, in
// another namespace.
func httpGet(c *testbed.Container, addr netip.AddrPort) (string, error) {
	var conn net.Conn
	if err := c.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp4", addr.String(), 3*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	req, err := http.NewRequest(http.MethodGet, "http://"+addr.String()+"/", nil)
	if err != nil {
		return "", err
	}
	if err := req.Write(conn); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", addr, resp.Status)
	}
	return string(b), err
}

// serveUDPOutside answers every datagram to port of the outside host with
// "<datagram> from <sender's address>".
func serveUDPOutside(t *testing.T, out *testbed.Outside, port int) {
	t.Helper()
	ul := listenOutside(t, out, func(a string) (*net.UDPConn, error) {
		return net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(a)))
	}, port)
	go func() {
		b := make([]byte, 1500)
		for {
			n, from, err := ul.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			ul.WriteToUDPAddrPort([]byte(string(b[:n])+" from "+from.Addr().String()), from)
		}
	}()
}

// askUDP sends one datagram from container c to addr and returns the
// answer.
func askUDP(c *testbed.Container, addr netip.AddrPort, msg string) (string, error) {
	var conn *net.UDPConn
	if err := c.Do(func() (err error) {
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		return "", err
	}
	defer conn.Close()
	return exchange(conn, msg)
}

// exchange sends msg on conn and waits for one answer, resending a few
// times.
func exchange(conn *net.UDPConn, msg string) (string, error) {
	b := make([]byte, 1500)
	var err error
	for range 5 {
		if _, err = conn.Write([]byte(msg)); err != nil {
			return "", err
		}
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var n int
		if n, err = conn.Read(b); err == nil {
			return string(b[:n]), nil
		}
	}
	return "", err
}
