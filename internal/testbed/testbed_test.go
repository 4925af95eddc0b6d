package testbed

import (
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
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

func TestRouted(t *testing.T) {
	w := NewRouted(t, 1, 1)
	a, b := w.Servers[0], w.Servers[1]
	if a.IP != netip.MustParseAddr("192.0.2.1") || b.IP != netip.MustParseAddr("198.51.100.1") {
		t.Errorf("server IPs %s, %s; want 192.0.2.1, 198.51.100.1", a.IP, b.IP)
	}
	if out := a.Run("ip", "route", "get", b.IP.String()); !strings.Contains(out, "via 192.0.2.254") {
		t.Errorf("route from A to B: %q, want via the router 192.0.2.254", out)
	}
	if out := w.Router.Run("sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(out) != "1" {
		t.Errorf("router ip_forward = %q, want 1", out)
	}
	// A TCP connection crosses the router.
	var l net.Listener
	if err := b.Do(func() (err error) {
		l, err = net.Listen("tcp4", b.IP.String()+":7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Write([]byte("B"))
			c.Close()
		}
	}()
	var got []byte
	err := a.Do(func() error {
		c, err := net.DialTimeout("tcp4", b.IP.String()+":7000", 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		got, err = io.ReadAll(c)
		return err
	})
	if err != nil || string(got) != "B" {
		t.Errorf("A to B through the router: %q, %v; want \"B\"", got, err)
	}
}

func TestMove(t *testing.T) {
	w := New(t, 2)
	a, b := w.Servers[0], w.Servers[1]
	c := w.AddContainer(a, netip.MustParsePrefix("10.1.0.2/24"), netip.MustParseAddr("10.1.0.1"))
	old := c.HostIfname
	w.Move(c, b)
	if c.Server != b {
		t.Errorf("container on %s after the move, want %s", c.Server.Name, b.Name)
	}
	if _, err := a.Link(old); err == nil {
		t.Errorf("old host-side veth %s still on %s", old, a.Name)
	}
	l, err := b.Link(c.HostIfname)
	if err != nil || l.Attrs().Index != c.HostIfindex {
		t.Errorf("new host-side veth %s on %s: %v (ifindex %d, want %d)", c.HostIfname, b.Name, err, l.Attrs().Index, c.HostIfindex)
	}
	eth0, err := c.Link("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().HardwareAddr.String() != c.MAC.String() {
		t.Errorf("eth0 MAC %s after the move, want %s", eth0.Attrs().HardwareAddr, c.MAC)
	}
	if out := c.Run("ip", "route", "show", "default"); !strings.Contains(out, "via 10.1.0.1") {
		t.Errorf("default route after the move: %q, want via 10.1.0.1", out)
	}
	// A second container on b gets its own names.
	d := w.AddContainer(b, netip.MustParsePrefix("10.1.0.3/24"), netip.MustParseAddr("10.1.0.1"))
	if d.HostIfname == c.HostIfname || d.Name == c.Name {
		t.Errorf("names clash: %s/%s and %s/%s", d.Name, d.HostIfname, c.Name, c.HostIfname)
	}
}
