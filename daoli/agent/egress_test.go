package agent_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/mapper"
)

// TestEgressThroughTheAgent: a container of a network whose egress the
// registry allows reaches a host outside the cluster, which sees the
// server's address; after `network update --egress deny` (through the
// registry, applied by the agent) it reaches nothing outside, and the
// drop is counted as egress_denied.
func TestEgressThroughTheAgent(t *testing.T) {
	c := newCluster(t, 1)
	out := c.w.AddOutside(0)
	out.Start(bin, "app", "serve", "--port", "8080", "--name", "outside")
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	to := netip.AddrPortFrom(out.IP, 8080).String()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		o, _ := client.Output(bin, "app", "ask", "--to", to, "--count", "1", "--timeout", "200ms")
		if strings.Contains(o, " ok outside saw") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the outside host never answered the container: %s", o)
		}
	}
	server := c.w.Servers[0].IP.String()
	for _, proto := range []string{"tcp", "udp", "http"} {
		for _, l := range ask(t, client, "--to", to, "--proto", proto, "--count", "2", "--interval", "10ms") {
			if !strings.Contains(l, " ok outside saw "+server+":") {
				t.Errorf("%s: %q, want an answer from outside that saw the server's address %s", proto, l, server)
			}
		}
	}

	deny := mapper.Egress{Deny: true}
	if _, err := c.mc.UpdateNetwork(context.Background(), "blue", mapper.NetworkUpdate{Egress: &deny}); err != nil {
		t.Fatal(err)
	}
	c.settle()
	if lines := ask(t, client, "--to", to, "--count", "1", "--timeout", "300ms"); len(errLines(lines)) != 1 {
		t.Errorf("a network without egress reached the outside: %v", lines)
	}
	st := got(c.agent("server-0").Status(context.Background()))(t)
	if st.Drops["egress_denied"] == 0 {
		t.Errorf("server-0 counted no egress_denied drop: %v", st.Drops)
	}
}
