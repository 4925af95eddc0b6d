package dataplane

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/daolinet/daoli/internal/testbed"
)

// serveEcho echoes every line of every connection and counts the
// connections it accepted.
func serveEcho(t *testing.T, c *testbed.Container, port int) *atomic.Int32 {
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
	var accepted atomic.Int32
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := conn.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return &accepted
}

// dialFails checks that a TCP connection from c to addr (from local, when
// valid) is not established within half a second.
func dialFails(t *testing.T, c *testbed.Container, local netip.Addr, addr netip.AddrPort) {
	t.Helper()
	d := net.Dialer{Timeout: 500 * time.Millisecond}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	err := c.Do(func() error {
		conn, err := d.Dial("tcp4", addr.String())
		if err == nil {
			conn.Close()
		}
		return err
	})
	if err == nil {
		t.Errorf("%s reached %s, want it dropped", c.IP, addr)
	}
}

// rose returns how much counter r rose from before to after.
func rose(before, after map[DropReason]uint64, r DropReason) uint64 { return after[r] - before[r] }

// TestOverlappingNetworks runs two networks with the same subnet, even the
// same addresses, on the same two servers: each client reaches its own
// network's service behind a shared IP, and an address only the other
// network serves is dropped as no_service.
func TestOverlappingNetworks(t *testing.T) {
	ip := netip.MustParseAddr
	web := []Port{{8080, TCP}}
	tw := buildWorld(t, testbed.New(t, 2), Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: ip("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: ip("10.1.0.9"), WireBase: 32768, IdentityBase: 1024, Ports: web}, 1},
		{Endpoint{ID: 11, Network: 8, IP: ip("10.1.0.2"), WireBase: 33024, IdentityBase: 1024}, 1},
		{Endpoint{ID: 12, Network: 8, IP: ip("10.1.0.9"), WireBase: 33024, IdentityBase: 1024, Ports: web}, 0},
		{Endpoint{ID: 13, Network: 8, IP: ip("10.1.0.40"), WireBase: 33280, IdentityBase: 1024, Ports: web}, 1},
	})
	serveTCP(t, tw.containers[2], 8080, "S7")
	serveTCP(t, tw.containers[12], 8080, "S8")
	serveTCP(t, tw.containers[13], 8080, "Z8")
	c7, c8 := tw.containers[1], tw.containers[11]

	for _, tc := range []struct {
		client *testbed.Container
		dst    netip.AddrPort
		want   string
	}{
		{c7, netip.MustParseAddrPort("10.1.0.9:8080"), "S7"},
		{c8, netip.MustParseAddrPort("10.1.0.9:8080"), "S8"},
		{c8, netip.MustParseAddrPort("10.1.0.40:8080"), "Z8"},
	} {
		name, remote := ask(t, tc.client, "tcp4", tc.dst)
		if name != tc.want || remote.Addr() != ip("10.1.0.2") {
			t.Errorf("%s in its network dialled %s: answered by %s seeing %s, want %s seeing 10.1.0.2",
				tc.client.Name, tc.dst, name, remote, tc.want)
		}
	}

	before := drops(t, tw.dpA)
	dialFails(t, c7, netip.Addr{}, netip.MustParseAddrPort("10.1.0.40:8080"))
	if err := pingFor(c7, ip("10.1.0.40"), 0x77, 400*time.Millisecond); err == nil {
		t.Error("network 7 pinged 10.1.0.40 of network 8")
	}
	if got := rose(before, drops(t, tw.dpA), DropNoService); got < 2 {
		t.Errorf("no_service rose by %d on the client's server, want the SYN and the echo (at least 2)", got)
	}
}

