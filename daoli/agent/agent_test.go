package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/pkitest"
	"github.com/daolinet/daoli/mapper/store"
)

// bin is the daoli command, built once: agents and workloads run as real
// processes inside their namespaces.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "daoli-agent-test")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "daoli")
	if out, err := exec.Command("go", "build", "-o", bin, "../").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build daoli: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// mapperIP is the mapper's address on the fabric, where agents reach it.
var mapperIP = netip.MustParseAddr("192.0.2.250")

// cluster is a testbed World with a mapper on its fabric and an agent on
// every server.
type cluster struct {
	t      *testing.T
	w      *testbed.World
	reg    *mapper.Registry
	mc     *mapper.Client // from the test, over loopback
	addr   string         // the mapper on the fabric, for agents
	bpffs  string
	runDir string
	db     string
	stop   func() // stops the mapper
	// pki, when set, makes the mapper require client certificates and
	// gives each agent its server's (see auth_test.go).
	pki    *pkitest.PKI
	agents map[string]*exec.Cmd
	// agentArgs are added to every agent's command line.
	agentArgs []string
}

func newCluster(t *testing.T, servers int, agentArgs ...string) *cluster {
	t.Helper()
	return buildCluster(t, servers, nil, agentArgs...)
}

func buildCluster(t *testing.T, servers int, p *pkitest.PKI, agentArgs ...string) *cluster {
	t.Helper()
	w := testbed.New(t, servers)
	c := &cluster{t: t, w: w, agentArgs: agentArgs, bpffs: testbed.BPFFS(t), runDir: t.TempDir(), db: filepath.Join(t.TempDir(), "registry.db"), agents: map[string]*exec.Cmd{}, pki: p}
	w.Fabric.Run("ip", "addr", "add", netip.PrefixFrom(mapperIP, 24).String(), "dev", "br0")
	c.startMapper()
	if _, err := c.mc.CreateNetwork(context.Background(), mapper.NetworkSpec{Name: "blue", Subnet: netip.MustParsePrefix("10.1.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	for i := range w.Servers {
		c.startAgent(i)
	}
	return c
}

// got fails the test on err: got(f())(t).
func got[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// startMapper serves the registry on the fabric (for agents) and on
// loopback (for the test). It keeps the fabric port across restarts.
func (c *cluster) startMapper() {
	t := c.t
	t.Helper()
	st := got(store.OpenBolt(store.BoltConfig{Path: c.db}))(t)
	c.reg = got(mapper.New(mapper.Config{Store: st}))(t)
	api := mapper.NewAPI(c.reg, nil)
	var fabric net.Listener
	listenOn := "0"
	if c.addr != "" {
		_, listenOn, _ = net.SplitHostPort(c.addr)
	}
	err := c.w.Fabric.Do(func() error {
		var err error
		fabric, err = net.Listen("tcp", net.JoinHostPort(mapperIP.String(), listenOn))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	local := got(net.Listen("tcp", "127.0.0.1:0"))(t)
	c.addr = fabric.Addr().String()
	c.mc = mapper.NewClient(local.Addr().String(), nil)
	if c.pki != nil {
		fabric, local = c.pki.Serve(api, fabric, mapperIP.String()), c.pki.Serve(api, local, "127.0.0.1")
		c.addr = "https://" + c.addr
		c.mc = c.pki.Client("https://"+local.Addr().String(), mapper.RoleOperator, "test")
	}
	servers := []*http.Server{{Handler: api}, {Handler: api}}
	go servers[0].Serve(fabric)
	go servers[1].Serve(local)
	stopped := false
	c.stop = func() {
		if stopped {
			return
		}
		stopped = true
		api.Close()
		for _, s := range servers {
			s.Close()
		}
		st.Close()
	}
	t.Cleanup(c.stop)
}

func (c *cluster) serverName(i int) string { return fmt.Sprintf("server-%d", i) }

// startAgent runs server i's agent in its namespace and waits until it
// answers on its socket.
func (c *cluster) startAgent(i int) {
	t := c.t
	t.Helper()
	name := c.serverName(i)
	args := append([]string{bin, "agent", "--uplink", "uplink", "--name", name, "--mapper", c.addr,
		"--bpffs", filepath.Join(c.bpffs, name), "--run-dir", c.runDir, "--log-level", "debug"}, c.agentArgs...)
	if c.pki != nil {
		cert, key := c.pki.Issue(mapper.RoleServer, name)
		args = append(args, "--tls-ca", c.pki.CAFile(), "--tls-cert", cert, "--tls-key", key)
	}
	cmd := c.w.Servers[i].Start(args...)
	c.agents[name] = cmd
	cl := c.agent(name)
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cl.Status(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent of %s did not come up: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) killAgent(name string, sig syscall.Signal) {
	c.t.Helper()
	cmd := c.agents[name]
	if err := cmd.Process.Signal(sig); err != nil {
		c.t.Fatal(err)
	}
	cmd.Wait()
}

func (c *cluster) agent(name string) *agent.Client {
	return agent.NewClient(agent.SocketPath(c.runDir, name))
}

// container creates an empty namespace and attaches it through server i.
func (c *cluster) container(role string, server int, req agent.AttachRequest) (*testbed.Namespace, mapper.Endpoint) {
	c.t.Helper()
	ns := c.w.AddNamespace(role)
	req.Netns = filepath.Join("/run/netns", ns.Name)
	if req.Network == "" {
		req.Network = "blue"
	}
	if req.Name == "" {
		req.Name = role
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e := got(c.agent(c.serverName(server)).Attach(ctx, req))(c.t)
	return ns, e
}

var tcpUDP8080 = []mapper.PortSpec{{Port: 8080, Protocol: mapper.TCP}, {Port: 8080, Protocol: mapper.UDP}}

// settle waits until every agent has programmed its dataplane from the
// registry's current revision.
func (c *cluster) settle() {
	c.t.Helper()
	snap := got(c.mc.Snapshot(context.Background()))(c.t)
	for i := range c.w.Servers {
		cl := c.agent(c.serverName(i))
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			st, err := cl.Status(context.Background())
			if err == nil && st.Applied >= snap.Revision {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("agent of %s did not apply revision %d: %+v, %v", c.serverName(i), snap.Revision, st, err)
			}
		}
	}
}

// serve starts the app server in ns and waits until a client in from gets
// an answer from it.
func serve(t *testing.T, ns, from *testbed.Namespace, name, addr string) *exec.Cmd {
	t.Helper()
	cmd := ns.Start(bin, "app", "serve", "--port", "8080", "--name", name)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, _ := from.Output(bin, "app", "ask", "--to", addr, "--count", "1", "--timeout", "200ms")
		if strings.Contains(out, " ok "+name+" saw") {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s at %s never answered: %s", name, addr, out)
		}
	}
}

// ask runs the app client in ns and returns its lines.
func ask(t *testing.T, ns *testbed.Namespace, args ...string) []string {
	t.Helper()
	out := ns.Run(append([]string{bin, "app", "ask"}, args...)...)
	return strings.Split(strings.TrimSpace(out), "\n")
}

// stream runs the app client in ns in the background, collecting its lines
// until stop is called.
type stream struct {
	mu    sync.Mutex
	lines []string
	cmd   *exec.Cmd
	done  chan struct{}
}

func startStream(t *testing.T, ns *testbed.Namespace, args ...string) *stream {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin, "app", "ask"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &stream{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *stream) stop() []string {
	s.cmd.Process.Signal(syscall.SIGTERM)
	<-s.done
	s.cmd.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lines
}

func (s *stream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lines)
}

// waitLines waits until the stream printed n more lines.
func (s *stream) waitLines(t *testing.T, n int) {
	t.Helper()
	want := s.count() + n
	for deadline := time.Now().Add(20 * time.Second); s.count() < want; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("stream printed %d lines, want %d", s.count(), want)
		}
	}
}

func errLines(lines []string) []string {
	var out []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 1 && f[1] != "ok" {
			out = append(out, l)
		}
	}
	return out
}

func TestAttachAndCrossServerTraffic(t *testing.T) {
	c := newCluster(t, 2)
	client, ce := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	serve(t, web, client, "web", "10.1.0.9:8080")

	// The container sees its identity: eth0 with its MAC and IP, a
	// default route through the gateway.
	link := got(client.Link("eth0"))(t)
	if link.Attrs().HardwareAddr.String() != ce.MAC.String() {
		t.Errorf("client eth0 MAC %s, want the endpoint's %s", link.Attrs().HardwareAddr, ce.MAC)
	}
	if out := client.Run("ip", "route", "show", "default"); !strings.Contains(out, "via 10.1.0.1 dev eth0") {
		t.Errorf("client default route %q, want via the gateway 10.1.0.1", out)
	}
	for _, proto := range []string{"tcp", "udp", "http"} {
		lines := ask(t, client, "--to", "10.1.0.9:8080", "--proto", proto, "--count", "3", "--interval", "10ms")
		for _, l := range lines {
			// The server sees the client's true IP, with a port of the
			// client's identity block.
			if !strings.Contains(l, " ok web saw 10.1.0.5:") {
				t.Errorf("%s: %q, want an answer from web that saw 10.1.0.5", proto, l)
			}
		}
	}
	// A port nobody serves is dropped and counted, not answered.
	if lines := ask(t, client, "--to", "10.1.0.9:9999", "--count", "1", "--timeout", "300ms"); len(errLines(lines)) != 1 {
		t.Errorf("a port nobody serves answered: %v", lines)
	}
	st := got(c.agent("server-0").Status(context.Background()))(t)
	if st.Drops["no_service"] == 0 {
		t.Errorf("server-0 counted no no_service drop: %v", st.Drops)
	}

	// Detach removes the endpoint and its veth.
	if _, err := c.agent("server-1").Detach(context.Background(), agent.DetachRequest{Endpoint: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := web.Link("eth0"); err == nil {
		t.Error("web still has eth0 after detach")
	}
	if _, err := c.mc.Endpoint(context.Background(), "web"); err == nil {
		t.Error("web is still registered after detach")
	}
}

// TestFailoverWhenTheMasterDies kills the master's container (its process
// and its network namespace, as a container runtime does) while a client
// keeps asking: the backup answers on the same IP:Port.
func TestFailoverWhenTheMasterDies(t *testing.T) {
	c := newCluster(t, 3)
	vip := netip.MustParseAddr("10.1.0.9")
	master, _ := c.container("master", 1, agent.AttachRequest{IP: vip, Ports: tcpUDP8080, Mode: mapper.Failover, Priority: 100})
	backup, _ := c.container("backup", 2, agent.AttachRequest{IP: vip, Ports: tcpUDP8080, Mode: mapper.Failover, Priority: 10})
	masterApp := master.Start(bin, "app", "serve", "--port", "8080", "--name", "master")
	backup.Start(bin, "app", "serve", "--port", "8080", "--name", "backup")
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})

	for _, proto := range []string{"udp", "tcp"} {
		s := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", proto, "--count", "0", "--interval", "20ms", "--timeout", "200ms")
		s.waitLines(t, 5)
		if proto == "udp" {
			masterApp.Process.Kill()
			masterApp.Wait()
			if out, err := exec.Command("ip", "netns", "del", master.Name).CombinedOutput(); err != nil {
				t.Fatalf("delete the master's namespace: %v: %s", err, out)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			s.mu.Lock()
			last := s.lines[len(s.lines)-1]
			s.mu.Unlock()
			if strings.Contains(last, " ok backup saw 10.1.0.5:") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the backup never answered; last line %q", proto, last)
			}
			time.Sleep(20 * time.Millisecond)
		}
		s.waitLines(t, 5)
		lines := s.stop()
		t.Logf("%s: %d requests, %d unanswered around the failover", proto, len(lines), len(errLines(lines)))
		if proto == "tcp" && len(errLines(lines)) != 0 {
			t.Errorf("tcp after the failover: unanswered requests %v", errLines(lines))
		}
	}
	e := got(c.mc.Endpoint(context.Background(), "master"))(t)
	if e.Endpoint.State != mapper.Down {
		t.Errorf("master is %s in the registry, want down", e.Endpoint.State)
	}
}

// TestAgentRestartLosesNothing kills and restarts the agents of both ends
// while UDP and TCP traffic flows: the pinned dataplane keeps forwarding
// and the new agent changes nothing that was right.
func TestAgentRestartLosesNothing(t *testing.T) {
	c := newCluster(t, 2)
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	serve(t, web, client, "web", "10.1.0.9:8080")
	udp := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "udp", "--count", "0", "--interval", "10ms", "--timeout", "500ms")
	tcp := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "tcp", "--keep", "--count", "0", "--interval", "10ms", "--timeout", "500ms")
	udp.waitLines(t, 10)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		for i := range c.w.Servers {
			c.killAgent(c.serverName(i), sig)
			udp.waitLines(t, 10) // traffic flows with no agent at all
			c.startAgent(i)
		}
	}
	// A change after the restarts is still programmed.
	web2, _ := c.container("web2", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.10"), Ports: tcpUDP8080})
	c.settle()
	serve(t, web2, client, "web2", "10.1.0.10:8080")
	udp.waitLines(t, 10)
	for name, s := range map[string]*stream{"udp": udp, "tcp": tcp} {
		lines := s.stop()
		bad := errLines(lines)
		if len(bad) > 0 {
			t.Errorf("%s: %d of %d requests failed across agent restarts: %v", name, len(bad), len(lines), bad)
		}
		t.Logf("%s: %d requests across 4 agent restarts, %d lost", name, len(lines), len(bad))
	}
}

