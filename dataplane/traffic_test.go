package dataplane

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/daolinet/daoli/internal/testbed"
)

// trafficWorld is a testbed whose servers each run a loaded and attached
// Dataplane, and the endpoints it placed on them.
type trafficWorld struct {
	w          *testbed.World
	servers    []*testbed.Server
	dps        []*Dataplane
	containers map[uint32]*testbed.Container
	endpoints  []Endpoint
	policies   []Policy
	// networks, when not nil, are the State's networks; nil means one per
	// network id of the endpoints, the /24 of their addresses, without
	// egress.
	networks []Network
	// wirePorts, when set, is the State's WirePorts, with each server's
	// own address as its LocalIPs.
	wirePorts PortRange
	// published and gatewayBase are the State's (ingress).
	published   []Published
	gatewayBase uint16
	// a, b, dpA and dpB are the first two servers and their Dataplanes.
	a, b     *testbed.Server
	dpA, dpB *Dataplane
}

// placed is an endpoint to create on server on (an index into Servers).
type placed struct {
	e  Endpoint
	on int
}

var (
	trafficS   = netip.MustParseAddr("10.1.0.9")
	trafficL   = netip.MustParseAddr("10.1.0.20")
	trafficR   = netip.MustParseAddr("10.1.0.30")
	wireRangeA = [2]uint16{32768, 32768 + 256} // C's wire block
)

