package agent_test

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/mapper"
)

// TestIngressThroughTheAgent: a failover service whose master and backup
// publish 8080 (attach --publish) is reached by a host outside the
// cluster at port 8080 of either server, and the master sees the host's
// own address; when the master's container dies under a stream of
// requests from outside to the other server, the backup answers on the
// same ServerIP:port, seeing the host's address too.
func TestIngressThroughTheAgent(t *testing.T) {
	c := newCluster(t, 2)
	out := c.w.AddOutside(0)
	vip := netip.MustParseAddr("10.1.0.9")
	pub := []mapper.PublishedPort{{HostPort: 8080, Port: 8080, Protocol: mapper.TCP}, {HostPort: 8080, Port: 8080, Protocol: mapper.UDP}}
	master, _ := c.container("master", 0, agent.AttachRequest{IP: vip, Ports: tcpUDP8080, Mode: mapper.Failover, Priority: 100, Published: pub})
	backup, _ := c.container("backup", 1, agent.AttachRequest{IP: vip, Ports: tcpUDP8080, Mode: mapper.Failover, Priority: 10, Published: pub})
	c.settle()
	masterApp := serve(t, master, out.Namespace, "master", netip.AddrPortFrom(c.w.Servers[0].IP, 8080).String())
	backup.Start(bin, "app", "serve", "--port", "8080", "--name", "backup")

	saw := " saw " + out.IP.String() + ":"
	for _, srv := range c.w.Servers {
		to := netip.AddrPortFrom(srv.IP, 8080).String()
		for _, proto := range []string{"tcp", "udp", "http"} {
			for _, l := range ask(t, out.Namespace, "--to", to, "--proto", proto, "--count", "2", "--interval", "10ms") {
				if !strings.Contains(l, " ok master"+saw) {
					t.Errorf("%s to %s from outside: %q, want the master, seeing %s", proto, to, l, out.IP)
				}
			}
		}
	}

	// Through server-1, whose gateway forwards to the master on server-0.
	s := startStream(t, out.Namespace, "--to", netip.AddrPortFrom(c.w.Servers[1].IP, 8080).String(),
		"--proto", "tcp", "--count", "0", "--interval", "20ms", "--timeout", "200ms")
	s.waitLines(t, 5)
	masterApp.Process.Kill()
	masterApp.Wait()
	if o, err := exec.Command("ip", "netns", "del", master.Name).CombinedOutput(); err != nil {
		t.Fatalf("delete the master's namespace: %v: %s", err, o)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		s.mu.Lock()
		last := s.lines[len(s.lines)-1]
		s.mu.Unlock()
		if strings.Contains(last, " ok backup"+saw) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backup never answered the outside host through server-1; last line %q", last)
		}
	}
	s.waitLines(t, 5)
	lines := s.stop()
	t.Logf("%d requests from outside, %d unanswered around the failover", len(lines), len(errLines(lines)))
	for _, l := range ask(t, out.Namespace, "--to", netip.AddrPortFrom(c.w.Servers[0].IP, 8080).String(), "--count", "2") {
		if !strings.Contains(l, " ok backup"+saw) {
			t.Errorf("through server-0 after the failover: %q, want the backup, seeing %s", l, out.IP)
		}
	}
}
