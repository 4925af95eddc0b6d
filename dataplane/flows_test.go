package dataplane

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestFlowTimeoutsMatchTheC: AccountFlows' timeouts and flags are
// ct_timeout's, as bpf/daoli.c and daoli.h define them.
func TestFlowTimeoutsMatchTheC(t *testing.T) {
	src, err := os.ReadFile("bpf/daoli.c")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]time.Duration{"NS_PER_SEC": time.Second, "NS_PER_MSEC": time.Millisecond}
	for name, want := range map[string]time.Duration{
		"CT_TCP_ESTABLISHED": ctTCPEstablished, "CT_TCP_UNREPLIED": ctTCPUnreplied,
		"CT_TCP_HALF_CLOSED": ctTCPHalfClosed, "CT_TCP_CLOSED": ctTCPClosed,
		"CT_UDP": ctUDP, "CT_UDP_REUSE": ctUDPReuse, "CT_ICMP": ctICMP,
	} {
		m := regexp.MustCompile(`#define ` + name + ` \((\d+) \* (NS_PER_M?SEC)\)`).FindSubmatch(src)
		if m == nil {
			t.Errorf("%s not found in bpf/daoli.c", name)
			continue
		}
		n, _ := strconv.Atoi(string(m[1]))
		if got := time.Duration(n) * unit[string(m[2])]; got != want {
			t.Errorf("%s is %s in the C, %s in flows.go", name, got, want)
		}
	}
	h, err := os.ReadFile("bpf/daoli.h")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint8{"CT_RST": ctFlagRST, "CT_REPLIED": ctFlagReplied, "CT_FIN_OUT": 0x01, "CT_FIN_IN": 0x02} {
		m := regexp.MustCompile(`#define ` + name + ` 0x([0-9a-f]+)`).FindSubmatch(h)
		if m == nil {
			t.Errorf("%s not found in bpf/daoli.h", name)
			continue
		}
		if got, _ := strconv.ParseUint(string(m[1]), 16, 8); uint8(got) != want {
			t.Errorf("%s is %#x in the C, %#x in flows.go", name, got, want)
		}
	}
}

// BenchmarkAccountFlowsFull is the agent's count of flows, once a second,
// over a full conntrack.
func BenchmarkAccountFlowsFull(b *testing.B) {
	d := newDataplane(b)
	m := d.objs.Conntrack
	n := int(m.MaxEntries())
	keys := make([]daoliCtKey, n)
	vals := make([]daoliCtEntry, n)
	for i := range keys {
		keys[i] = daoliCtKey{Scope: uint32(1 + i%50), Saddr: uint32(i), Dir: uint8(i % 2), Proto: 6}
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := d.AccountFlows(); err != nil {
			b.Fatal(err)
		}
	}
}
