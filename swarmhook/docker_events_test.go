package swarmhook

// The events watcher against the real dockerd of docker_test.go. Run as
// subtests of TestDocker, which owns the dockerd, the agent and the
// network net1.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/pkitest"
)

const healthImage = "daoli-swarmhook-health:latest"

// buildHealthImage adds a HEALTHCHECK to the test image: healthy while
// 127.0.0.1:8080 accepts and /drain does not exist. Docker's own
// --health-cmd needs a shell, which a FROM-scratch image lacks.
func (e *dockerEnv) buildHealthImage() {
	e.t.Helper()
	dir := e.t.TempDir()
	df := "FROM " + image + "\n" +
		`HEALTHCHECK --interval=300ms --timeout=2s --retries=1 CMD ["/daoli", "healthcheck", "--tcp", "127.0.0.1:8080", "--unless-exists", "/drain"]` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.must("build", "-q", "-t", healthImage, dir)
}

// drain creates /drain in a running container (it has no shell: docker cp).
func (e *dockerEnv) drain(container string) {
	e.t.Helper()
	f := filepath.Join(e.t.TempDir(), "drain")
	if err := os.WriteFile(f, []byte("drain\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.must("cp", f, container+":/drain")
}

func (e *dockerEnv) inspect(container, format string) string {
	e.t.Helper()
	return strings.TrimSpace(e.must("inspect", "-f", format, container))
}

// only returns the one endpoint at ip, or fails.
func (e *dockerEnv) only(ip string) mapper.Endpoint {
	e.t.Helper()
	es := e.endpointsAt("net1", ip)
	if len(es) != 1 {
		e.t.Fatalf("mapper has %d endpoints at %s, want 1", len(es), ip)
	}
	return es[0]
}

// stateAt says whether the one endpoint at ip is in state s ("gone": no
// endpoint there).
func (e *dockerEnv) stateAt(ip string, s string) func() error {
	return func() error {
		es := e.endpointsAt("net1", ip)
		switch {
		case s == "gone" && len(es) == 0, len(es) == 1 && string(es[0].State) == s:
			return nil
		case len(es) == 0:
			return errorf("no endpoint at %s", ip)
		}
		return errorf("%d endpoints at %s, the first %s", len(es), ip, es[0].State)
	}
}

// knows reports whether the watcher holds endpoints of container id.
func (w *Watcher) knows(id string) bool {
	w.work.Lock()
	defer w.work.Unlock()
	_, ok := w.containers[id]
	return ok
}

// testEventsKill: with Docker's own Leave and DeleteEndpoint lost, docker
// kill still takes the endpoint down and docker rm removes it.
func testEventsKill(t *testing.T, e *dockerEnv) {
	w := e.startWatcher()
	defer e.stopWatcher()
	id := strings.TrimSpace(e.must("run", "-d", "--name", "victim", "--network", "net1", "--ip", "10.1.0.20", "--expose", "8080/tcp",
		image, "app", "serve", "--port", "8080", "--name", "victim"))
	ep := e.only("10.1.0.20")
	e.waitFor("the watcher to learn of the container", 10*time.Second, func() error {
		if !w.knows(id) {
			return errorf("not yet")
		}
		return nil
	})
	e.running.drop.Store(true)
	defer e.running.drop.Store(false)

	start := time.Now()
	e.must("kill", "victim")
	e.waitFor("the killed container's endpoint down", 5*time.Second, e.stateAt("10.1.0.20", "down"))
	t.Logf("docker kill → endpoint down: %v (Docker's Leave and DeleteEndpoint dropped)", time.Since(start).Round(time.Millisecond))
	// Docker believes the endpoint deleted; only the watcher can remove it.
	start = time.Now()
	e.must("rm", "victim")
	e.waitFor("the destroyed container's endpoint removed", 5*time.Second, e.stateAt("10.1.0.20", "gone"))
	t.Logf("docker rm → endpoint removed: %v", time.Since(start).Round(time.Millisecond))
	// The agent deletes the veth after the registry entry, and the
	// watcher counts after the agent answered.
	e.waitFor("the watcher to count the removal and the veth to go", 5*time.Second, func() error {
		if st := w.Stats(); st.Events < 4 || st.Removed != 1 {
			return errorf("watcher stats %+v: want start, kill, die, destroy seen and 1 endpoint removed", st)
		}
		if e.linkExists(ep.Interface) {
			return errorf("host veth %s outlived its container", ep.Interface)
		}
		return nil
	})
}

// testEventsHealth: a container whose HEALTHCHECK fails goes down while it
// runs; nothing but the watcher knows of Docker's health checks.
func testEventsHealth(t *testing.T, e *dockerEnv) {
	w := e.startWatcher()
	defer e.stopWatcher()
	e.must("run", "-d", "--name", "sick", "--network", "net1", "--ip", "10.1.0.21", "--expose", "8080/tcp",
		healthImage, "app", "serve", "--port", "8080", "--name", "sick")
	defer e.docker("rm", "-f", "sick")
	e.waitFor("Docker to find the container healthy", 10*time.Second, func() error {
		if s := e.inspect("sick", "{{.State.Health.Status}}"); s != "healthy" {
			return errorf("health %s", s)
		}
		return nil
	})
	if s := e.only("10.1.0.21").State; s != mapper.Active {
		t.Fatalf("healthy container: endpoint %s, want active", s)
	}
	start := time.Now()
	e.drain("sick")
	e.waitFor("the unhealthy container's endpoint down", 10*time.Second, e.stateAt("10.1.0.21", "down"))
	t.Logf("drain file → unhealthy → endpoint down: %v (health checks every 300ms)", time.Since(start).Round(time.Millisecond))
	if s := e.inspect("sick", "{{.State.Running}} {{.State.Health.Status}}"); s != "true unhealthy" {
		t.Errorf("container running, health: %s; want true unhealthy", s)
	}
	if st := w.Stats(); st.MarkedDown < 1 {
		t.Errorf("watcher stats %+v: it marked nothing down", st)
	}
}

// testEventsLost: what happened while no watcher ran (a container killed
// whose DeleteEndpoint never came, a health check that failed) is fixed
// by the first reconcile of the next one.
func testEventsLost(t *testing.T, e *dockerEnv) {
	e.stopWatcher()
	for _, c := range []struct{ name, ip string }{{"lost", "10.1.0.22"}, {"sick2", "10.1.0.23"}} {
		e.must("run", "-d", "--name", c.name, "--network", "net1", "--ip", c.ip, "--expose", "8080/tcp",
			healthImage, "app", "serve", "--port", "8080", "--name", c.name)
	}
	defer e.docker("rm", "-f", "lost", "sick2")
	lost := e.only("10.1.0.22")

	e.running.drop.Store(true)
	e.must("kill", "lost")
	e.waitFor("lost to exit", 10*time.Second, func() error {
		if s := e.inspect("lost", "{{.State.Status}}"); s != "exited" {
			return errorf("state %s", s)
		}
		return nil
	})
	e.running.drop.Store(false)
	e.drain("sick2")
	e.waitFor("Docker to find sick2 unhealthy", 10*time.Second, func() error {
		if s := e.inspect("sick2", "{{.State.Health.Status}}"); s != "unhealthy" {
			return errorf("health %s", s)
		}
		return nil
	})
	// The registry is stale: the dead container's endpoint is still there
	// (the agent marked it down when its veth vanished), and the unhealthy
	// one is active.
	if es := e.endpointsAt("net1", "10.1.0.22"); len(es) != 1 {
		t.Fatalf("before the watcher: %d endpoints at 10.1.0.22, want the stale one", len(es))
	}
	if s := e.only("10.1.0.23").State; s != mapper.Active {
		t.Fatalf("before the watcher: unhealthy container's endpoint %s, want active (nobody told)", s)
	}

	start := time.Now()
	w := e.startWatcher()
	e.waitFor("the stale endpoint removed", 10*time.Second, e.stateAt("10.1.0.22", "gone"))
	e.waitFor("the unhealthy endpoint down", 10*time.Second, e.stateAt("10.1.0.23", "down"))
	t.Logf("watcher start → stale endpoint removed and unhealthy one down: %v", time.Since(start).Round(time.Millisecond))
	e.waitFor("the reconcile to count the removal and the veth to go", 5*time.Second, func() error {
		if st := w.Stats(); st.Reconciles < 1 || st.Removed != 1 {
			return errorf("watcher stats %+v: want a reconcile that removed 1 endpoint", st)
		}
		if e.linkExists(lost.Interface) {
			return errorf("host veth %s of the dead container remains", lost.Interface)
		}
		return nil
	})
	e.stopWatcher()
}

// testPublished: docker run -p publishes the host port on the endpoint,
// and a client outside the containers that dials the server's address at
// that port reaches the container, which sees the client's own address;
// a container of another service cannot take the port.
func testPublished(t *testing.T, e *dockerEnv) {
	e.must("run", "-d", "--name", "pub", "--network", "net1", "--ip", "10.1.0.24", "-p", "8080:8080",
		image, "app", "serve", "--port", "8080", "--name", "pub")
	defer e.docker("rm", "-f", "pub", "pub2")
	ep := e.only("10.1.0.24")
	if got := fmt.Sprint(ep.Published); got != "[8080->8080/tcp]" {
		t.Errorf("docker run -p 8080:8080: the endpoint publishes %s, want [8080->8080/tcp]", got)
	}
	_, err := e.docker("run", "-d", "--name", "pub2", "--network", "net1", "--ip", "10.1.0.25", "-p", "8080:8080",
		image, "app", "serve", "--port", "8080", "--name", "pub2")
	if err == nil || !strings.Contains(err.Error(), "8080/tcp already leads to net1/10.1.0.24:8080") {
		t.Errorf("a container of another service publishing 8080: %v, want a refusal", err)
	}
	if es := e.endpointsAt("net1", "10.1.0.24"); len(es) != 1 {
		t.Errorf("endpoints at 10.1.0.24: %+v, want pub's", es)
	}
	if es := e.endpointsAt("net1", "10.1.0.25"); len(es) != 0 {
		t.Errorf("the refused container left endpoints: %+v", es)
	}
	// From the fabric (outside every container), the server's 8080 leads
	// to the container: Docker installs no DNAT (--iptables=false), the
	// dataplane serves the port.
	var answer, local string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err = e.w.Fabric.Do(func() error {
			c, err := net.DialTimeout("tcp", "192.0.2.1:8080", 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			local = c.LocalAddr().String()
			fmt.Fprintf(c, "hi\n")
			answer, err = bufio.NewReader(c).ReadString('\n')
			return err
		})
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if want := "pub saw " + local + ": hi\n"; err != nil || answer != want {
		t.Errorf("dialing the published port from the fabric: %q, %v; want %q", answer, err, want)
	}
}

// testManagedPlugin packages the plugin as a managed (swarm-mode capable)
// plugin from a local rootfs and config.json (swarmhook/managed), and has
// the test's dockerd create, configure, enable and list it, attach a
// container through it, then disable and remove it. The plugin talks to a
// mapper of the registry that requires client certificates, with the
// server's certificate from its pki mount.
func testManagedPlugin(t *testing.T, e *dockerEnv) {
	pki := pkitest.New(t)
	api := mapper.NewAPI(e.reg, nil)
	var l net.Listener
	if err := e.w.Fabric.Do(func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(mapperIP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api}
	go srv.Serve(pki.Serve(api, l, mapperIP.String()))
	t.Cleanup(func() { api.Close(); srv.Close() })
	pki.Issue(mapper.RoleServer, serverName)

	dir := t.TempDir()
	cfg, err := os.ReadFile("managed/config.json")
	if err != nil {
		t.Fatal(err)
	}
	// The test's dockerd has its own API socket and the agent its own run
	// directory: point the plugin's mounts at them.
	s := strings.Replace(string(cfg), `"source": "/run/daoli"`, `"source": "`+e.runDir+`"`, 1)
	s = strings.Replace(s, `"source": "/run/docker.sock"`, `"source": "`+e.sock+`"`, 1)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(daoliBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"rootfs/run/docker/plugins", "rootfs/run/daoli", "rootfs/var/lib/daoli", "rootfs/tmp", "rootfs/etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "rootfs/daoli"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	const name = "daoli-managed-test:latest"
	e.must("plugin", "create", name, dir)
	defer e.docker("plugin", "rm", "-f", name)
	// The plugin runs in dockerd's network namespace, the server's.
	e.must("plugin", "set", name, "DAOLI_MAPPER="+l.Addr().String(), "args=--server "+serverName,
		"pki.source="+filepath.Dir(pki.CAFile()), "DAOLI_TLS_CA=/etc/daoli/pki/ca.pem",
		"DAOLI_TLS_CERT=/etc/daoli/pki/server-"+serverName+".pem", "DAOLI_TLS_KEY=/etc/daoli/pki/server-"+serverName+"-key.pem")
	start := time.Now()
	e.must("plugin", "enable", name)
	t.Logf("docker plugin enable (container start and Activate handshake): %v", time.Since(start).Round(time.Millisecond))
	ls := e.must("plugin", "ls", "--format", "{{.Name}} {{.Enabled}}")
	if !strings.Contains(ls, name+" true") {
		t.Errorf("docker plugin ls: %q, want %s enabled", ls, name)
	}
	caps := e.must("plugin", "inspect", "-f", "{{.Config.Interface.Types}}", name)
	if !strings.Contains(caps, "docker.networkdriver/1.0") || !strings.Contains(caps, "docker.ipamdriver/1.0") {
		t.Errorf("plugin interface types %q", caps)
	}
	// A network and a container through the managed plugin. A server's
	// certificate may not create networks: an operator creates it in the
	// registry once, and the plugin adopts it.
	if _, err := e.mc.CreateNetwork(context.Background(), mapper.NetworkSpec{Name: "managed", Subnet: netip.MustParsePrefix("10.2.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	e.must("network", "create", "-d", name, "--ipam-driver", name, "--subnet", "10.2.0.0/24", "managed")
	e.must("run", "-d", "--name", "managed-c", "--network", "managed", "--ip", "10.2.0.5", "--expose", "8080/tcp",
		image, "app", "serve", "--port", "8080")
	es, err := e.mc.Endpoints(context.Background(), "managed", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].IP.String() != "10.2.0.5" || es[0].State != mapper.Active || es[0].Server != serverName {
		t.Errorf("endpoints of the managed plugin's network: %+v; want 10.2.0.5 active on %s", es, serverName)
	}
	e.must("rm", "-f", "managed-c")
	e.must("network", "rm", "managed")
	if es, _ := e.mc.Endpoints(context.Background(), "", serverName); len(es) != 0 {
		t.Errorf("after rm, endpoints remain: %+v", es)
	}
	e.must("plugin", "disable", name)
	e.must("plugin", "rm", name)
	if ls := e.must("plugin", "ls", "-q"); strings.TrimSpace(ls) != "" {
		t.Errorf("after rm, docker plugin ls: %q", ls)
	}
}
