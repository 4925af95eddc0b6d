package dataplane

import (
	"bytes"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// runFuzz runs prog over data; ok is false when the kernel refuses the
// input (BPF_PROG_TEST_RUN wants a whole Ethernet header, and an IPv4
// header when the EtherType says IPv4).
func runFuzz(prog *ebpf.Program, data []byte) (ret uint32, out []byte, ok bool) {
	opts := ebpf.RunOptions{Data: data, DataOut: make([]byte, len(data)+256)}
	ret, err := prog.Run(&opts)
	if err != nil {
		return 0, nil, false
	}
	return ret, opts.DataOut, true
}

// FuzzFromNetwork: from_network never crashes; it passes, drops or
// redirects, and what it passes is byte-identical.
func FuzzFromNetwork(f *testing.F) {
	a := newUnpinned(f, serverA)
	wire := pkt{srcMAC: macAny, dstMAC: macAny, src: serverB, dst: serverA, proto: layers.IPProtocolTCP,
		sport: 32768 + 7, dport: 33024, syn: true, payload: []byte("x")}
	f.Add(wire.bytes(f))
	wire.dport = 22
	f.Add(wire.bytes(f))
	wire.dport = 32768 + 3
	f.Add(wire.bytes(f))
	wire.proto, wire.icmpType, wire.icmpCode, wire.sport, wire.ipID =
		layers.IPProtocolICMPv4, layers.ICMPv4TypeEchoRequest, 0xda, 32768+9, 33024
	f.Add(wire.bytes(f))
	f.Add(wire.bytes(f)[:14+20+3])
	f.Add(arpRequest(f, macAny, serverB, serverA))
	// ICMP errors about a wire packet and about a host flow.
	quoted := pkt{srcMAC: macAny, dstMAC: macAny, src: serverA, dst: serverB, proto: layers.IPProtocolUDP,
		sport: 32768 + 9, dport: 33024, payload: []byte("quoted")}
	f.Add(icmpErr{srcMAC: macAny, dstMAC: macAny, src: serverB, dst: serverA, typ: icmpUnreach,
		code: codeFragNeeded, rest: 1400, quote: quoted.bytes(f)[14:]}.bytes(f))
	quoted.sport = 22
	f.Add(icmpErr{srcMAC: macAny, dstMAC: macAny, src: serverB, dst: serverA, typ: icmpTimeExceeded,
		quote: quoted.bytes(f)[14 : 14+28]}.bytes(f))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := bytes.Clone(data)
		ret, out, ok := runFuzz(a.objs.FromNetwork, data)
		if !ok {
			return
		}
		switch ret {
		case actOK:
			if !bytes.Equal(out, in) {
				t.Errorf("passed packet changed:\n got %x\nwant %x", out, in)
			}
		case actShot, actRedirect:
			if len(out) != len(in) {
				t.Errorf("length changed from %d to %d", len(in), len(out))
			}
		default:
			t.Errorf("verdict %d, want ok, shot or redirect", ret)
		}
	})
}

// FuzzFromContainer: from_container never crashes and never lets a packet
// reach the host stack: it drops or redirects.
func FuzzFromContainer(f *testing.F) {
	a := newUnpinned(f, serverA)
	p := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipS, proto: layers.IPProtocolTCP,
		sport: 40000, dport: 80, syn: true}
	f.Add(p.bytes(f))
	p.proto, p.dport = layers.IPProtocolUDP, 53
	f.Add(p.bytes(f))
	p.proto, p.icmpType = layers.IPProtocolICMPv4, layers.ICMPv4TypeEchoRequest
	f.Add(p.bytes(f))
	p.dst, p.proto, p.dport = ipL, layers.IPProtocolTCP, 8080
	f.Add(p.bytes(f))
	f.Add(p.bytes(f)[:14+20+5])
	f.Add(arpRequest(f, macC, ipC, ipGW))
	// An ICMP error C sends about a reply it got.
	reply := pkt{srcMAC: DefaultGatewayMAC, dstMAC: macC, src: ipS, dst: ipC, proto: layers.IPProtocolUDP,
		sport: 53, dport: 40000, payload: []byte("quoted")}
	f.Add(icmpErr{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipS, typ: icmpUnreach,
		code: codePortUnreach, quote: reply.bytes(f)[14:]}.bytes(f))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := bytes.Clone(data)
		ret, out, ok := runFuzz(a.objs.FromContainer, data)
		if !ok {
			return
		}
		if ret != actShot && ret != actRedirect {
			t.Errorf("verdict %d for %x, want shot or redirect", ret, in)
		}
		if len(out) != len(in) {
			t.Errorf("length changed from %d to %d", len(in), len(out))
		}
	})
}
