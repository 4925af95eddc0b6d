package dataplane

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/daolinet/daoli/internal/testbed"
)

// Verdicts of a tc program.
const (
	actOK       = 0
	actShot     = 2
	actRedirect = 7
)

// loopbackIfindex is the device BPF_PROG_TEST_RUN runs skb programs on, so
// endpoints registered with it look local to from_container.
const loopbackIfindex = 1

// pkt describes a packet to craft.
type pkt struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	proto          layers.IPProtocol
	sport, dport   uint16 // ICMP: sport is the identifier
	ipID           uint16
	icmpType       uint8
	icmpCode       uint8
	syn, fin, rst  bool
	ackNum         uint32 // TCP acknowledgment number
	payload        []byte
	flags          layers.IPv4Flag
	fragOffset     uint16
	ttl            uint8 // 0 means 64
}

func (p pkt) bytes(t testing.TB) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: p.srcMAC, DstMAC: p.dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ttl := p.ttl
	if ttl == 0 {
		ttl = 64
	}
	ip := &layers.IPv4{
		Version: 4, IHL: 5, TTL: ttl, Protocol: p.proto, Id: p.ipID,
		SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice(),
		Flags: p.flags, FragOffset: p.fragOffset,
	}
	var l4 gopacket.SerializableLayer
	switch p.proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport),
			Seq: 1000, Ack: p.ackNum, Window: 1024, SYN: p.syn, FIN: p.fin, RST: p.rst, ACK: !p.syn}
		tcp.SetNetworkLayerForChecksum(ip)
		l4 = tcp
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		udp.SetNetworkLayerForChecksum(ip)
		l4 = udp
	case layers.IPProtocolICMPv4:
		l4 = &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(p.icmpType, p.icmpCode), Id: p.sport, Seq: 7}
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, l4, gopacket.Payload(p.payload)); err != nil {
		t.Fatalf("craft packet: %v", err)
	}
	return buf.Bytes()
}

func arpRequest(t testing.TB, mac net.HardwareAddr, sender, target netip.Addr) []byte {
	return arpFrame(t, layers.ARPRequest, mac, sender, layers.EthernetBroadcast, make(net.HardwareAddr, 6), target)
}

// arpFrame is an ARP packet of operation op from sha/spa to tha/tpa, in a
// frame to dst.
func arpFrame(t testing.TB, op uint16, sha net.HardwareAddr, spa netip.Addr, dst, tha net.HardwareAddr, tpa netip.Addr) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: sha, DstMAC: dst, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
		SourceHwAddress: sha, SourceProtAddress: spa.AsSlice(), DstHwAddress: tha, DstProtAddress: tpa.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, eth, arp); err != nil {
		t.Fatalf("craft ARP: %v", err)
	}
	return buf.Bytes()
}

// seen is what a packet says after a program ran, decoded with gopacket.
type seen struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	sport, dport   uint16 // ICMP: identifier in sport
	ipID           uint16
	ttl            uint8
	icmpType       uint8
	icmpCode       uint8
	icmpRest       uint32 // ICMP bytes 4 to 7: an error's next-hop MTU
	payload        []byte // after the TCP, UDP or ICMP header
}

// decode parses an IPv4 packet and checks that every checksum in it is what
// gopacket computes from scratch.
func decode(t testing.TB, data []byte) seen {
	t.Helper()
	p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
	// An error layer above the transport (a payload that looks like DNS)
	// does not matter here.
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if !ok {
		t.Fatalf("decode: no IPv4 in %x", data)
	}
	var s seen
	s.srcMAC, s.dstMAC = eth.SrcMAC, eth.DstMAC
	s.src, _ = netip.AddrFromSlice(ip.SrcIP)
	s.dst, _ = netip.AddrFromSlice(ip.DstIP)
	s.ipID = ip.Id
	s.ttl = ip.TTL

	opts := gopacket.SerializeOptions{ComputeChecksums: true}
	recompute := func(l gopacket.SerializableLayer, payload []byte, off int) uint16 {
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, opts, l, gopacket.Payload(payload)); err != nil {
			t.Fatalf("recompute checksum: %v", err)
		}
		return binary.BigEndian.Uint16(buf.Bytes()[off:])
	}
	ipCopy := *ip
	if want := recompute(&ipCopy, ip.Payload, 10); ip.Checksum != want {
		t.Errorf("IPv4 checksum %#04x, want %#04x", ip.Checksum, want)
	}
	switch l4 := p.TransportLayer().(type) {
	case *layers.TCP:
		s.sport, s.dport = uint16(l4.SrcPort), uint16(l4.DstPort)
		s.payload = l4.Payload
		c := *l4
		c.SetNetworkLayerForChecksum(ip)
		if want := recompute(&c, l4.Payload, 16); l4.Checksum != want {
			t.Errorf("TCP checksum %#04x, want %#04x", l4.Checksum, want)
		}
	case *layers.UDP:
		s.sport, s.dport = uint16(l4.SrcPort), uint16(l4.DstPort)
		s.payload = l4.Payload
		c := *l4
		c.SetNetworkLayerForChecksum(ip)
		if want := recompute(&c, l4.Payload, 6); l4.Checksum != want {
			t.Errorf("UDP checksum %#04x, want %#04x", l4.Checksum, want)
		}
	default:
		icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if !ok {
			t.Fatalf("decode: no TCP, UDP or ICMP in %x", data)
		}
		s.sport = icmp.Id
		s.icmpType, s.icmpCode = icmp.TypeCode.Type(), icmp.TypeCode.Code()
		s.icmpRest = uint32(icmp.Id)<<16 | uint32(icmp.Seq)
		s.payload = icmp.Payload
		c := *icmp
		if want := recompute(&c, icmp.Payload, 2); icmp.Checksum != want {
			t.Errorf("ICMP checksum %#04x, want %#04x", icmp.Checksum, want)
		}
	}
	return s
}

// run runs prog over data and returns the verdict and the packet after it.
func run(t testing.TB, prog *ebpf.Program, data []byte) (uint32, []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: data, DataOut: make([]byte, len(data)+256)}
	ret, err := prog.Run(&opts)
	if err != nil {
		t.Fatalf("run %s: %v", prog, err)
	}
	return ret, opts.DataOut
}

// newDataplane loads a Dataplane pinned in a private bpffs.
func newDataplane(t testing.TB) *Dataplane {
	t.Helper()
	testbed.RequirePrivileged(t)
	d, err := New(Config{BPFFSPath: testbed.BPFFS(t) + "/daoli"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
		d.Close()
	})
	return d
}

func setUplink(t testing.TB, d *Dataplane, ifindex uint32) {
	t.Helper()
	if err := d.updateSettings(func(s *daoliServerSettings) { s.UplinkIfindex = ifindex }); err != nil {
		t.Fatal(err)
	}
}

func drops(t testing.TB, d *Dataplane) map[DropReason]uint64 {
	t.Helper()
	c, err := d.DropCounters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func equalBytes(a, b []byte) bool { return bytes.Equal(a, b) }

// newUnpinned loads a Dataplane that pins nothing, for fuzzing: fuzz
// workers may exit without running cleanups, which would strand a bpffs
// mount.
func newUnpinned(t testing.TB, local netip.Addr) *Dataplane {
	t.Helper()
	testbed.RequirePrivileged(t)
	spec, err := loadDaoli()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	d := &Dataplane{log: slog.New(slog.DiscardHandler)}
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.objs.Close() })
	if err := d.Apply(fixture(local)); err != nil {
		t.Fatal(err)
	}
	setUplink(t, d, uplinkIfindex)
	return d
}