// TestSpoofedSource sends from a real container with an address and with
// a MAC that are not its own: both are dropped on its server, counted as
// spoofed, and never reach the service.
func TestSpoofedSource(t *testing.T) {
	tw := buildWorld(t, testbed.New(t, 2), Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: netip.MustParseAddr("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}}}, 1},
	})
	client := tw.containers[1]
	accepted := serveEcho(t, tw.containers[2], 8080)
	service := netip.AddrPortFrom(trafficS, 8080)
	spoofed := netip.MustParseAddr("10.1.0.99")
	client.Run("ip", "addr", "add", spoofed.String()+"/24", "dev", "eth0")
	// A static neighbour, so the kernel sends the SYN without asking
	// (an ARP from the second address would be dropped as spoofed too).
	client.Run("ip", "neigh", "replace", trafficS.String(), "lladdr", DefaultGatewayMAC.String(), "dev", "eth0", "nud", "permanent")

	t.Run("source address", func(t *testing.T) {
		before := drops(t, tw.dpA)
		dialFails(t, client, spoofed, service)
		if got := rose(before, drops(t, tw.dpA), DropSpoofed); got == 0 {
			t.Error("spoofed counter did not rise")
		}
	})
	t.Run("source MAC", func(t *testing.T) {
		syn := pkt{srcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0xee, 0xee}, dstMAC: DefaultGatewayMAC, src: client.IP,
			dst: trafficS, proto: layers.IPProtocolTCP, sport: 40000, dport: 8080, syn: true}
		before := drops(t, tw.dpA)
		if err := sendFrame(client, "eth0", syn.bytes(t)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for rose(before, drops(t, tw.dpA), DropSpoofed) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := rose(before, drops(t, tw.dpA), DropSpoofed); got == 0 {
			t.Error("spoofed counter did not rise")
		}
	})
	if n := accepted.Load(); n != 0 {
		t.Errorf("the service accepted %d connections from spoofed sources, want 0", n)
	}
	// The container's own address still works.
	conn := dialEcho(t, client, service)
	conn.Close()
	if n := accepted.Load(); n != 1 {
		t.Errorf("the service accepted %d connections, want 1 from the real address", n)
	}
}

// sendFrame writes one Ethernet frame to ifname inside the container.
func sendFrame(c *testbed.Container, ifname string, frame []byte) error {
	return sendFrames(c, ifname, [][]byte{frame})
}

// sendFrames writes Ethernet frames to ifname inside the container, in a
// burst through one socket.
func sendFrames(c *testbed.Container, ifname string, frames [][]byte) error {
	l, err := c.Link(ifname)
	if err != nil {
		return err
	}
	var fd int
	if err := c.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		return err
	}); err != nil {
		return fmt.Errorf("open packet socket: %w", err)
	}
	defer unix.Close(fd)
	for _, frame := range frames {
		to := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6}
		copy(to.Addr[:], frame[:6])
		if err := unix.Sendto(fd, frame, 0, to); err != nil {
			return fmt.Errorf("send frame: %w", err)
		}
	}
	return nil
}

// dialEcho connects c to an echo service and checks one line.
func dialEcho(t *testing.T, c *testbed.Container, addr netip.AddrPort) net.Conn {
	t.Helper()
	var conn net.Conn
	if err := c.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp4", addr.String(), 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	echo(t, conn, "hello")
	return conn
}

// echo sends line over conn and expects it back.
func echo(t *testing.T, conn net.Conn, line string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(conn, line); err != nil {
		t.Fatalf("send %q: %v", line, err)
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo of %q: %q, %v", line, got, err)
	}
}

