// Package testbed builds throw-away networks of namespaces on one machine,
// so tests can run many "servers" and "containers" with real traffic:
//
//	fabric namespace      bridge br0 with ports s0, s1, ...
//	                        |
//	server namespaces     uplink, holding the ServerIP 192.0.2.1, .2, ...
//	                        |
//	                      c0, c1, ...: host-side veths of its containers
//	                        |
//	container namespaces  eth0, with the container's address
//
// NewRouted puts the servers on two subnets, joined by a router namespace
// that forwards between them, to show that the fabric needs no route for
// any container:
//
//	fabric namespace   br0 192.0.2.0/24            br1 198.51.100.0/24
//	                    |    |    rt0                rt1   |    |
//	                    s0   s1 ...|                  |  ... sN  sN+1
//	router namespace              r0 192.0.2.254     r1 198.51.100.254
//
// Its servers' only route off their subnet is the default route via the
// router.
//
// AddOutside adds the world outside the cluster: a host with an address of
// 203.0.113.0/24 (TEST-NET-3), outside the fabric and every container
// network, behind the router (one is added on br0 for a World built by New,
// and becomes every server's default route):
//
//	router namespace   r0 192.0.2.254 (r1 ...)   x0 203.0.113.1
//	                                               |
//	outside namespace                            eth0 203.0.113.10
//
// Every name carries a random prefix, so parallel tests never clash, and
// everything a World creates is removed in t.Cleanup, also when the test
// fails. Nothing touches the root namespace's interfaces, addresses, routes
// or firewall. Servers get addresses from 192.0.2.0/24 (TEST-NET-1);
// containers get the addresses the caller gives, which exist only inside
// their namespaces.
//
// A World is not safe for concurrent use; Container and Namespace methods
// that only run commands are.
//
// All of it needs root and iproute2. RequirePrivileged skips a test when
// not root, and fails it instead when DAOLI_REQUIRE_PRIVILEGED=1 (CI).
package testbed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequireEnv names the environment variable that turns a skip for lack of
// privileges into a failure.
const RequireEnv = "DAOLI_REQUIRE_PRIVILEGED"

// RequirePrivileged skips the test unless it runs as root with iproute2
// installed, or fails it when RequireEnv is "1".
func RequirePrivileged(t testing.TB) {
	t.Helper()
	var reason string
	if os.Geteuid() != 0 {
		reason = "needs root (network namespaces, eBPF)"
	} else if _, err := exec.LookPath("ip"); err != nil {
		reason = "needs iproute2's ip command"
	}
	if reason == "" {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s, and %s=1 forbids skipping", reason, RequireEnv)
	}
	t.Skipf("%s; set %s=1 to make this a failure", reason, RequireEnv)
}

// TB is what a World needs of its owner: a *testing.T, or the demo's
// cleanup stack. Fatal and Fatalf must not return.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Failed() bool
}

