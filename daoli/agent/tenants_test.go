package agent_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/mapper"
)

// TestTenants: a container of network red cannot reach blue's web until
// an operator exports web's TCP port to red (then that port alone),
// connects the two networks, or puts them in one group; each change and
// its undoing reach both agents through the watch, and the traffic
// follows.
func TestTenants(t *testing.T) {
	c := newCluster(t, 2)
	ctx := context.Background()
	got(c.mc.CreateNetwork(ctx, mapper.NetworkSpec{Name: "red", Subnet: netip.MustParsePrefix("10.2.0.0/24")}))(t)
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	peer, _ := c.container("peer", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	red, _ := c.container("red", 0, agent.AttachRequest{Network: "red", IP: netip.MustParseAddr("10.2.0.5")})
	serve(t, web, peer, "web", "10.1.0.9:8080")

	reaches := func(proto string) bool {
		t.Helper()
		out := ask(t, red, "--to", "10.1.0.9:8080", "--proto", proto, "--count", "1", "--timeout", "300ms")
		return strings.Contains(out[0], " ok web saw 10.2.0.5:")
	}
	want := func(step string, tcp, udp bool) {
		t.Helper()
		c.settle()
		if got := reaches("tcp"); got != tcp {
			t.Errorf("%s: red reaches web over tcp: %v, want %v", step, got, tcp)
		}
		if got := reaches("udp"); got != udp {
			t.Errorf("%s: red reaches web over udp: %v, want %v", step, got, udp)
		}
	}
	want("isolated", false, false)

	export := mapper.ExportSpec{IP: netip.MustParseAddr("10.1.0.9"), Port: 8080, Protocol: mapper.TCP, To: "red"}
	got(c.mc.ExportService(ctx, "blue", export))(t)
	want("8080/tcp exported to red", true, false)
	got(c.mc.UnexportService(ctx, "blue", export))(t)
	want("unexported", false, false)

	got(c.mc.ConnectNetworks(ctx, "red", "blue"))(t)
	want("connected", true, true)
	got(c.mc.DisconnectNetworks(ctx, "blue", "red"))(t)
	want("disconnected", false, false)

	prod := []string{"prod"}
	for _, n := range []string{"blue", "red"} {
		got(c.mc.UpdateNetwork(ctx, n, mapper.NetworkUpdate{Groups: &prod}))(t)
	}
	want("both in group prod", true, true)
	none := []string{}
	got(c.mc.UpdateNetwork(ctx, "red", mapper.NetworkUpdate{Groups: &none}))(t)
	want("red left the group", false, false)
}