// newTrafficWorld builds two servers in a testbed:
//
//	server A 192.0.2.1: C 10.1.0.2 (client), S2 10.1.0.9 (backup), L 10.1.0.20, R3 10.1.0.30
//	server B 192.0.2.2: S 10.1.0.9 (master), R1 10.1.0.30, R2 10.1.0.30
//
// All endpoints are in network 7; S and S2 share an IP in failover mode,
// R1-R3 share one in balance mode. Nobody listens on 6000/udp of S and S2
// and 6001/udp of L.
func newTrafficWorld(t *testing.T, cfg Config) *trafficWorld {
	web := []Port{{8080, TCP}, {5353, UDP}, {6000, UDP}}
	bal := []Port{{9000, TCP}}
	return buildWorld(t, testbed.New(t, 2), cfg, []placed{
		{Endpoint{ID: 1, Network: 7, IP: netip.MustParseAddr("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: web, Priority: 10}, 1},
		{Endpoint{ID: 3, Network: 7, IP: trafficS, WireBase: 33024, IdentityBase: 1280, Ports: web, Priority: 5}, 0},
		{Endpoint{ID: 4, Network: 7, IP: trafficL, WireBase: 33280, IdentityBase: 1024, Ports: []Port{{8081, TCP}, {6001, UDP}}}, 0},
		{Endpoint{ID: 5, Network: 7, IP: trafficR, WireBase: 33024, IdentityBase: 1024, Ports: bal, Mode: Balance}, 1},
		{Endpoint{ID: 6, Network: 7, IP: trafficR, WireBase: 33280, IdentityBase: 1280, Ports: bal, Mode: Balance}, 1},
		{Endpoint{ID: 7, Network: 7, IP: trafficR, WireBase: 33536, IdentityBase: 1536, Ports: bal, Mode: Balance}, 0},
	})
}

// buildWorld creates a container per endpoint (in a /24 with gateway .1),
// loads a Dataplane per server of w with cfg (BPFFSPath is set here),
// attaches it and applies the State.
func buildWorld(t *testing.T, w *testbed.World, cfg Config, eps []placed) *trafficWorld {
	t.Helper()
	tw := &trafficWorld{w: w, servers: w.Servers, containers: map[uint32]*testbed.Container{}}
	bpffs := testbed.BPFFS(t)
	for _, p := range eps {
		e := p.e
		gw := netip.PrefixFrom(e.IP, 24).Masked().Addr().Next()
		c := w.AddContainer(w.Servers[p.on], netip.PrefixFrom(e.IP, 24), gw)
		e.MAC, e.Server = c.MAC, c.Server.IP
		tw.containers[e.ID] = c
		tw.endpoints = append(tw.endpoints, e)
	}
	for i, s := range w.Servers {
		cfg.BPFFSPath = fmt.Sprintf("%s/server%d", bpffs, i)
		d, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := d.Remove(); err != nil {
				t.Errorf("remove dataplane: %v", err)
			}
			d.Close()
		})
		err = s.Do(func() error {
			if err := d.AttachUplink(s.UplinkIfindex); err != nil {
				return err
			}
			for _, e := range tw.endpoints {
				if c := tw.containers[e.ID]; c.Server == s {
					if err := d.AttachEndpoint(c.HostIfindex); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		tw.dps = append(tw.dps, d)
	}
	tw.a, tw.dpA = tw.servers[0], tw.dps[0]
	if len(tw.servers) > 1 {
		tw.b, tw.dpB = tw.servers[1], tw.dps[1]
	}
	tw.apply(t)
	return tw
}

// apply gives each server the State with its own endpoints' ifindexes.
func (tw *trafficWorld) apply(t *testing.T) {
	t.Helper()
	var servers []Server
	for _, s := range tw.servers {
		servers = append(servers, Server{IP: s.IP, MAC: s.MAC})
	}
	networks := tw.networks
	if networks == nil {
		seen := map[uint32]bool{}
		for _, e := range tw.endpoints {
			if !seen[e.Network] {
				seen[e.Network] = true
				networks = append(networks, Network{ID: e.Network, Subnet: netip.PrefixFrom(e.IP, 24).Masked()})
			}
		}
	}
	for i, s := range tw.servers {
		st := State{Servers: servers, Policies: tw.policies, Networks: networks, WirePorts: tw.wirePorts,
			Published: tw.published, GatewayBase: tw.gatewayBase}
		if tw.wirePorts != (PortRange{}) {
			st.LocalIPs = []netip.Addr{s.IP}
		}
		for _, e := range tw.endpoints {
			if c := tw.containers[e.ID]; c.Server == s {
				e.Ifindex = c.HostIfindex
			}
			st.Endpoints = append(st.Endpoints, e)
		}
		if err := tw.dps[i].Apply(st); err != nil {
			t.Fatal(err)
		}
	}
}

func (tw *trafficWorld) setState(id uint32, s EndpointState) {
	for i := range tw.endpoints {
		if tw.endpoints[i].ID == id {
			tw.endpoints[i].State = s
		}
	}
}

// endpoint returns a pointer to the endpoint with id, to change it before
// the next apply.
func (tw *trafficWorld) endpoint(t *testing.T, id uint32) *Endpoint {
	t.Helper()
	for i := range tw.endpoints {
		if tw.endpoints[i].ID == id {
			return &tw.endpoints[i]
		}
	}
	t.Fatalf("no endpoint %d", id)
	return nil
}

// move moves endpoint id's container to server to, as a live migration
// does: detached from its old veth, plugged into to, attached there, and
// every server given its new location with the wire block wireBase of to.
func (tw *trafficWorld) move(t *testing.T, id uint32, to int, wireBase uint16) {
	t.Helper()
	c := tw.containers[id]
	from := slices.Index(tw.servers, c.Server)
	if err := c.Server.Do(func() error { return tw.dps[from].Detach(c.HostIfindex) }); err != nil {
		t.Fatal(err)
	}
	tw.w.Move(c, tw.servers[to])
	if err := tw.servers[to].Do(func() error { return tw.dps[to].AttachEndpoint(c.HostIfindex) }); err != nil {
		t.Fatal(err)
	}
	e := tw.endpoint(t, id)
	e.Server, e.WireBase = tw.servers[to].IP, wireBase
	tw.apply(t)
}

// ipv4Of decodes a captured frame's IPv4 header and its addresses; ok is
// false for a frame that carries no IPv4.
func ipv4Of(frame []byte) (ip *layers.IPv4, src, dst netip.Addr, ok bool) {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if ip, ok = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); !ok {
		return nil, netip.Addr{}, netip.Addr{}, false
	}
	src, _ = netip.AddrFromSlice(ip.SrcIP)
	dst, _ = netip.AddrFromSlice(ip.DstIP)
	return ip, src, dst, true
}

// drops sums the drop counters of every server.
func (tw *trafficWorld) drops(t *testing.T) map[DropReason]uint64 {
	t.Helper()
	sum := map[DropReason]uint64{}
	for _, d := range tw.dps {
		for r, n := range drops(t, d) {
			if n > 0 {
				sum[r] += n
			}
		}
	}
	return sum
}

// serveTCP answers every connection with "name remote-address".
func serveTCP(t *testing.T, c *testbed.Container, port int, name string) {
	t.Helper()
	serveConns(t, c, port, func(conn net.Conn) {
		fmt.Fprintf(conn, "%s %s\n", name, conn.RemoteAddr())
		conn.Close()
	})
}

// serveConns listens on TCP port of c until cleanup and hands every
// connection to handle, one after the other.
func serveConns(t *testing.T, c *testbed.Container, port int, handle func(net.Conn)) {
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
			handle(conn)
		}
	}()
}

// serveUDP answers every datagram with "name remote-address".
func serveUDP(t *testing.T, c *testbed.Container, port int, name string) {
	t.Helper()
	var pc net.PacketConn
	err := c.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf("%s:%d", c.IP, port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", name, from)), from)
		}
	}()
}

// ask dials addr from container c and returns the answer's two words.
func ask(t *testing.T, c *testbed.Container, network string, addr netip.AddrPort) (name string, remote netip.AddrPort) {
	t.Helper()
	var conn net.Conn
	err := c.Do(func() (err error) {
		conn, err = (&net.Dialer{Timeout: 3 * time.Second}).Dial(network, addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("dial %s %s from %s: %v", network, addr, c.IP, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if network == "udp4" {
		if _, err := conn.Write([]byte("hi")); err != nil {
			t.Fatalf("send to %s: %v", addr, err)
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s %s: %v", network, addr, err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		t.Fatalf("answer %q: want two words", line)
	}
	remote, err = netip.ParseAddrPort(f[1])
	if err != nil {
		t.Fatalf("answer %q: %v", line, err)
	}
	return f[0], remote
}

// ping sends one ICMP echo from container c to dst through a raw socket and
// waits for the reply.
func ping(c *testbed.Container, dst netip.Addr, id uint16) error {
	return pingFor(c, dst, id, 3*time.Second)
}

// pingFor is ping that gives up after timeout.
func pingFor(c *testbed.Container, dst netip.Addr, id uint16, timeout time.Duration) error {
	var fd int
	err := c.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		return fmt.Errorf("open raw socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := gopacket.NewSerializeBuffer()
	echo := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: id, Seq: 1}
	err = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, echo, gopacket.Payload("daoli"))
	if err != nil {
		return err
	}
	to := &unix.SockaddrInet4{Addr: dst.As4()}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := unix.Sendto(fd, buf.Bytes(), 0, to); err != nil {
			return fmt.Errorf("send echo: %w", err)
		}
		rb := make([]byte, 1500)
		for {
			n, _, err := unix.Recvfrom(fd, rb, 0)
			if err != nil {
				break // timeout: send again
			}
			p := gopacket.NewPacket(rb[:n], layers.LayerTypeIPv4, gopacket.Default)
			ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			r, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if ip != nil && r != nil && r.TypeCode.Type() == layers.ICMPv4TypeEchoReply && r.Id == id &&
				net.IP(ip.SrcIP).Equal(dst.AsSlice()) {
				return nil
			}
		}
	}
	return errors.New("no echo reply")
}

// capture records the frames crossing one fabric port.
type capture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	stopc  chan struct{}
	done   chan struct{}
	once   sync.Once
}

func startCapture(t *testing.T, fabric *testbed.Namespace, port string) *capture {
	t.Helper()
	l, err := fabric.Link(port)
	if err != nil {
		t.Fatal(err)
	}
	proto := uint16(unix.ETH_P_ALL)
	proto = proto>>8 | proto<<8 // htons
	c := &capture{stopc: make(chan struct{}), done: make(chan struct{})}
	err = fabric.Do(func() (err error) {
		c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
		if err != nil {
			return err
		}
		return unix.Bind(c.fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: l.Attrs().Index})
	})
	if err != nil {
		t.Fatalf("open packet socket: %v", err)
	}
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	go func() {
		defer close(c.done)
		buf := make([]byte, 1<<16) // big enough for a GSO frame
		for {
			flags := 0
			select {
			case <-c.stopc:
				// Take what is queued still, then end.
				flags = unix.MSG_DONTWAIT
			default:
			}
			n, _, err := unix.Recvfrom(c.fd, buf, flags)
			if err != nil && flags != 0 {
				return
			}
			if err == nil {
				c.mu.Lock()
				c.frames = append(c.frames, bytes.Clone(buf[:n]))
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { c.stop() })
	return c
}

// stop ends the capture and returns its frames.
func (c *capture) stop() [][]byte {
	c.once.Do(func() {
		close(c.stopc)
		<-c.done
		unix.Close(c.fd)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames
}

// TestTraffic runs real TCP, UDP and ICMP between containers on two
// servers and checks what the server sees and what the fabric carries.
func TestTraffic(t *testing.T) {
	tw := newTrafficWorld(t, Config{})
	client := tw.containers[1]
	serveTCP(t, tw.containers[2], 8080, "S")
	serveUDP(t, tw.containers[2], 5353, "S")
	serveTCP(t, tw.containers[3], 8080, "S2")
	serveUDP(t, tw.containers[3], 5353, "S2")
	serveTCP(t, tw.containers[4], 8081, "L")
	for id, name := range map[uint32]string{5: "R1", 6: "R2", 7: "R3"} {
		serveTCP(t, tw.containers[id], 9000, name)
	}
	capt := startCapture(t, tw.w.Fabric, "s0")

	t.Run("tcp across servers", func(t *testing.T) {
		name, remote := ask(t, client, "tcp4", netip.AddrPortFrom(trafficS, 8080))
		if name != "S" {
			t.Errorf("answered by %s, want S (the master)", name)
		}
		if remote.Addr() != client.IP || remote.Port() < 1024 || remote.Port() >= 1024+256 {
			t.Errorf("S saw the client as %s, want %s with a port of C's identity block [1024, 1280)", remote, client.IP)
		}
	})
	t.Run("udp across servers", func(t *testing.T) {
		name, remote := ask(t, client, "udp4", netip.AddrPortFrom(trafficS, 5353))
		if name != "S" || remote.Addr() != client.IP {
			t.Errorf("answer from %s seeing %s, want S seeing %s", name, remote, client.IP)
		}
	})
	t.Run("icmp across servers", func(t *testing.T) {
		if err := ping(client, trafficS, 0x4242); err != nil {
			t.Errorf("ping %s: %v; drops A %v B %v", trafficS, err, mustDrops(tw.dpA), mustDrops(tw.dpB))
		}
	})
	t.Run("tcp on one server", func(t *testing.T) {
		name, remote := ask(t, client, "tcp4", netip.AddrPortFrom(trafficL, 8081))
		if name != "L" || remote.Addr() != client.IP {
			t.Errorf("answer from %s seeing %s, want L seeing %s", name, remote, client.IP)
		}
	})
	t.Run("balance over three replicas", func(t *testing.T) {
		seen := map[string]int{}
		for range 30 {
			name, remote := ask(t, client, "tcp4", netip.AddrPortFrom(trafficR, 9000))
			if remote.Addr() != client.IP {
				t.Errorf("%s saw the client as %s, want %s", name, remote, client.IP)
			}
			seen[name]++
		}
		if len(seen) != 3 {
			t.Errorf("30 connections reached %v, want all of R1, R2, R3", seen)
		}
	})
	t.Run("udp port unreachable across servers", func(t *testing.T) {
		// Nobody listens on 6000/udp of S: its kernel's port
		// unreachable must reach C's socket as one about C's datagram.
		if err := udpRefused(client, netip.AddrPortFrom(trafficS, 6000)); err != nil {
			t.Errorf("%v; drops %v", err, tw.drops(t))
		}
	})
	t.Run("udp port unreachable on one server", func(t *testing.T) {
		if err := udpRefused(client, netip.AddrPortFrom(trafficL, 6001)); err != nil {
			t.Errorf("%v; drops %v", err, tw.drops(t))
		}
	})
	t.Run("failover", func(t *testing.T) {
		tw.setState(2, Down)
		tw.apply(t)
		defer func() {
			tw.setState(2, Active)
			tw.apply(t)
		}()
		if name, _ := ask(t, client, "tcp4", netip.AddrPortFrom(trafficS, 8080)); name != "S2" {
			t.Errorf("tcp answered by %s with the master down, want S2", name)
		}
		if name, _ := ask(t, client, "udp4", netip.AddrPortFrom(trafficS, 5353)); name != "S2" {
			t.Errorf("udp answered by %s with the master down, want S2", name)
		}
	})

	counters, err := tw.dpA.EndpointCounters()
	if err != nil {
		t.Fatal(err)
	}
	if c := counters[1]; c.TxPackets == 0 || c.RxPackets == 0 || c.TxBytes < 20*c.TxPackets || c.RxBytes < 20*c.RxPackets {
		t.Errorf("C's counters %+v, want packets and bytes both ways", c)
	}
	if _, ok := counters[2]; ok {
		t.Error("server A counts S, which runs on B")
	}

	frames := capt.stop()
	var wire, inner int
	serverNet := netip.MustParsePrefix("192.0.2.0/24")
	for _, f := range frames {
		ip, src, dst, ok := ipv4Of(f)
		if !ok {
			continue
		}
		if dst.IsMulticast() {
			continue // the servers' own IGMP reports, sent from 0.0.0.0
		}
		if !serverNet.Contains(src) || !serverNet.Contains(dst) {
			inner++
			t.Errorf("fabric carried %s -> %s: only ServerIPs may appear on the wire", src, dst)
			continue
		}
		if inWireBlock(ip, wireRangeA) {
			wire++
		}
	}
	if wire == 0 {
		t.Errorf("captured %d frames on the fabric, none in C's wire block", len(frames))
	}
	t.Logf("fabric: %d frames, %d in C's wire block, %d with container addresses", len(frames), wire, inner)
}

// udpRefused sends a datagram from container c to addr on a connected
// socket and expects the next read to fail with ECONNREFUSED: the ICMP port
// unreachable found the socket.
func udpRefused(c *testbed.Container, addr netip.AddrPort) error {
	var conn net.Conn
	if err := c.Do(func() (err error) {
		conn, err = net.Dial("udp4", addr.String())
		return err
	}); err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte("anyone?")); err != nil {
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	_, err := conn.Read(make([]byte, 100))
	if !errors.Is(err, unix.ECONNREFUSED) {
		return fmt.Errorf("read from %s: %v, want ECONNREFUSED", addr, err)
	}
	return nil
}

// TestUDPFailover keeps one UDP socket talking to a failover service while
// the master goes down: the next datagram goes to the backup, the answers
// keep coming from the address the client sent to, and the backup sees the
// client at the same identity as the master did (the flow kept its offset).
func TestUDPFailover(t *testing.T) {
	tw := newTrafficWorld(t, Config{})
	serveUDP(t, tw.containers[2], 5353, "S")
	serveUDP(t, tw.containers[3], 5353, "S2")
	client := tw.containers[1]
	var pc net.PacketConn
	if err := client.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", client.IP.String()+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	service := netip.AddrPortFrom(trafficS, 5353)
	exchange := func() (name string, seenAs, from netip.AddrPort) {
		t.Helper()
		pc.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := pc.WriteTo([]byte("hi"), net.UDPAddrFromAddrPort(service)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("read: %v; drops %v", err, tw.drops(t))
		}
		f := strings.Fields(string(buf[:n]))
		if len(f) != 2 {
			t.Fatalf("answer %q: want two words", buf[:n])
		}
		return f[0], netip.MustParseAddrPort(f[1]), addr.(*net.UDPAddr).AddrPort()
	}
	name, seenAs, from := exchange()
	if name != "S" || from != service {
		t.Fatalf("answer from %s (%s), want S (%s)", name, from, service)
	}
	tw.setState(2, Down)
	tw.apply(t)
	name2, seenAs2, from2 := exchange()
	if name2 != "S2" || from2 != service {
		t.Errorf("after the master went down: answer from %s (%s), want S2 (%s)", name2, from2, service)
	}
	if seenAs2 != seenAs {
		t.Errorf("backup sees the client as %s, master saw %s: want the same identity", seenAs2, seenAs)
	}
}

func inWireBlock(ip *layers.IPv4, r [2]uint16) bool {
	var ports []uint16
	switch ip.Protocol {
	case layers.IPProtocolTCP, layers.IPProtocolUDP:
		if len(ip.Payload) >= 4 {
			ports = []uint16{binary.BigEndian.Uint16(ip.Payload), binary.BigEndian.Uint16(ip.Payload[2:])}
		}
	case layers.IPProtocolICMPv4:
		if len(ip.Payload) >= 6 && ip.Payload[1] == 0xda {
			ports = []uint16{binary.BigEndian.Uint16(ip.Payload[4:])}
		}
	}
	for _, p := range ports {
		if p >= r[0] && p < r[1] {
			return true
		}
	}
	return false
}

func mustDrops(d *Dataplane) map[DropReason]uint64 {
	c, _ := d.DropCounters()
	for r, n := range c {
		if n == 0 {
			delete(c, r)
		}
	}
	return c
}