// BPFFS mounts a private bpf filesystem in a temporary directory and
// unmounts and removes it at cleanup, so nothing is pinned in the real
// /sys/fs/bpf.
func BPFFS(t TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "daoli-bpffs-")
	if err != nil {
		t.Fatalf("make a bpffs mount point: %v", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		t.Fatalf("mount bpffs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return dir
}

// Namespace is a network namespace created by a World.
type Namespace struct {
	Name string
	t    TB
}

// Run runs a command inside the namespace (ip netns exec) and returns its
// standard output; the test fails when the command does.
func (n *Namespace) Run(args ...string) string {
	n.t.Helper()
	out, err := n.Output(args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// Output is Run that returns the error instead of failing the test.
func (n *Namespace) Output(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("run %q in %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Start starts a command inside the namespace and kills it, by its PID, at
// cleanup. Its output goes to the test log when the test fails.
func (n *Namespace) Start(args ...string) *exec.Cmd {
	n.t.Helper()
	// ip netns exec execs the command, so the PID is the command's own.
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start %q in %s: %v", strings.Join(args, " "), n.Name, err)
	}
	n.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if n.t.Failed() && out.Len() > 0 {
			n.t.Logf("output of %q in %s:\n%s", strings.Join(args, " "), n.Name, out.String())
		}
	})
	return cmd
}

// DialContext opens a connection from inside the namespace, for clients
// in this process of servers that only the namespace reaches. It has the
// signature of net.Dialer.DialContext, for http.Transport and the like.
func (n *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Do runs f on an OS thread switched into the namespace. Sockets f opens
// stay in the namespace after Do returns; goroutines f starts do not run
// in it.
func (n *Namespace) Do(f func() error) error {
	target, err := netns.GetFromName(n.Name)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", n.Name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", n.Name, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go discards it when the goroutine
		// exits, so no other goroutine runs in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", n.Name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Link returns the interface called name inside the namespace.
func (n *Namespace) Link(name string) (netlink.Link, error) {
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", n.Name, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("open netlink in %s: %w", n.Name, err)
	}
	defer nl.Close()
	l, err := nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find link %s in %s: %w", name, n.Name, err)
	}
	return l, nil
}

// World is a fabric, its servers and their containers.
type World struct {
	t      TB
	prefix string
	Fabric *Namespace
	// Router joins the two subnets of a World built by NewRouted; its
	// legs are r0 (192.0.2.254) and r1 (198.51.100.254). A World built by
	// New has one (r0 only) once AddOutside was called, else nil.
	Router  *Namespace
	Servers []*Server
	// Outside is the host AddOutside added, or nil.
	Outside *Outside
}

// Outside is a host outside the cluster, reached from the servers through
// the router.
type Outside struct {
	*Namespace
	// IP is its address, on eth0: OutsideIP.
	IP netip.Addr
}

// The outside world's addresses: the host's and the router's leg towards
// it, on OutsidePrefix.
var (
	OutsidePrefix   = netip.MustParsePrefix("203.0.113.0/24")
	OutsideIP       = netip.MustParseAddr("203.0.113.10")
	OutsideRouterIP = netip.MustParseAddr("203.0.113.1")
)

// AddOutside adds the host outside the cluster (see the package comment)
// and returns it. mtu is the MTU of the router's leg towards the host; 0
// means 1500. A smaller one makes the router send frag-needed for larger
// packets from the servers, as a path to the Internet may, while the host
// itself keeps 1500 (and announces a 1460-byte MSS).
func (w *World) AddOutside(mtu int) *Outside {
	w.t.Helper()
	if w.Outside != nil {
		w.t.Fatalf("testbed: AddOutside called twice")
	}
	if w.Router == nil {
		w.addRouter(1)
		for _, s := range w.Servers {
			w.ip("-n", s.Name, "route", "add", "default", "via", RouterIPs[0].String(), "dev", "uplink")
		}
	}
	o := &Outside{Namespace: w.namespace("out"), IP: OutsideIP}
	w.ip("-n", w.Router.Name, "link", "add", "x0", "type", "veth", "peer", "name", "eth0", "netns", o.Name)
	if mtu != 0 {
		w.ip("-n", w.Router.Name, "link", "set", "x0", "mtu", fmt.Sprint(mtu))
	}
	w.ip("-n", w.Router.Name, "addr", "add", netip.PrefixFrom(OutsideRouterIP, OutsidePrefix.Bits()).String(), "dev", "x0")
	w.ip("-n", w.Router.Name, "link", "set", "x0", "up")
	w.ip("-n", o.Name, "addr", "add", netip.PrefixFrom(o.IP, OutsidePrefix.Bits()).String(), "dev", "eth0")
	w.ip("-n", o.Name, "link", "set", "eth0", "up")
	w.ip("-n", o.Name, "route", "add", "default", "via", OutsideRouterIP.String(), "dev", "eth0")
	w.Outside = o
	return o
}

// The subnets of the fabric; a World built by New uses only the first.
var (
	Subnets = [2]netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/24")}
	// RouterIPs are the router's addresses on Subnets.
	RouterIPs = [2]netip.Addr{netip.MustParseAddr("192.0.2.254"), netip.MustParseAddr("198.51.100.254")}
)

// Server is a server namespace with an uplink into the fabric bridge.
type Server struct {
	*Namespace
	// IP is the ServerIP, on the interface called "uplink".
	IP            netip.Addr
	MAC           net.HardwareAddr
	UplinkIfindex int
	containers    int
}

// Container is a container namespace with eth0, whose veth peer lives in
// its server's namespace.
type Container struct {
	*Namespace
	Server *Server
	IP     netip.Addr
	MAC    net.HardwareAddr
	// Prefix is eth0's address with its subnet; Gateway its default route.
	Prefix  netip.Prefix
	Gateway netip.Addr
	// HostIfname and HostIfindex name the host-side veth in the server's
	// namespace.
	HostIfname  string
	HostIfindex int
}

// New builds a fabric with n servers, 192.0.2.1, 192.0.2.2, ...
func New(t testing.TB, n int) *World {
	t.Helper()
	RequirePrivileged(t)
	return Build(t, n)
}

// Build is New for callers that are not tests, such as the demo: it does
// not check privileges (the first ip command fails without them).
func Build(t TB, n int) *World {
	t.Helper()
	if n < 1 || n > 200 {
		t.Fatalf("testbed: %d servers: want 1 to 200", n)
	}
	w := newWorld(t, 1)
	for i := range n {
		w.addServer(i, 0, byte(i+1))
	}
	return w
}

// NewRouted builds a fabric of two subnets joined by a router namespace,
// with left servers on 192.0.2.0/24 (192.0.2.1, .2, ...) and right servers
// on 198.51.100.0/24 (198.51.100.1, .2, ...), in that order in Servers.
func NewRouted(t testing.TB, left, right int) *World {
	t.Helper()
	RequirePrivileged(t)
	if left < 1 || right < 1 || left > 200 || right > 200 {
		t.Fatalf("testbed: %d and %d servers: want 1 to 200 on each side", left, right)
	}
	w := newWorld(t, 2)
	w.addRouter(2)
	for i := range left {
		w.addServer(i, 0, byte(i+1))
	}
	for i := range right {
		w.addServer(left+i, 1, byte(i+1))
	}
	return w
}

// addRouter creates the router namespace with a leg rI (RouterIPs[i]) on
// each of the first n bridges.
func (w *World) addRouter(n int) {
	w.t.Helper()
	w.Router = w.namespace("rt")
	w.Router.Run("sysctl", "-qw", "net.ipv4.ip_forward=1")
	for i := range n {
		leg, port := fmt.Sprintf("r%d", i), fmt.Sprintf("rt%d", i)
		w.ip("-n", w.Router.Name, "link", "add", leg, "type", "veth", "peer", "name", port, "netns", w.Fabric.Name)
		w.ip("-n", w.Fabric.Name, "link", "set", port, "master", fmt.Sprintf("br%d", i), "up")
		w.ip("-n", w.Router.Name, "addr", "add", netip.PrefixFrom(RouterIPs[i], Subnets[i].Bits()).String(), "dev", leg)
		w.ip("-n", w.Router.Name, "link", "set", leg, "up")
	}
}

func newWorld(t TB, bridges int) *World {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	w := &World{t: t, prefix: "dl" + hex.EncodeToString(b[:])}
	w.Fabric = w.namespace("fab")
	for i := range bridges {
		br := fmt.Sprintf("br%d", i)
		// An address of its own: a bridge without one takes the lowest of
		// its ports', so a port added later (the router's) could change it
		// under the neighbour caches of everything that talks to an
		// address on the bridge (the demo's mapper).
		mac := fmt.Sprintf("02:da:%02x:%02x:%02x:%02x", b[0], b[1], b[2], i)
		w.ip("-n", w.Fabric.Name, "link", "add", br, "address", mac, "type", "bridge")
		w.ip("-n", w.Fabric.Name, "link", "set", br, "up")
	}
	return w
}

func (w *World) ip(args ...string) string {
	w.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		w.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out)
}

// namespace creates a namespace and deletes it at cleanup.
func (w *World) namespace(role string) *Namespace {
	w.t.Helper()
	n := &Namespace{Name: w.prefix + "-" + role, t: w.t}
	w.ip("netns", "add", n.Name)
	w.t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join("/run/netns", n.Name)); errors.Is(err, os.ErrNotExist) {
			return // the test destroyed it, as a dying container's runtime does
		}
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			w.t.Errorf("delete namespace %s: %v: %s", n.Name, err, out)
		}
	})
	w.ip("-n", n.Name, "link", "set", "lo", "up")
	return n
}

