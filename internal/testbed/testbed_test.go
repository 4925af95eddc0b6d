package testbed

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

func TestWorld(t *testing.T) {
	var names []string
	t.Run("build", func(t *testing.T) {
		w := New(t, 2)
		a, b := w.Servers[0], w.Servers[1]
		c := w.AddContainer(a, netip.MustParsePrefix("10.1.0.2/24"), netip.MustParseAddr("10.1.0.1"))
		names = w.Namespaces()
		if len(names) != 4 {
			t.Errorf("namespaces %v, want fabric, two servers and a container", names)
		}
		if a.IP != netip.MustParseAddr("192.0.2.1") || b.IP != netip.MustParseAddr("192.0.2.2") {
			t.Errorf("server IPs %s, %s; want 192.0.2.1, 192.0.2.2", a.IP, b.IP)
		}
		// The servers reach each other over the fabric bridge, and only
		// inside the namespaces.
		if out, err := b.Output("ip", "route", "get", a.IP.String()); err != nil || !strings.Contains(out, "uplink") {
			t.Errorf("route from B to A: %q, %v; want via uplink", out, err)
		}
		if out := c.Run("ip", "-br", "addr", "show", "eth0"); !strings.Contains(out, "10.1.0.2/24") {
			t.Errorf("container eth0: %q, want 10.1.0.2/24", out)
		}
		if c.HostIfindex <= 0 || a.UplinkIfindex <= 0 {
			t.Errorf("ifindexes: host veth %d, uplink %d; want positive", c.HostIfindex, a.UplinkIfindex)
		}
		l, err := c.Link("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().HardwareAddr.String() != c.MAC.String() {
			t.Errorf("eth0 MAC %s, want %s", l.Attrs().HardwareAddr, c.MAC)
		}
		// Cleanups run last-in first-out: this check runs after Start's kill.
		var cmd *exec.Cmd
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				t.Error("process still running after cleanup")
			}
		})
		cmd = c.Start("sleep", "60")
		if cmd.Process.Pid <= 0 {
			t.Error("no PID")
		}
	})
	// Cleanup ran when the subtest ended.
	for _, n := range names {
		if err := exec.Command("ip", "netns", "exec", n, "true").Run(); err == nil {
			t.Errorf("namespace %s still exists after cleanup", n)
		}
	}
}