// TestMapperRestartKeepsForwarding stops the mapper while traffic flows:
// forwarding goes on, and when the mapper returns the agents resume the
// change log from where they were.
func TestMapperRestartKeepsForwarding(t *testing.T) {
	c := newCluster(t, 2)
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	serve(t, web, client, "web", "10.1.0.9:8080")
	udp := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "udp", "--count", "0", "--interval", "10ms", "--timeout", "500ms")
	udp.waitLines(t, 10)
	c.stop()
	udp.waitLines(t, 50) // half a second with no mapper
	c.startMapper()
	web2, _ := c.container("web2", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.10"), Ports: tcpUDP8080})
	c.settle() // the agents resumed the change log
	serve(t, web2, client, "web2", "10.1.0.10:8080")
	lines := udp.stop()
	if bad := errLines(lines); len(bad) > 0 {
		t.Errorf("%d of %d requests failed across a mapper restart: %v", len(bad), len(lines), bad)
	}
}

// TestLiveMigrationKeepsTheConnection moves a container to another server
// while a TCP connection to it stays open.
func TestLiveMigrationKeepsTheConnection(t *testing.T) {
	c := newCluster(t, 3)
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, before := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	serve(t, web, client, "web", "10.1.0.9:8080")
	tcp := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "tcp", "--keep", "--count", "0", "--interval", "10ms", "--timeout", "3s")
	tcp.waitLines(t, 10)
	moved := got(c.agent("server-2").Move(context.Background(), agent.MoveRequest{Endpoint: "web", Netns: filepath.Join("/run/netns", web.Name)}))(t)
	if moved.Server != "server-2" || moved.IP != before.IP || moved.MAC != before.MAC || moved.Identity != before.Identity {
		t.Errorf("moved endpoint %+v, want web on server-2 with its identity unchanged", moved)
	}
	tcp.waitLines(t, 20)
	lines := tcp.stop()
	if bad := errLines(lines); len(bad) > 0 {
		t.Errorf("the connection did not survive the move: %v", bad)
	}
	// One connection all along: the client port the server saw never changed.
	var ports []string
	for _, l := range lines {
		_, rest, _ := strings.Cut(l, "saw 10.1.0.5:")
		p, _, _ := strings.Cut(rest, ":")
		if len(ports) == 0 || ports[len(ports)-1] != p {
			ports = append(ports, p)
		}
	}
	if len(ports) != 1 {
		t.Errorf("the server saw client ports %v, want one connection", ports)
	}
	t.Logf("%d requests over one connection across the move", len(lines))
}