// TestPolicyTraffic connects two networks with a Policy and isolates one
// network from itself, with real traffic.
func TestPolicyTraffic(t *testing.T) {
	ip := netip.MustParseAddr
	tw := buildWorld(t, testbed.New(t, 2), Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: ip("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}}}, 1},
		{Endpoint{ID: 3, Network: 9, IP: ip("10.2.0.5"), WireBase: 33024, IdentityBase: 1024, Ports: []Port{{7000, TCP}, {7001, UDP}}}, 1},
		{Endpoint{ID: 4, Network: 9, IP: ip("10.2.0.6"), WireBase: 33024, IdentityBase: 1024, Ports: []Port{{7000, TCP}}}, 0},
	})
	client := tw.containers[1]
	serveTCP(t, tw.containers[2], 8080, "S")
	serveTCP(t, tw.containers[3], 7000, "P")
	serveUDP(t, tw.containers[3], 7001, "P")
	serveTCP(t, tw.containers[4], 7000, "P2")
	remote, local := netip.MustParseAddrPort("10.2.0.5:7000"), netip.MustParseAddrPort("10.2.0.6:7000")
	setPolicies := func(ps ...Policy) {
		tw.policies = ps
		tw.apply(t)
	}

	t.Run("no policy", func(t *testing.T) {
		before := drops(t, tw.dpA)
		dialFails(t, client, netip.Addr{}, remote)
		if got := rose(before, drops(t, tw.dpA), DropNoService); got == 0 {
			t.Error("no_service did not rise: network 9 must be invisible from 7")
		}
	})
	t.Run("allowed", func(t *testing.T) {
		setPolicies(Policy{From: 7, To: 9, Allow: true})
		for _, tc := range []struct {
			network string
			dst     netip.AddrPort
			want    string
		}{{"tcp4", remote, "P"}, {"udp4", netip.MustParseAddrPort("10.2.0.5:7001"), "P"}, {"tcp4", local, "P2"}} {
			name, seen := ask(t, client, tc.network, tc.dst)
			if name != tc.want || seen.Addr() != client.IP {
				t.Errorf("%s %s: answered by %s seeing %s, want %s seeing %s", tc.network, tc.dst, name, seen, tc.want, client.IP)
			}
		}
		// Network 7 still reaches its own service.
		if name, _ := ask(t, client, "tcp4", netip.AddrPortFrom(trafficS, 8080)); name != "S" {
			t.Errorf("own service answered by %s, want S", name)
		}
	})
	t.Run("one service exported", func(t *testing.T) {
		setPolicies(Policy{From: 7, To: 9, Allow: true, Only: []ServiceRef{{remote.Addr(), Port{7000, TCP}}}})
		if name, seen := ask(t, client, "tcp4", remote); name != "P" || seen.Addr() != client.IP {
			t.Errorf("the exported %s: answered by %s seeing %s, want P seeing %s", remote, name, seen, client.IP)
		}
		// The same endpoint's other port, and the same port of another
		// IP, stay invisible.
		before := drops(t, tw.dpA)
		if _, err := askUDP(client, netip.MustParseAddrPort("10.2.0.5:7001"), "hello"); err == nil {
			t.Error("10.2.0.5:7001/udp answered: only 7000/tcp is exported")
		}
		dialFails(t, client, netip.Addr{}, local)
		if got := rose(before, drops(t, tw.dpA), DropNoService); got < 2 {
			t.Errorf("no_service rose by %d, want at least 2", got)
		}
	})
	t.Run("denied", func(t *testing.T) {
		setPolicies(Policy{From: 7, To: 9, Allow: false})
		before := drops(t, tw.dpA)
		dialFails(t, client, netip.Addr{}, remote)
		if got := rose(before, drops(t, tw.dpA), DropPolicy); got == 0 {
			t.Error("policy counter did not rise")
		}
	})
	t.Run("network isolated from itself", func(t *testing.T) {
		setPolicies(Policy{From: 7, To: 7, Allow: false})
		before := drops(t, tw.dpA)
		dialFails(t, client, netip.Addr{}, netip.AddrPortFrom(trafficS, 8080))
		if got := rose(before, drops(t, tw.dpA), DropPolicy); got == 0 {
			t.Error("policy counter did not rise")
		}
		setPolicies()
		if name, _ := ask(t, client, "tcp4", netip.AddrPortFrom(trafficS, 8080)); name != "S" {
			t.Errorf("with the policy gone: answered by %s, want S", name)
		}
	})
	t.Run("allow removed under a live flow", func(t *testing.T) {
		setPolicies(Policy{From: 7, To: 9, Allow: true})
		var conn net.Conn
		if err := client.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp4", remote.String(), 3*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		setPolicies()
		before := drops(t, tw.dpB)
		conn.Write([]byte("still there?"))
		deadline := time.Now().Add(2 * time.Second)
		for rose(before, drops(t, tw.dpB), DropPolicy) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := rose(before, drops(t, tw.dpB), DropPolicy); got == 0 {
			t.Error("the backend's server let the flow through after its policy went")
		}
	})
}
