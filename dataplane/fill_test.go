package dataplane

import (
	"testing"

	"github.com/google/gopacket/layers"
)

func TestFill(t *testing.T) {
	a := loadServer(t, serverA)
	fill, flows, err := a.Fill()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]MapFill{}
	for _, f := range fill {
		byName[f.Name] = f
		if f.MaxEntries == 0 || f.Entries > f.MaxEntries {
			t.Errorf("%s: %d of %d entries", f.Name, f.Entries, f.MaxEntries)
		}
	}
	if byName["endpoints"].Entries != len(fixture(serverA).Endpoints) || flows != 0 || byName["conntrack"].Entries != 0 {
		t.Errorf("a fresh server: %d endpoints, %d flows, %d conntrack entries; want %d, 0, 0",
			byName["endpoints"].Entries, flows, byName["conntrack"].Entries, len(fixture(serverA).Endpoints))
	}
	// One new flow from C to S takes two conntrack entries.
	syn := pkt{srcMAC: macC, dstMAC: DefaultGatewayMAC, src: ipC, dst: ipS, proto: layers.IPProtocolTCP,
		sport: 40000, dport: 80, syn: true}
	if ret, _ := run(t, a.objs.FromContainer, syn.bytes(t)); ret != actRedirect {
		t.Fatalf("SYN: verdict %d, want redirect", ret)
	}
	fill, flows, err = a.Fill()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fill {
		if f.Name == "conntrack" && (f.Entries != 2 || flows != 1) {
			t.Errorf("after one SYN: %d conntrack entries, %d flows; want 2 and 1", f.Entries, flows)
		}
	}
}
