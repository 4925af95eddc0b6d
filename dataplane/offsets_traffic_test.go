package dataplane

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/daolinet/daoli/internal/testbed"
)

// TestOffsetsPerDestinationTraffic keeps 255 TCP connections open from one
// client to one backend port, every flow offset the client has, and
// checks with real traffic that the client still reaches other ports,
// other backends and backends on its own server; that the next connection
// to the full port is refused at once (a reset, not a timeout), as is the
// next UDP flow once 255 are open; and that closing one connection frees
// its offset.
func TestOffsetsPerDestinationTraffic(t *testing.T) {
	ip := netip.MustParseAddr
	ipS2 := ip("10.1.0.10")
	tw := buildWorld(t, testbed.New(t, 2), Config{}, []placed{
		// C serves one port: 255 flow offsets per destination.
		{Endpoint{ID: 1, Network: 7, IP: ip("10.1.0.2"), WireBase: 32768, IdentityBase: 1024, Ports: []Port{{7000, TCP}}}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024,
			Ports: []Port{{8080, TCP}, {8081, TCP}, {5353, UDP}}}, 1},
		{Endpoint{ID: 3, Network: 7, IP: ipS2, WireBase: 33024, IdentityBase: 1024, Ports: []Port{{8080, TCP}}}, 1},
		{Endpoint{ID: 4, Network: 7, IP: trafficL, WireBase: 33024, IdentityBase: 1024, Ports: []Port{{8080, TCP}}}, 0},
	})
	client := tw.containers[1]
	const offsets = 255
	full := netip.AddrPortFrom(trafficS, 8080)
	accepted := serveEcho(t, tw.containers[2], 8080)
	serveTCP(t, tw.containers[2], 8081, "S1b")
	serveUDP(t, tw.containers[2], 5353, "S1")
	serveTCP(t, tw.containers[3], 8080, "S2")
	serveTCP(t, tw.containers[4], 8080, "L")

	held := make([]net.Conn, 0, offsets)
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for range offsets {
		held = append(held, dialEcho(t, client, full))
	}
	if n := accepted.Load(); n != offsets {
		t.Fatalf("S1 accepted %d connections, want %d", n, offsets)
	}

	// Every other destination has offsets of its own.
	for _, tc := range []struct {
		addr netip.AddrPort
		name string
	}{
		{netip.AddrPortFrom(trafficS, 8081), "S1b"},
		{netip.AddrPortFrom(ipS2, 8080), "S2"},
		{netip.AddrPortFrom(trafficL, 8080), "L"},
	} {
		if name, remote := ask(t, client, "tcp4", tc.addr); name != tc.name || remote.Addr() != client.IP {
			t.Errorf("%s answered by %s seeing %s, want %s seeing %s", tc.addr, name, remote, tc.name, client.IP)
		}
	}

	// The 256th connection to the full port is refused at once.
	before := tw.drops(t)[DropOffsetsFull]
	var err error
	start := time.Now()
	client.Do(func() error {
		var conn net.Conn
		conn, err = net.DialTimeout("tcp4", full.String(), 5*time.Second)
		if err == nil {
			conn.Close()
		}
		return nil
	})
	if !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("connection %d to %s: %v after %s, want connection refused", offsets+1, full, err, time.Since(start))
	}
	t.Logf("connection %d to %s: %v after %s", offsets+1, full, err, time.Since(start))
	if got := tw.drops(t)[DropOffsetsFull] - before; got < 1 {
		t.Errorf("offsets_full rose by %d, want at least 1", got)
	}
	// No open connection lost its offset.
	echo(t, held[0], "first")
	echo(t, held[offsets-1], "last")

	// UDP: 255 sockets hold every offset to S1:5353; the next one gets a
	// port unreachable, which its socket reports as ECONNREFUSED.
	udp := netip.AddrPortFrom(trafficS, 5353)
	for i := range offsets {
		var conn net.Conn
		if err := client.Do(func() (err error) {
			conn, err = net.Dial("udp4", udp.String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		held = append(held, conn)
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Write([]byte("hi")); err != nil {
			t.Fatalf("UDP flow %d: send: %v", i, err)
		}
		if _, err := conn.Read(make([]byte, 100)); err != nil {
			t.Fatalf("UDP flow %d: %v; drops %v", i, err, tw.drops(t))
		}
	}
	if err := udpRefused(client, udp); err != nil {
		t.Errorf("UDP flow %d: %v; drops %v", offsets+1, err, tw.drops(t))
	}

	// Closing one connection frees its offset, for reuse within moments.
	held[0].Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		var conn net.Conn
		client.Do(func() error {
			conn, err = net.DialTimeout("tcp4", full.String(), time.Second)
			return nil
		})
		if err == nil {
			echo(t, conn, "again")
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing a connection: %v; want its offset reused", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSustainedConnections opens connection after connection from one
// client to one backend port, each closed after one answer, for a few
// seconds: far more connections than the client has offsets must all
// succeed, as closed flows give their offsets back. It runs over the wire
// and on one server, with either side closing first: when the backend
// closes first it would hold TIME_WAIT for the 4-tuple the next flow on
// the offset reuses, which the dataplane ends (end_time_wait).
func TestSustainedConnections(t *testing.T) {
	ip := netip.MustParseAddr
	tw := buildWorld(t, testbed.New(t, 2), Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: ip("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}, {8081, TCP}}}, 1},
		{Endpoint{ID: 3, Network: 7, IP: trafficL, WireBase: 33024, IdentityBase: 1024, Ports: []Port{{8080, TCP}, {8081, TCP}}}, 0},
	})
	client := tw.containers[1]
	const offsets = 256 // C serves no port
	for _, id := range []uint32{2, 3} {
		serveTCP(t, tw.containers[id], 8080, "server-first")  // writes, then closes
		serveLast(t, tw.containers[id], 8081, "client-first") // writes, closes after the client
	}
	for _, tc := range []struct {
		name    string
		addr    netip.AddrPort
		backend uint32
	}{
		{"over the wire, server closes first", netip.AddrPortFrom(trafficS, 8080), 2},
		{"over the wire, client closes first", netip.AddrPortFrom(trafficS, 8081), 2},
		{"on one server, server closes first", netip.AddrPortFrom(trafficL, 8080), 3},
		{"on one server, client closes first", netip.AddrPortFrom(trafficL, 8081), 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tw.drops(t)
			ok, failed := 0, 0
			var firstErr error
			start := time.Now()
			client.Do(func() error {
				for time.Since(start) < 750*time.Millisecond { // 3 s in all
					if err := request(tc.addr); err != nil {
						failed++
						if firstErr == nil {
							firstErr = err
						}
						continue
					}
					ok++
				}
				return nil
			})
			elapsed := time.Since(start)
			t.Logf("%d connections in %s (%.0f/s), %d failed", ok, elapsed.Round(time.Millisecond), float64(ok)/elapsed.Seconds(), failed)
			if failed > 0 {
				t.Errorf("%d of %d connections failed, first: %v", failed, ok+failed, firstErr)
			}
			if ok <= offsets {
				t.Errorf("%d connections succeeded, want more than the client's %d offsets", ok, offsets)
			}
			if n := tw.drops(t)[DropOffsetsFull] - before[DropOffsetsFull]; n > 0 {
				t.Errorf("offsets_full rose by %d, want 0", n)
			}
			// The backend keeps almost no TIME_WAIT: the dataplane
			// ends each one as its flow closes (a few may escape, to
			// a lost or overtaken reset).
			out, err := tw.containers[tc.backend].Output("ss", "-Htan", "state", "time-wait",
				"sport", "=", fmt.Sprintf(":%d", tc.addr.Port()))
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(out, "\n"); n > ok/10 {
				t.Errorf("the backend holds %d TIME_WAIT sockets after %d connections, want them ended as flows close", n, ok)
			}
		})
	}
}

// request connects to addr from the calling thread's namespace, reads one
// line and closes.
func request(addr netip.AddrPort) error {
	conn, err := net.DialTimeout("tcp4", addr.String(), 3*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	return nil
}

// serveLast answers every connection with "name remote-address" and closes
// it only after the client did.
func serveLast(t *testing.T, c *testbed.Container, port int, name string) {
	t.Helper()
	var l net.Listener
	err := c.Do(func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", c.IP, port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				fmt.Fprintf(conn, "%s %s\n", name, conn.RemoteAddr())
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				conn.Read(make([]byte, 1)) // until the client's FIN
			}()
		}
	}()
}