// addServer adds server i on subnet sub with host number host.
func (w *World) addServer(i, sub int, host byte) {
	w.t.Helper()
	ip := Subnets[sub].Addr().As4()
	ip[3] = host
	s := &Server{
		Namespace: w.namespace(fmt.Sprintf("s%d", i)),
		IP:        netip.AddrFrom4(ip),
	}
	port := fmt.Sprintf("s%d", i)
	w.ip("-n", s.Name, "link", "add", "uplink", "type", "veth", "peer", "name", port, "netns", w.Fabric.Name)
	w.ip("-n", w.Fabric.Name, "link", "set", port, "master", fmt.Sprintf("br%d", sub), "up")
	w.ip("-n", s.Name, "addr", "add", netip.PrefixFrom(s.IP, Subnets[sub].Bits()).String(), "dev", "uplink")
	w.ip("-n", s.Name, "link", "set", "uplink", "up")
	if w.Router != nil {
		w.ip("-n", s.Name, "route", "add", "default", "via", RouterIPs[sub].String(), "dev", "uplink")
	}
	l, err := s.Link("uplink")
	if err != nil {
		w.t.Fatal(err)
	}
	s.MAC = l.Attrs().HardwareAddr
	s.UplinkIfindex = l.Attrs().Index
	w.Servers = append(w.Servers, s)
}

