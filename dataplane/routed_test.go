package dataplane

import (
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/daolinet/daoli/internal/testbed"
)

// containerSpace holds every container address of these tests.
var containerSpace = netip.MustParsePrefix("10.0.0.0/8")

// TestRoutedFabric puts A and B on two subnets joined by a router that
// knows nothing but the two server subnets: containers on A and B reach
// each other both ways, only ServerIPs cross the router, and no route or
// neighbour entry for a container address exists anywhere outside the
// containers.
func TestRoutedFabric(t *testing.T) {
	w := testbed.NewRouted(t, 1, 1)
	tw := buildWorld(t, w, Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: netip.MustParseAddr("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}, {5353, UDP}}}, 1},
		{Endpoint{ID: 3, Network: 7, IP: trafficL, WireBase: 33024, IdentityBase: 1024, Ports: []Port{{8081, TCP}}}, 0},
		{Endpoint{ID: 4, Network: 7, IP: netip.MustParseAddr("10.1.0.3"), WireBase: 33024, IdentityBase: 1024}, 1},
	})
	serveTCP(t, tw.containers[2], 8080, "S")
	serveUDP(t, tw.containers[2], 5353, "S")
	serveTCP(t, tw.containers[3], 8081, "L")
	c, d := tw.containers[1], tw.containers[4]
	capt := startCapture(t, w.Fabric, "rt1")

	for _, tc := range []struct {
		from    *testbed.Container
		network string
		dst     netip.AddrPort
		want    string
	}{
		{c, "tcp4", netip.AddrPortFrom(trafficS, 8080), "S"},
		{c, "udp4", netip.AddrPortFrom(trafficS, 5353), "S"},
		{d, "tcp4", netip.AddrPortFrom(trafficL, 8081), "L"},
	} {
		name, seen := ask(t, tc.from, tc.network, tc.dst)
		if name != tc.want || seen.Addr() != tc.from.IP {
			t.Errorf("%s %s from %s: answered by %s seeing %s, want %s seeing %s", tc.network, tc.dst, tc.from.IP, name, seen, tc.want, tc.from.IP)
		}
	}
	if err := ping(c, trafficS, 0x5151); err != nil {
		t.Errorf("ping across the router: %v", err)
	}

	t.Run("time exceeded from the router", func(t *testing.T) {
		// TTL 2 leaves A with 1: the router answers time exceeded to
		// ServerIP_A, and C must get it.
		before := snmp(t, c.Namespace, "Icmp", "InTimeExcds")
		dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, 2) })
		}}
		var conn net.Conn
		if err := c.Do(func() (err error) {
			conn, err = dialer.Dial("udp4", netip.AddrPortFrom(trafficS, 5353).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte("short-lived"))
		deadline := time.Now().Add(2 * time.Second)
		for snmp(t, c.Namespace, "Icmp", "InTimeExcds") == before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if snmp(t, c.Namespace, "Icmp", "InTimeExcds") == before {
			t.Errorf("C got no time exceeded; drops %v", tw.drops(t))
		}
	})

	var wire int
	for _, f := range capt.stop() {
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ok || ip.DstIP.IsMulticast() {
			continue
		}
		src, _ := netip.AddrFromSlice(ip.SrcIP)
		dst, _ := netip.AddrFromSlice(ip.DstIP)
		if containerSpace.Contains(src) || containerSpace.Contains(dst) {
			t.Errorf("the router's leg carried %s -> %s", src, dst)
		}
		if testbed.Subnets[0].Contains(src) && testbed.Subnets[1].Contains(dst) ||
			testbed.Subnets[1].Contains(src) && testbed.Subnets[0].Contains(dst) {
			wire++
		}
	}
	if wire == 0 {
		t.Error("no packet between the subnets crossed the router")
	}

	// No route, and no neighbour, for a container anywhere outside the
	// containers.
	for _, ns := range []*testbed.Namespace{w.Router, w.Fabric, tw.a.Namespace, tw.b.Namespace} {
		routes := ns.Run("ip", "-4", "route", "show", "table", "all")
		neigh := ns.Run("ip", "-4", "neigh", "show")
		if ns == w.Router {
			t.Logf("router's routes:\n%s", routes)
		}
		for _, table := range []string{routes, neigh} {
			for _, line := range strings.Split(table, "\n") {
				for _, f := range strings.Fields(line) {
					p, err := netip.ParsePrefix(f)
					if err != nil {
						a, aerr := netip.ParseAddr(f)
						if aerr != nil {
							continue
						}
						p = netip.PrefixFrom(a, 32)
					}
					if p.Overlaps(containerSpace) {
						t.Errorf("%s knows a container address: %q", ns.Name, line)
					}
				}
			}
		}
	}
}
