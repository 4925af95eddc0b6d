package swarmhook

// The privileged tests run a real dockerd (Debian's docker.io) inside a
// server namespace of a testbed world, with a daoli agent next to it and
// the plugin in the test process:
//
//	test process (root namespace)     mapper on 127.0.0.1 and on the fabric;
//	    |                             the plugin on /run/docker/plugins/daoli-test-XXXX.sock
//	fabric namespace   br0 192.0.2.250 (the mapper, for the agent)
//	    |
//	server namespace   uplink 192.0.2.1
//	                   daoli agent, dockerd (own mount namespace, state in
//	                   a temporary directory, its own socket, no bridge, no
//	                   iptables), containers from a FROM-scratch image of
//	                   the static daoli binary
//
// Everything is removed at cleanup, also on failure: containers, networks,
// dockerd (by PID), its cgroups, the plugin socket, the namespaces.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// daoliBinary builds the static daoli command once per test binary: the
// agent runs it, and it is the only file of the containers' image.
func daoliBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "daoli-swarmhook-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "daoli")
		cmd := exec.Command("go", "build", "-o", binPath, "../daoli")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build daoli: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// requireDocker skips (or, with DAOLI_REQUIRE_PRIVILEGED=1, fails) when
// Docker's daemon or CLI is missing.
func requireDocker(t *testing.T) (dockerd, cli string) {
	t.Helper()
	testbed.RequirePrivileged(t)
	var missing []string
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		missing = append(missing, "dockerd")
	}
	// Debian's CLI matches Debian's daemon; another one on PATH may be newer.
	cli = "/usr/bin/docker"
	if _, err := os.Stat(cli); err != nil {
		if cli, err = exec.LookPath("docker"); err != nil {
			missing = append(missing, "docker")
		}
	}
	for _, b := range []string{"unshare", "nsenter"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return dockerd, cli
	}
	reason := fmt.Sprintf("needs %s (scripts/setup.sh docker installs Debian's docker.io)", strings.Join(missing, ", "))
	if os.Getenv(testbed.RequireEnv) == "1" {
		t.Fatalf("%s, and %s=1 forbids skipping", reason, testbed.RequireEnv)
	}
	t.Skip(reason)
	return "", ""
}

var mapperIP = netip.MustParseAddr("192.0.2.250")

const (
	serverName = "server-0"
	image      = "daoli-swarmhook-test:latest"
)

// dockerEnv is one server with a mapper, an agent, the plugin and dockerd.
type dockerEnv struct {
	t            *testing.T
	w            *testbed.World
	mc           *mapper.Client
	cli          string // docker CLI
	sock         string // dockerd's socket
	plugin       string // the plugin's (driver's and IPAM's) name
	fabricMapper string // the mapper's address on the fabric, as servers reach it
	reg          *mapper.Registry
	pluginCfg    Config
	running      *running // shared by the copies in()
	runDir       string
}

// running is the plugin being served now, and its watcher if one runs.
type running struct {
	stop func()
	p    *Plugin
	// drop makes the plugin answer Leave and DeleteEndpoint without doing
	// anything: the calls a dockerd killed mid-way never makes.
	drop        atomic.Bool
	w           *Watcher
	stopWatcher func()
}

// in returns e for subtest t: helpers fail t, not its parent.
func (e *dockerEnv) in(t *testing.T) *dockerEnv {
	c := *e
	c.t = t
	return &c
}

func (e *dockerEnv) stopPlugin() {
	e.stopWatcher()
	e.running.stop()
}