// AddContainer creates a container behind server s with address addr (its
// prefix length gives the subnet) and a default route via gateway. The MAC
// is random and locally administered.
func (w *World) AddContainer(s *Server, addr netip.Prefix, gateway netip.Addr) *Container {
	w.t.Helper()
	k := s.containers
	c := &Container{
		Namespace: w.namespace(fmt.Sprintf("s%sc%d", strings.TrimPrefix(s.Name, w.prefix+"-s"), k)),
		IP:        addr.Addr(),
		Prefix:    addr,
		Gateway:   gateway,
	}
	mac := make(net.HardwareAddr, 6)
	rand.Read(mac)
	mac[0] = 0x02
	c.MAC = mac
	w.plug(c, s)
	return c
}

// Move moves container c to server to, as a live migration would: it
// deletes c's veth pair and plugs a new one from to into c's namespace,
// with the same eth0 name, MAC, address and default route. c's sockets
// live in its namespace and survive; its neighbour cache starts empty.
// Detach daoli from the old host-side veth first: its ifindex goes away.
func (w *World) Move(c *Container, to *Server) {
	w.t.Helper()
	w.ip("-n", c.Server.Name, "link", "del", c.HostIfname)
	w.plug(c, to)
}

// plug connects c to s with a new veth pair.
func (w *World) plug(c *Container, s *Server) {
	w.t.Helper()
	c.Server = s
	c.HostIfname = fmt.Sprintf("c%d", s.containers)
	s.containers++
	w.ip("-n", s.Name, "link", "add", c.HostIfname, "type", "veth", "peer", "name", "eth0", "netns", c.Name)
	w.ip("-n", c.Name, "link", "set", "eth0", "address", c.MAC.String())
	w.ip("-n", c.Name, "addr", "add", c.Prefix.String(), "dev", "eth0")
	w.ip("-n", c.Name, "link", "set", "eth0", "up")
	w.ip("-n", c.Name, "route", "add", "default", "via", c.Gateway.String(), "dev", "eth0")
	w.ip("-n", s.Name, "link", "set", c.HostIfname, "up")
	l, err := s.Link(c.HostIfname)
	if err != nil {
		w.t.Fatal(err)
	}
	c.HostIfindex = l.Attrs().Index
}

// Namespaces lists the namespaces of this World that exist now; after
// cleanup it is empty.
func (w *World) Namespaces() []string {
	matches, _ := filepath.Glob(filepath.Join("/run/netns", w.prefix+"-*"))
	for i, m := range matches {
		matches[i] = filepath.Base(m)
	}
	return matches
}