// TestHealthChecks stops a container's service while the container lives
// on: the agent's health checks mark it down, and active again once the
// service is back.
func TestHealthChecks(t *testing.T) {
	c := newCluster(t, 2, "--health-interval", "50ms", "--health-failures", "2")
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	app := serve(t, web, client, "web", "10.1.0.9:8080")
	state := func() mapper.State {
		return got(c.mc.Endpoint(context.Background(), "web"))(t).Endpoint.State
	}
	waitState := func(want mapper.State) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); state() != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("web is %s, want %s", state(), want)
			}
		}
	}
	time.Sleep(300 * time.Millisecond) // several checks pass
	if s := state(); s != mapper.Active {
		t.Fatalf("a healthy endpoint is %s", s)
	}
	app.Process.Kill()
	app.Wait()
	waitState(mapper.Down)
	serve(t, web, web, "web", "10.1.0.9:8080") // answers from inside the container
	waitState(mapper.Active)
	c.settle() // the client's server has applied it too
	if l := ask(t, client, "--to", "10.1.0.9:8080", "--count", "1"); !strings.Contains(l[0], " ok web saw") {
		t.Errorf("after coming back up, web answered %q", l)
	}
}

// TestAttachRefusals: requests the agent must refuse before changing
// anything, and one the mapper refuses half-way; none may leave an
// endpoint or a veth behind.
func TestAttachRefusals(t *testing.T) {
	c := newCluster(t, 2)
	ctx := context.Background()
	web, _ := c.container("web", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	victim := c.w.AddNamespace("victim")
	server0 := filepath.Join("/run/netns", c.w.Servers[0].Name)
	for _, tt := range []struct {
		name     string
		do       func() error
		fragment string
	}{
		{"bad ifname", func() error {
			_, err := c.agent("server-0").Attach(ctx, agent.AttachRequest{Netns: "/run/netns/" + victim.Name, Ifname: "a/b", Network: "blue", IP: netip.MustParseAddr("10.1.0.20")})
			return err
		}, `ifname "a/b"`},
		{"the server's own namespace", func() error {
			_, err := c.agent("server-0").Attach(ctx, agent.AttachRequest{Netns: server0, Network: "blue", IP: netip.MustParseAddr("10.1.0.21")})
			return err
		}, "the server's own network namespace"},
		{"a path that holds no namespace", func() error {
			// What the agent sees of a runtime's namespace mount made in
			// another mount namespace: the empty file under it.
			plain := filepath.Join(t.TempDir(), "cni-1234")
			if err := os.WriteFile(plain, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := c.agent("server-0").Attach(ctx, agent.AttachRequest{Netns: plain, Network: "blue", IP: netip.MustParseAddr("10.1.0.23")})
			return err
		}, "is no network namespace here"},
		{"unknown network", func() error {
			_, err := c.agent("server-0").Attach(ctx, agent.AttachRequest{Netns: "/run/netns/" + victim.Name, Network: "nope", IP: netip.MustParseAddr("10.1.0.22")})
			return err
		}, "not found"},
		{"IP the mapper refuses", func() error {
			_, err := c.agent("server-0").Attach(ctx, agent.AttachRequest{Netns: "/run/netns/" + victim.Name, Network: "blue", IP: netip.MustParseAddr("10.1.0.1")})
			return err
		}, "gateway"},
		{"move to where it is", func() error {
			_, err := c.agent("server-0").Move(ctx, agent.MoveRequest{Endpoint: "web", Netns: "/run/netns/" + web.Name})
			return err
		}, "already runs on server-0"},
		{"move with a bad ifname", func() error {
			_, err := c.agent("server-1").Move(ctx, agent.MoveRequest{Endpoint: "web", Netns: "/run/netns/" + web.Name, Ifname: strings.Repeat("x", 16)})
			return err
		}, "ifname"},
	} {
		if err := tt.do(); err == nil || !strings.Contains(err.Error(), tt.fragment) {
			t.Errorf("%s: %v, want an error saying %q", tt.name, err, tt.fragment)
		}
	}
	eps := got(c.mc.Endpoints(ctx, "", ""))(t)
	if len(eps) != 1 || eps[0].Name != "web" || eps[0].Server != "server-0" {
		t.Errorf("after the refusals the registry holds %+v, want only web on server-0", eps)
	}
	for i, s := range c.w.Servers {
		out := s.Run("ip", "-o", "link", "show", "type", "veth")
		if n := strings.Count(out, ": dl"); n != 1-i {
			t.Errorf("server-%d has %d daoli veths after the refusals, want %d:\n%s", i, n, 1-i, out)
		}
	}
	if out := victim.Run("ip", "-o", "link"); strings.Count(out, "\n") != 1 {
		t.Errorf("the refused container has interfaces besides lo:\n%s", out)
	}
}

// TestMetrics scrapes an agent's /metrics, from inside its server's
// namespace, after some traffic.
func TestMetrics(t *testing.T) {
	c := newCluster(t, 2, "--metrics", "127.0.0.1:9471")
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	serve(t, web, client, "web", "10.1.0.9:8080")
	ask(t, client, "--to", "10.1.0.9:8080", "--proto", "udp", "--count", "3", "--interval", "1ms") // UDP flows stay in conntrack for 30 s
	ask(t, client, "--to", "10.1.0.9:9999", "--count", "1", "--timeout", "100ms")                  // a drop
	c.settle()
	text := c.scrape(0, "127.0.0.1:9471")
	metric := func(name string) int64 { t.Helper(); return metricValue(t, text, name) }
	snap := got(c.mc.Snapshot(context.Background()))(t)
	for _, tt := range []struct {
		name string
		ok   func(int64) bool
		want string
	}{
		{"daoli_dataplane_flows", func(v int64) bool { return v >= 3 }, "at least the 3 UDP flows"},
		{`daoli_dataplane_map_entries{map="endpoints"}`, func(v int64) bool { return v == 2 }, "2"},
		{`daoli_dataplane_drops_total{reason="no_service"}`, func(v int64) bool { return v >= 1 }, "at least 1"},
		{"daoli_agent_applied_revision", func(v int64) bool { return v >= snap.Revision }, fmt.Sprint(">= ", snap.Revision)},
		{"daoli_agent_reconciles_total", func(v int64) bool { return v > 0 }, "more than 0"},
	} {
		if v := metric(tt.name); !tt.ok(v) {
			t.Errorf("%s = %d, want %s", tt.name, v, tt.want)
		}
	}
}

// scrape reads the metrics of server i's agent, served on addr inside its
// namespace.
func (c *cluster) scrape(i int, addr string) string {
	c.t.Helper()
	var body []byte
	err := c.w.Servers[i].Do(func() error {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /metrics HTTP/1.0\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		body, err = io.ReadAll(conn)
		return err
	})
	if err != nil {
		c.t.Fatal(err)
	}
	return string(body)
}

// metricValue is the value of the sample name (with its labels) in text.
func metricValue(t *testing.T, text, name string) int64 {
	t.Helper()
	for l := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+" "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in:\n%s", name, text)
	return 0
}

// TestRestartDuringABurst: an agent killed with SIGKILL in the middle of a
// burst of registrations, and started again while the burst goes on,
// catches up: once the burst is over both agents' dataplanes hold every
// endpoint of the registry, and traffic between two containers went on.
func TestRestartDuringABurst(t *testing.T) {
	c := newCluster(t, 2, "--metrics", "127.0.0.1:9471")
	ctx := context.Background()
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	serve(t, web, client, "web", "10.1.0.9:8080")
	udp := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "udp", "--count", "0", "--interval", "10ms", "--timeout", "500ms")

	// Endpoints on servers of no agent: 3 servers of 8 addresses, 64 wire
	// blocks each.
	var specs []mapper.EndpointSpec
	for k := range 3 {
		spec := mapper.ServerSpec{Name: fmt.Sprintf("phantom-%d", k), MAC: mapper.MAC{0x02, 0xfe, 0, 0, 0, byte(k)}}
		for j := range 8 {
			spec.IPs = append(spec.IPs, netip.AddrFrom4([4]byte{198, 51, 100, byte(8*k + j + 1)}))
		}
		got(c.mc.RegisterServer(ctx, spec))(t)
		for i := range 400 {
			specs = append(specs, mapper.EndpointSpec{Network: "blue", Server: spec.Name,
				IP:    netip.AddrFrom4([4]byte{10, 1, 0, byte(100 + i%100)}),
				Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}}})
		}
	}
	// 24 batches of 50, one every 40 ms: the burst lasts about a second,
	// longer than the agent takes to come back.
	burst := make(chan error, 1)
	registered := make(chan struct{}, len(specs)/50)
	var batches atomic.Int32
	go func() {
		for i := 0; i < len(specs); i += 50 {
			if _, err := c.mc.CreateEndpoints(ctx, specs[i:i+50]); err != nil {
				burst <- err
				return
			}
			batches.Add(1)
			registered <- struct{}{}
			time.Sleep(40 * time.Millisecond)
		}
		burst <- nil
	}()
	for range 6 { // a quarter of the burst
		<-registered
	}
	c.killAgent(c.serverName(0), syscall.SIGKILL)
	c.startAgent(0)
	if n := batches.Load(); n == int32(len(specs)/50) {
		t.Errorf("the burst was over when the agent came back: the test does not test a restart during it")
	}
	if err := <-burst; err != nil {
		t.Fatal(err)
	}
	c.settle()
	total := int64(len(got(c.mc.Endpoints(ctx, "", ""))(t)))
	if total != int64(len(specs))+2 {
		t.Fatalf("the registry holds %d endpoints, want %d", total, len(specs)+2)
	}
	for i := range c.w.Servers {
		if n := metricValue(t, c.scrape(i, "127.0.0.1:9471"), `daoli_dataplane_map_entries{map="endpoints"}`); n != total {
			t.Errorf("server-%d's dataplane holds %d endpoints, the registry %d", i, n, total)
		}
	}
	udp.waitLines(t, 10)
	lines := udp.stop()
	if bad := errLines(lines); len(bad) > 0 {
		t.Errorf("%d of %d requests failed across the burst and the restart: %v", len(bad), len(lines), bad)
	}
}