// startWatcher runs a Watcher for the plugin being served.
func (e *dockerEnv) startWatcher() *Watcher {
	e.t.Helper()
	e.stopWatcher()
	w, err := NewWatcher(WatcherConfig{Plugin: e.running.p, Docker: e.pluginCfg.Docker, Interval: time.Hour, Grace: 500 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	e.running.w = w
	e.running.stopWatcher = func() { cancel(); <-done }
	return w
}

func (e *dockerEnv) stopWatcher() {
	if e.running.stopWatcher != nil {
		e.running.stopWatcher()
		e.running.stopWatcher, e.running.w = nil, nil
	}
}

func newDockerEnv(t *testing.T) *dockerEnv {
	t.Helper()
	dockerd, cli := requireDocker(t)
	bin := daoliBinary(t)
	w := testbed.New(t, 1)
	testbed.RemoveCreatedDirs(t, filepath.Join(PluginDir), filepath.Dir(PluginDir), "/run/containerd/s", "/run/containerd")
	e := &dockerEnv{t: t, w: w, cli: cli, runDir: t.TempDir(), running: &running{}}
	var b [4]byte
	rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	e.plugin = "daoli-test-" + suffix

	// The mapper: on the fabric for the agent, on loopback for the test
	// and the plugin.
	w.Fabric.Run("ip", "addr", "add", netip.PrefixFrom(mapperIP, 24).String(), "dev", "br0")
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(t.TempDir(), "registry.db")})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := mapper.New(mapper.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	api := mapper.NewAPI(reg, nil)
	var fabric net.Listener
	if err := w.Fabric.Do(func() error {
		var err error
		fabric, err = net.Listen("tcp", net.JoinHostPort(mapperIP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	local, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	servers := []*http.Server{{Handler: api}, {Handler: api}}
	go servers[0].Serve(fabric)
	go servers[1].Serve(local)
	t.Cleanup(func() {
		api.Close()
		for _, s := range servers {
			s.Close()
		}
		st.Close()
	})
	e.mc = mapper.NewClient(local.Addr().String(), nil)
	e.fabricMapper = fabric.Addr().String()
	e.reg = reg

	// The agent, in the server's namespace.
	srv := w.Servers[0]
	srv.Start(bin, "agent", "--uplink", "uplink", "--name", serverName, "--mapper", fabric.Addr().String(),
		"--bpffs", filepath.Join(testbed.BPFFS(t), serverName), "--run-dir", e.runDir, "--log-level", "debug")
	agentSock := filepath.Join(e.runDir, serverName+".sock")
	e.waitFor("the agent", 20*time.Second, func() error { _, err := agentStatus(agentSock); return err })

	// The plugin, in this process.
	dir := t.TempDir()
	e.sock = filepath.Join(dir, "docker.sock")
	dk, err := NewDocker("unix://" + e.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dk.Close() })
	e.pluginCfg = Config{Mapper: e.mc, AgentSocket: agentSock, StateDir: filepath.Join(dir, "plugin"), Docker: dk}
	e.startPlugin()
	t.Cleanup(func() { e.stopPlugin() })

	// dockerd, in the server's network namespace and a mount namespace of
	// its own, so its mounts vanish with it.
	cgroup := "/daoli-test-" + suffix
	cmd := exec.Command("unshare", "--mount", "--propagation", "slave",
		"nsenter", "--net=/run/netns/"+srv.Name, "--",
		dockerd, "--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"), "-H", "unix://"+e.sock,
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--cgroup-parent", cgroup)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	t.Cleanup(func() {
		// unshare and nsenter exec, so the PID is dockerd's own.
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Errorf("dockerd did not stop in 20s; killing it")
			cmd.Process.Kill()
			<-done
		}
		testbed.RemoveCgroups(t, cgroup)
		if t.Failed() {
			t.Logf("dockerd's log:\n%s", tail(logs.String(), 60))
		}
	})
	e.waitFor("dockerd", 30*time.Second, func() error { _, err := e.docker("version"); return err })
	t.Cleanup(e.removeAll) // runs before dockerd stops

	// The image: the static daoli binary, nothing else.
	img := t.TempDir()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, "daoli"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(img, "Dockerfile"), []byte("FROM scratch\nCOPY daoli /daoli\nENTRYPOINT [\"/daoli\"]\n"), 0o644)
	e.must("build", "-q", "-t", image, img)
	return e
}

