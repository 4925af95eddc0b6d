package dataplane

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/daolinet/daoli/internal/testbed"
)

// serveSink reads every connection to its end and answers with the number
// of bytes and their SHA-256.
func serveSink(t *testing.T, c *testbed.Container, port int) {
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
	go serveSinkOn(l)
}

// serveSinkOn is serveSink's loop over the connections of l.
func serveSinkOn(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			h := sha256.New()
			n, _ := io.Copy(h, conn)
			fmt.Fprintf(conn, "%d %x\n", n, h.Sum(nil))
		}()
	}
}

// pattern is n bytes counting modulo 251, so any slice of it can be
// recognised: every byte is its predecessor plus one.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func isPattern(b []byte) bool {
	for i := 1; i < len(b); i++ {
		if b[i] != byte((int(b[i-1])+1)%251) {
			return false
		}
	}
	return len(b) > 0
}

// sendBulk sends data from container c to a sink at addr with DF set on
// every packet (IP_PMTUDISC_DO) and checks what the sink received.
func sendBulk(t *testing.T, c *testbed.Container, addr netip.AddrPort, data []byte, timeout time.Duration) error {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	var conn net.Conn
	if err := c.Do(func() (err error) {
		conn, err = d.Dial("tcp4", addr.String())
		return err
	}); err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(data); err != nil {
		return fmt.Errorf("send %d bytes: %w", len(data), err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the sink's answer: %w", err)
	}
	sum := sha256.Sum256(data)
	if want := fmt.Sprintf("%d %s\n", len(data), hex.EncodeToString(sum[:])); line != want {
		return fmt.Errorf("sink got %q, want %q", line, want)
	}
	return nil
}

// snmp returns a counter of /proc/net/snmp in the namespace, such as
// ("Icmp", "InDestUnreachs").
func snmp(t *testing.T, ns *testbed.Namespace, group, name string) uint64 {
	t.Helper()
	lines := strings.Split(ns.Run("cat", "/proc/net/snmp"), "\n")
	for i := 0; i+1 < len(lines); i++ {
		head, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(head) == 0 || head[0] != group+":" || len(vals) != len(head) || vals[0] != group+":" {
			continue
		}
		for j, h := range head {
			if h == name {
				n, err := strconv.ParseUint(vals[j], 10, 64)
				if err != nil {
					t.Fatalf("snmp %s %s: %v", group, name, err)
				}
				return n
			}
		}
	}
	t.Fatalf("snmp %s %s: not in /proc/net/snmp of %s", group, name, ns.Name)
	return 0
}

// TestPathMTU puts a link of MTU 1400 on the path between two servers (the
// router's leg towards B) and sends 2 MB with DF from C on A to S on B. The
// router's frag-needed is about the wire packet, sent to ServerIP_A; only
// because from_network translates it to identity does C's kernel learn
// the path MTU and the transfer complete.
func TestPathMTU(t *testing.T) {
	w := testbed.NewRouted(t, 1, 1)
	w.Router.Run("ip", "link", "set", "r1", "mtu", "1400")
	tw := buildWorld(t, w, Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: netip.MustParseAddr("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}}}, 1},
	})
	client := tw.containers[1]
	serveSink(t, tw.containers[2], 8080)
	unreach := snmp(t, client.Namespace, "Icmp", "InDestUnreachs")

	if err := sendBulk(t, client, netip.AddrPortFrom(trafficS, 8080), pattern(2<<20), 20*time.Second); err != nil {
		t.Fatalf("2 MB with DF over a 1400-byte hop: %v; drops %v", err, tw.drops(t))
	}
	if got := snmp(t, client.Namespace, "Icmp", "InDestUnreachs") - unreach; got == 0 {
		t.Error("the client got no destination-unreachable")
	}
	if out := client.Run("ip", "route", "get", trafficS.String()); !strings.Contains(out, "mtu 1400") {
		t.Errorf("client's route to %s: %q, want the learnt mtu 1400", trafficS, out)
	}
}

// TestFullMTU shows that containers keep the whole 1500 bytes of the
// fabric: full-size TCP segments of container payload cross it as
// 1514-byte frames, plain TCP between ServerIPs, with no outer header.
func TestFullMTU(t *testing.T) {
	tw := buildWorld(t, testbed.New(t, 2), Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: netip.MustParseAddr("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}}}, 1},
	})
	client := tw.containers[1]
	// One segment per packet, as a NIC without TSO sends them, so the
	// capture sees the frames the fabric would carry.
	client.Run("ip", "link", "set", "eth0", "gso_max_segs", "1")
	serveSink(t, tw.containers[2], 8080)
	capt := startCapture(t, tw.w.Fabric, "s0")
	if err := sendBulk(t, client, netip.AddrPortFrom(trafficS, 8080), pattern(256<<10), 10*time.Second); err != nil {
		t.Fatalf("send: %v; drops %v", err, tw.drops(t))
	}
	frames := capt.stop()

	var full, data int
	var mss uint16
	for _, f := range frames {
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ok || ip.DstIP.IsMulticast() {
			continue
		}
		switch ip.Protocol {
		case layers.IPProtocolIPv4, layers.IPProtocolGRE, layers.IPProtocolESP:
			t.Errorf("fabric carried an encapsulated packet (protocol %s)", ip.Protocol)
		case layers.IPProtocolUDP:
			if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && (u.DstPort == 4789 || u.DstPort == 8472) {
				t.Errorf("fabric carried VXLAN (UDP port %d)", u.DstPort)
			}
		}
		tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok || !net.IP(ip.SrcIP).Equal(tw.a.IP.AsSlice()) || !inWireBlock(ip, wireRangeA) {
			continue
		}
		if tcp.SYN {
			for _, o := range tcp.Options {
				if o.OptionType == layers.TCPOptionKindMSS && len(o.OptionData) == 2 {
					mss = uint16(o.OptionData[0])<<8 | uint16(o.OptionData[1])
				}
			}
		}
		if len(tcp.Payload) == 0 {
			continue
		}
		data++
		if len(f) > 1514 {
			t.Errorf("frame of %d bytes on the fabric, want at most 1514", len(f))
		}
		// 1500 bytes of IP: the headers (with TCP options) and the rest
		// container payload.
		if len(f) == 1514 && ip.Length == 1500 && len(tcp.Payload) == 1500-20-int(tcp.DataOffset)*4 && isPattern(tcp.Payload) {
			full++
		}
	}
	if mss != 1460 {
		t.Errorf("wire SYN announces MSS %d, want 1460 (nothing clamped)", mss)
	}
	if full == 0 {
		t.Errorf("%d data frames from C's wire block, none of 1514 bytes carrying C's payload", data)
	}
	t.Logf("fabric: %d data frames from C's wire block, %d full-size", data, full)
}