// startPlugin serves a Plugin from the state directory on the test's
// plugin socket.
func (e *dockerEnv) startPlugin() {
	e.t.Helper()
	p, err := New(e.pluginCfg)
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := Listen(e.plugin)
	if err != nil {
		e.t.Fatal(err)
	}
	h := p.Handler()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e.running.drop.Load() && (r.URL.Path == "/NetworkDriver.Leave" || r.URL.Path == "/NetworkDriver.DeleteEndpoint") {
			w.Header().Set("Content-Type", pluginContentType)
			w.Write([]byte("{}\n"))
			return
		}
		h.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	path := filepath.Join(PluginDir, e.plugin+".sock")
	e.running.p = p
	e.running.stop = func() {
		srv.Close()
		p.Close()
		os.Remove(path)
	}
}

// removeAll removes every container and network of the test's dockerd
// while the plugin still serves, so the registry is told.
func (e *dockerEnv) removeAll() {
	if ids, err := e.docker("ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
		e.docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	if ids, err := e.docker("network", "ls", "-q", "--filter", "driver="+e.plugin); err == nil && strings.TrimSpace(ids) != "" {
		e.docker(append([]string{"network", "rm"}, strings.Fields(ids)...)...)
	}
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// docker runs the Docker CLI against the test's dockerd.
func (e *dockerEnv) docker(args ...string) (string, error) {
	cmd := exec.Command(e.cli, append([]string{"-H", "unix://" + e.sock}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func (e *dockerEnv) must(args ...string) string {
	e.t.Helper()
	out, err := e.docker(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *dockerEnv) waitFor(what string, d time.Duration, f func() error) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// endpointsAt lists the mapper's endpoints of network holding ip.
func (e *dockerEnv) endpointsAt(network, ip string) []mapper.Endpoint {
	e.t.Helper()
	es, err := e.mc.Endpoints(context.Background(), network, "")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []mapper.Endpoint
	for _, x := range es {
		if x.IP.String() == ip {
			out = append(out, x)
		}
	}
	return out
}

type agentStatusReply struct {
	Applied int64 `json:"applied"`
}

func agentStatus(sock string) (agentStatusReply, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	var s agentStatusReply
	resp, err := hc.Get("http://agent/v1/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("agent status: %s", resp.Status)
	}
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// settle waits until the agent programmed the registry's current revision.
func (e *dockerEnv) settle() {
	e.t.Helper()
	snap, err := e.mc.Snapshot(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	e.waitFor("the agent to apply revision "+fmt.Sprint(snap.Revision), 15*time.Second, func() error {
		s, err := agentStatus(e.pluginCfg.AgentSocket)
		if err == nil && s.Applied < snap.Revision {
			err = fmt.Errorf("applied %d", s.Applied)
		}
		return err
	})
}

// ask runs a client container at ip that asks to (IP:port) up to n times
// and returns its answers ("ok ..." lines).
func (e *dockerEnv) ask(network, ip, to string, n int) []string {
	e.t.Helper()
	out, _ := e.docker("run", "--rm", "--network", network, "--ip", ip, image,
		"app", "ask", "--to", to, "--count", fmt.Sprint(n), "--interval", "100ms", "--timeout", "300ms")
	var oks []string
	for line := range strings.Lines(out) {
		if f := strings.SplitN(strings.TrimSpace(line), " ", 3); len(f) == 3 && f[1] == "ok" {
			oks = append(oks, f[2])
		}
	}
	return oks
}

func (e *dockerEnv) linkExists(name string) bool {
	_, err := e.w.Servers[0].Link(name)
	return err == nil
}

func TestDocker(t *testing.T) {
	e := newDockerEnv(t)
	ctx := context.Background()
	start := time.Now()
	e.must("network", "create", "-d", e.plugin, "--ipam-driver", e.plugin, "--subnet", "10.1.0.0/24", "net1")
	var n mapper.Network
	e.waitFor("network net1 in the mapper", 10*time.Second, func() error {
		var err error
		n, err = e.mc.Network(ctx, "net1")
		return err
	})
	t.Logf("docker network create → mapper network: %v", time.Since(start).Round(time.Millisecond))
	if n.Subnet.String() != "10.1.0.0/24" || n.Gateway.String() != "10.1.0.1" {
		t.Fatalf("mapper network %+v: want 10.1.0.0/24 via 10.1.0.1", n)
	}

	t.Run("RunAndTraffic", func(t *testing.T) {
		e := e.in(t)
		start := time.Now()
		e.must("run", "-d", "--name", "web", "--network", "net1", "--ip", "10.1.0.5", "--expose", "8080/tcp",
			image, "app", "serve", "--port", "8080", "--name", "web")
		t.Logf("docker run: %v", time.Since(start).Round(time.Millisecond))
		es := e.endpointsAt("net1", "10.1.0.5")
		if len(es) != 1 {
			t.Fatalf("mapper has %d endpoints at 10.1.0.5, want 1", len(es))
		}
		ep := es[0]
		if ep.State != mapper.Active || ep.Server != serverName || len(ep.Ports) != 1 || ep.Ports[0].Port != 8080 {
			t.Errorf("endpoint %+v: want active on %s serving 8080/tcp", ep, serverName)
		}
		if !e.linkExists(ep.Interface) {
			t.Errorf("host veth %s of the endpoint is not in the server namespace", ep.Interface)
		}
		got := strings.TrimSpace(e.must("inspect", "-f", "{{.NetworkSettings.Networks.net1.IPAddress}} {{.NetworkSettings.Networks.net1.MacAddress}} {{.NetworkSettings.Networks.net1.Gateway}}", "web"))
		if want := "10.1.0.5 " + ep.MAC.String() + " 10.1.0.1"; got != want {
			t.Errorf("docker inspect: %q, want %q (the mapper's IP, MAC and gateway)", got, want)
		}

		e.settle()
		oks := e.ask("net1", "10.1.0.6", "10.1.0.5:8080", 30)
		if len(oks) == 0 {
			t.Fatal("the client never got an answer from 10.1.0.5:8080")
		}
		if !strings.HasPrefix(oks[0], "web saw 10.1.0.6:") {
			t.Errorf("answer %q: want web to see the true client address 10.1.0.6", oks[0])
		}
		if left := e.endpointsAt("net1", "10.1.0.6"); len(left) != 0 {
			t.Errorf("the client container is gone (--rm) but its endpoint remains: %+v", left)
		}

		start = time.Now()
		e.must("kill", "web")
		e.waitFor("the killed container's endpoint to leave the mapper", 10*time.Second, func() error {
			if es := e.endpointsAt("net1", "10.1.0.5"); len(es) != 0 {
				return fmt.Errorf("still %+v", es[0])
			}
			return nil
		})
		t.Logf("docker kill → endpoint removed: %v", time.Since(start).Round(time.Millisecond))
		if e.linkExists(ep.Interface) {
			t.Errorf("host veth %s outlived its container", ep.Interface)
		}
		e.must("rm", "web")
	})

	t.Run("DuplicateRefused", func(t *testing.T) {
		e := e.in(t)
		e.must("run", "-d", "--name", "first", "--network", "net1", "--ip", "10.1.0.7", image, "app", "serve")
		_, err := e.docker("run", "-d", "--name", "second", "--network", "net1", "--ip", "10.1.0.7", image, "app", "serve")
		if err == nil || !strings.Contains(err.Error(), "only containers that declare the same service") {
			t.Fatalf("second container at 10.1.0.7: %v; want a refusal that says how to share", err)
		}
		if es := e.endpointsAt("net1", "10.1.0.7"); len(es) != 1 {
			t.Errorf("mapper has %d endpoints at 10.1.0.7, want 1", len(es))
		}
		if state := strings.TrimSpace(e.must("inspect", "-f", "{{.State.Running}}", "first")); state != "true" {
			t.Errorf("the first container is running=%s", state)
		}
		e.must("rm", "-f", "first", "second")
	})

	t.Run("SharedForReplicas", func(t *testing.T) {
		e := e.in(t)
		for _, name := range []string{"r1", "r2"} {
			e.must("run", "-d", "--name", name, "--network", "name=net1,driver-opt="+OptService+"=web", "--ip", "10.1.0.8",
				"--expose", "8080/tcp", image, "app", "serve", "--port", "8080", "--name", name)
		}
		es := e.endpointsAt("net1", "10.1.0.8")
		if len(es) != 2 {
			t.Fatalf("mapper has %d endpoints at 10.1.0.8, want the 2 replicas", len(es))
		}
		svcs, err := e.mc.Services(ctx)
		if err != nil {
			t.Fatal(err)
		}
		backends := 0
		for _, s := range svcs {
			if s.Network == "net1" && s.IP.String() == "10.1.0.8" && s.Port == 8080 {
				backends = len(s.Backends)
			}
		}
		if backends != 2 {
			t.Errorf("service 10.1.0.8:8080 has %d backends, want 2", backends)
		}
		for _, tt := range []struct{ name, network string }{
			{"undeclared", "net1"},
			{"other-service", "name=net1,driver-opt=" + OptService + "=db"},
		} {
			if _, err := e.docker("run", "-d", "--name", tt.name, "--network", tt.network, "--ip", "10.1.0.8", image, "app", "serve"); err == nil {
				t.Errorf("%s container got 10.1.0.8, which replicas of web hold", tt.name)
			}
		}
		e.settle()
		oks := e.ask("net1", "10.1.0.9", "10.1.0.8:8080", 30)
		if len(oks) == 0 {
			t.Fatal("no replica of 10.1.0.8:8080 answered")
		}
		for _, ok := range oks {
			if !strings.HasPrefix(ok, "r1 saw 10.1.0.9:") && !strings.HasPrefix(ok, "r2 saw 10.1.0.9:") {
				t.Errorf("answer %q: want r1 or r2 seeing 10.1.0.9", ok)
			}
		}
		e.must("rm", "-f", "r1", "r2", "undeclared", "other-service")
		if es := e.endpointsAt("net1", "10.1.0.8"); len(es) != 0 {
			t.Errorf("removed replicas left endpoints: %+v", es)
		}
	})

	t.Run("PluginRestart", func(t *testing.T) {
		e := e.in(t)
		e.must("run", "-d", "--name", "before", "--network", "net1", "--ip", "10.1.0.10", image, "app", "serve")
		e.stopPlugin()
		e.startPlugin()
		// Docker does not send CreateNetwork again: the new plugin serves
		// net1 and "before" from its state file.
		e.must("run", "-d", "--name", "after", "--network", "net1", "--ip", "10.1.0.11", image, "app", "serve")
		if es := e.endpointsAt("net1", "10.1.0.11"); len(es) != 1 {
			t.Errorf("after restart: %d endpoints at 10.1.0.11, want 1", len(es))
		}
		e.must("rm", "-f", "before")
		if es := e.endpointsAt("net1", "10.1.0.10"); len(es) != 0 {
			t.Errorf("a container created before the restart was removed after it, but its endpoint remains: %+v", es)
		}
		e.must("rm", "-f", "after")
	})

	e.buildHealthImage()
	t.Run("EventsKill", func(t *testing.T) { testEventsKill(t, e.in(t)) })
	t.Run("EventsHealth", func(t *testing.T) { testEventsHealth(t, e.in(t)) })
	t.Run("EventsLost", func(t *testing.T) { testEventsLost(t, e.in(t)) })
	t.Run("Published", func(t *testing.T) { testPublished(t, e.in(t)) })
	t.Run("ManagedPlugin", func(t *testing.T) { testManagedPlugin(t, e.in(t)) })

	e.must("network", "rm", "net1")
	if _, err := e.mc.Network(ctx, "net1"); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("after docker network rm, the mapper network: %v; want not found", err)
	}
}
