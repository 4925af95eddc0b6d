package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store/etcdtest"
)

// An HA control plane: three etcd members and two stateless mappers, all
// real processes. In a testbed World they run in the fabric namespace,
// where agents reach them; without one, on loopback.
type controlPlane struct {
	t       *testing.T
	etcd    *etcdtest.Cluster
	ns      *testbed.Namespace // nil: the test's own namespace
	addrs   []string           // the mappers' listen addresses
	mappers []*exec.Cmd
	logs    []*bytes.Buffer
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	ttl     time.Duration
}

// mapperIPs are the mappers' addresses on the fabric; the etcd members
// listen on the first.
var mapperIPs = []string{"192.0.2.250", "192.0.2.251"}

func startControlPlane(t *testing.T, w *testbed.World) *controlPlane {
	t.Helper()
	cp := &controlPlane{t: t, ttl: 2 * time.Second, dial: (&net.Dialer{}).DialContext}
	opts := etcdtest.Options{}
	if w != nil {
		cp.ns = w.Fabric
		for _, ip := range mapperIPs {
			w.Fabric.Run("ip", "addr", "add", ip+"/24", "dev", "br0")
			cp.addrs = append(cp.addrs, ip+":9470")
		}
		cp.dial = w.Fabric.DialContext
		opts = etcdtest.Options{Host: mapperIPs[0], Exec: []string{"ip", "netns", "exec", w.Fabric.Name}, Dial: cp.dial}
	} else {
		// An address of the control plane's own: a killed mapper is
		// restarted on its port, which no other test may take meanwhile.
		host := etcdtest.Loopback()
		for range mapperIPs {
			l := got(net.Listen("tcp", host+":0"))(t)
			cp.addrs = append(cp.addrs, l.Addr().String())
			l.Close()
		}
		opts.Host = host
	}
	cp.etcd = got(etcdtest.Start(3, opts))(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("etcd logs:\n%s", cp.etcd.Logs())
		}
		cp.etcd.Close()
	})
	cp.mappers = make([]*exec.Cmd, len(cp.addrs))
	cp.logs = make([]*bytes.Buffer, len(cp.addrs))
	for i := range cp.addrs {
		cp.startMapper(i)
	}
	t.Cleanup(func() {
		for i := range cp.mappers {
			cp.killMapper(i)
			if t.Failed() {
				t.Logf("mapper %d log:\n%s", i, cp.logs[i])
			}
		}
	})
	return cp
}

// startMapper runs mapper i on etcd and waits until it answers.
func (cp *controlPlane) startMapper(i int) {
	t := cp.t
	t.Helper()
	args := []string{bin, "mapper", "--listen", cp.addrs[i], "--insecure", "--etcd", strings.Join(cp.etcd.Endpoints(), ","),
		"--server-ttl", cp.ttl.String(), "--log-level", "debug"}
	if cp.ns != nil {
		args = append([]string{"ip", "netns", "exec", cp.ns.Name}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	if cp.logs[i] == nil {
		cp.logs[i] = &bytes.Buffer{}
	}
	cmd.Stdout, cmd.Stderr = cp.logs[i], cp.logs[i]
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cp.mappers[i] = cmd
	c := mapper.NewClient(cp.addrs[i], cp.httpClient())
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Allocation(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mapper %d at %s did not come up: %v\n%s", i, cp.addrs[i], err, cp.logs[i])
		}
	}
}

// killMapper kills mapper i with SIGKILL, as a crash would.
func (cp *controlPlane) killMapper(i int) {
	if cmd := cp.mappers[i]; cmd != nil {
		cmd.Process.Kill()
		cmd.Wait()
		cp.mappers[i] = nil
	}
}

func (cp *controlPlane) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: cp.dial, ResponseHeaderTimeout: 15 * time.Second}}
}

// client is a client of both mappers, starting with the first.
func (cp *controlPlane) client() *mapper.Client {
	return mapper.NewClient(strings.Join(cp.addrs, ","), cp.httpClient())
}

// killLeader kills the etcd member that leads, and returns it.
func (cp *controlPlane) killLeader() *etcdtest.Member {
	cp.t.Helper()
	m, err := cp.etcd.Leader()
	if err != nil {
		cp.t.Fatal(err)
	}
	m.Kill()
	return m
}

// newHACluster is newCluster with the HA control plane: agents are given
// both mappers.
func newHACluster(t *testing.T, servers int, agentArgs ...string) (*cluster, *controlPlane) {
	t.Helper()
	w := testbed.New(t, servers)
	cp := startControlPlane(t, w)
	c := &cluster{t: t, w: w, agentArgs: agentArgs, bpffs: testbed.BPFFS(t), runDir: t.TempDir(), agents: map[string]*exec.Cmd{},
		addr: strings.Join(cp.addrs, ","), mc: cp.client(), stop: func() {}}
	if _, err := c.mc.CreateNetwork(context.Background(), mapper.NetworkSpec{Name: "blue", Subnet: netip.MustParsePrefix("10.1.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	for i := range w.Servers {
		c.startAgent(i)
	}
	return c, cp
}

// TestRegistrationsSurviveControlPlaneCrashes registers endpoints from
// several clients through two mappers on a three-member etcd cluster, and
// kills (SIGKILL) the etcd leader and one mapper in the middle: every
// acknowledged registration is there afterwards, exactly once, and no two
// endpoints' port blocks overlap.
func TestRegistrationsSurviveControlPlaneCrashes(t *testing.T) {
	cp := startControlPlane(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := cp.client()
	got(admin.CreateNetwork(ctx, mapper.NetworkSpec{Name: "blue", Subnet: netip.MustParsePrefix("10.1.0.0/16")}))(t)
	const servers, clients, each = 4, 4, 40
	for s := range servers {
		got(admin.RegisterServer(ctx, mapper.ServerSpec{Name: fmt.Sprintf("s%d", s),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + s)})}, MAC: mapper.MAC{2, 0, 0, 0, 0, byte(1 + s)}}))(t)
	}
	var (
		mu       sync.Mutex
		acked    = map[string]uint32{} // name → endpoint ID
		attempts = map[string]int{}
		done     sync.WaitGroup
		progress = make(chan struct{}, clients*each)
	)
	for k := range clients {
		done.Add(1)
		go func() {
			defer done.Done()
			// Half the clients start at the mapper that will die.
			addrs := slices2(cp.addrs, k%2 == 1)
			c := mapper.NewClient(strings.Join(addrs, ","), cp.httpClient())
			for i := range each {
				spec := mapper.EndpointSpec{Name: fmt.Sprintf("c%d-%d", k, i), Network: "blue",
					IP: netip.AddrFrom4([4]byte{10, 1, byte(1 + k), byte(1 + i)}), Server: fmt.Sprintf("s%d", i%servers),
					Ports: []mapper.PortSpec{{Port: 8080, Protocol: mapper.TCP}}}
				id, n, err := register(ctx, c, spec)
				mu.Lock()
				attempts[spec.Name] = n
				if err == nil {
					acked[spec.Name] = id
				}
				mu.Unlock()
				if err != nil {
					t.Errorf("register %s after %d attempts: %v", spec.Name, n, err)
					return
				}
				progress <- struct{}{}
			}
		}()
	}
	for range clients * each / 3 {
		<-progress
	}
	leader := cp.killLeader()
	cp.killMapper(0)
	t.Logf("killed etcd member %s (the leader) and mapper 0 after a third of the registrations", leader.Name)
	done.Wait()

	es := got(admin.Endpoints(ctx, "", ""))(t)
	byName := map[string]int{}
	for _, e := range es {
		byName[e.Name]++
	}
	for name, id := range acked {
		if byName[name] != 1 {
			t.Errorf("acknowledged endpoint %s (id %d) is there %d times", name, id, byName[name])
		}
	}
	if len(es) != len(acked) {
		t.Errorf("%d endpoints registered, %d acknowledged: some were doubled or are left over", len(es), len(acked))
	}
	// Port blocks never overlap on one server address.
	type span struct {
		first, last uint16
		name        string
	}
	blocks := map[netip.Addr][]span{}
	for _, e := range es {
		s := span{e.Wire.Base, e.Wire.Base + e.Wire.Size - 1, e.Name}
		for _, o := range blocks[e.Wire.Addr] {
			if s.first <= o.last && o.first <= s.last {
				t.Errorf("wire blocks of %s and %s overlap on %s", s.name, o.name, e.Wire.Addr)
			}
		}
		blocks[e.Wire.Addr] = append(blocks[e.Wire.Addr], s)
	}
	retried := 0
	for _, n := range attempts {
		if n > 1 {
			retried++
		}
	}
	t.Logf("%d endpoints acknowledged, %d needed more than one attempt", len(acked), retried)
}

// slices2 returns addrs, reversed if rev.
func slices2(addrs []string, rev bool) []string {
	out := append([]string(nil), addrs...)
	if rev {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out
}

// register creates a named endpoint as a careful client does: when the
// outcome of an attempt is unknown or the mapper failed, it looks the
// name up before trying again. It returns the endpoint's ID and the
// number of attempts.
func register(ctx context.Context, c *mapper.Client, spec mapper.EndpointSpec) (uint32, int, error) {
	for n := 1; ; n++ {
		e, err := c.CreateEndpoint(ctx, spec)
		if err == nil {
			return e.ID, n, nil
		}
		var ae *mapper.APIError
		if errors.As(err, &ae) && ae.Status < 500 && !errors.Is(err, mapper.ErrExists) {
			return 0, n, err // refused: retrying will not help
		}
		if d, lerr := c.Endpoint(ctx, spec.Name); lerr == nil {
			if d.Endpoint.IP != spec.IP {
				return 0, n, fmt.Errorf("%s exists with IP %s, want %s", spec.Name, d.Endpoint.IP, spec.IP)
			}
			return d.Endpoint.ID, n, nil // an earlier attempt did it
		}
		if ctx.Err() != nil {
			return 0, n, fmt.Errorf("%w (last error %v)", ctx.Err(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFailoverWhileTheControlPlaneIsDegraded kills one of two mappers and
// the etcd leader, then the master of a service: the request loop moves
// to the backup on the same IP:Port, through the mapper that is left.
func TestFailoverWhileTheControlPlaneIsDegraded(t *testing.T) {
	c, cp := newHACluster(t, 3)
	vip := netip.MustParseAddr("10.1.0.9")
	master, _ := c.container("master", 1, agent.AttachRequest{IP: vip, Ports: tcpUDP8080, Mode: mapper.Failover, Priority: 100})
	backup, _ := c.container("backup", 2, agent.AttachRequest{IP: vip, Ports: tcpUDP8080, Mode: mapper.Failover, Priority: 10})
	masterApp := master.Start(bin, "app", "serve", "--port", "8080", "--name", "master")
	backup.Start(bin, "app", "serve", "--port", "8080", "--name", "backup")
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	serve(t, master, client, "master", "10.1.0.9:8080")

	leader := cp.killLeader()
	cp.killMapper(0) // the one every agent was using
	t.Logf("killed etcd member %s (the leader) and mapper 0", leader.Name)

	s := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "udp", "--count", "0", "--interval", "20ms", "--timeout", "20ms")
	s.waitLines(t, 5)
	killed := time.Now()
	masterApp.Process.Kill()
	masterApp.Wait()
	if out, err := exec.Command("ip", "netns", "del", master.Name).CombinedOutput(); err != nil {
		t.Fatalf("delete the master's namespace: %v: %s", err, out)
	}
	s.waitFor(t, " ok backup saw 10.1.0.5:", 20*time.Second, "the backup answering with the control plane degraded")
	t.Logf("kill of the master to the first answer from the backup: %v, with one mapper and one etcd member dead", time.Since(killed).Round(time.Millisecond))
	e := got(c.mc.Endpoint(context.Background(), "master"))(t)
	if e.Endpoint.State != mapper.Down {
		t.Errorf("master is %s in the registry, want down", e.Endpoint.State)
	}
}

// TestAllMappersDown kills both mappers while traffic flows and stays
// down for longer than the servers' liveness TTL: forwarding and a live
// TCP connection go on untouched; when one mapper returns, agents resume
// their watch where they were, no server is marked gone, nothing in any
// dataplane is rewritten, and changes flow again.
func TestAllMappersDown(t *testing.T) {
	c, cp := newHACluster(t, 2)
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	serve(t, web, client, "web", "10.1.0.9:8080")
	c.settle()
	udp := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "udp", "--count", "0", "--interval", "10ms", "--timeout", "500ms")
	tcp := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "tcp", "--keep", "--count", "0", "--interval", "10ms", "--timeout", "500ms")
	udp.waitLines(t, 10)
	tcp.waitLines(t, 10)
	before := map[string]agent.Status{}
	for i := range c.w.Servers {
		name := c.serverName(i)
		before[name] = got(c.agent(name).Status(context.Background()))(t)
	}
	servers := got(c.mc.Servers(context.Background()))(t)

	cp.killMapper(0)
	cp.killMapper(1)
	time.Sleep(2*cp.ttl + time.Second) // every lease runs out in etcd
	udp.waitLines(t, 20)               // still forwarding
	cp.startMapper(1)
	// Within a TTL every agent renews its lease with the mapper that is
	// back, so none is marked gone when its grace ends.
	time.Sleep(2 * cp.ttl)
	for _, s := range got(c.mc.Servers(context.Background()))(t) {
		if s.Gone {
			t.Errorf("server %s was marked gone after the mappers came back", s.Name)
		}
		for _, old := range servers {
			if old.Name == s.Name && !old.Since.Equal(s.Since) {
				t.Errorf("server %s was rewritten: alive since %v, before %v", s.Name, s.Since, old.Since)
			}
		}
	}
	for name, b := range before {
		st := got(c.agent(name).Status(context.Background()))(t)
		if st.Snapshots != b.Snapshots {
			t.Errorf("agent of %s loaded %d snapshots, had %d: it did not resume its watch", name, st.Snapshots, b.Snapshots)
		}
		if st.MapWrites != b.MapWrites {
			t.Errorf("agent of %s rewrote %d dataplane entries when the mapper came back, want 0", name, st.MapWrites-b.MapWrites)
		}
	}
	// Changes flow again, through the mapper that is back.
	web2, _ := c.container("web2", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.10"), Ports: tcpUDP8080})
	c.settle()
	serve(t, web2, client, "web2", "10.1.0.10:8080")
	for proto, s := range map[string]*stream{"udp": udp, "tcp": tcp} {
		lines := s.stop()
		if bad := errLines(lines); len(bad) > 0 {
			t.Errorf("%s: %d of %d requests failed with every mapper down: %v", proto, len(bad), len(lines), bad)
		}
	}
	if ports := clientPorts(tcp.lines); len(ports) != 1 {
		t.Errorf("the TCP stream used %d connections (client ports %v), want one undisturbed", len(ports), ports)
	}
}

// clientPorts returns the client addresses the server saw, in the order
// they first appear: one for a stream that kept its connection.
func clientPorts(lines []string) []string {
	var out []string
	for _, l := range lines {
		_, saw, ok := strings.Cut(l, " saw ")
		if !ok {
			continue
		}
		saw, _, _ = strings.Cut(saw, " ")
		if len(out) == 0 || out[len(out)-1] != saw {
			out = append(out, saw)
		}
	}
	return out
}

// TestWholeServerDeath: the server of a service's master dies whole (its
// agent SIGKILLed, its uplink gone), so nobody is left to mark the master
// down; its liveness lease runs out, the mappers mark the server gone,
// and the others send the service to the backup on the same IP:Port.
func TestWholeServerDeath(t *testing.T) {
	c, cp := newHACluster(t, 3)
	vip := netip.MustParseAddr("10.1.0.9")
	master, _ := c.container("master", 1, agent.AttachRequest{IP: vip, Ports: tcpUDP8080, Mode: mapper.Failover, Priority: 100})
	backup, _ := c.container("backup", 2, agent.AttachRequest{IP: vip, Ports: tcpUDP8080, Mode: mapper.Failover, Priority: 10})
	master.Start(bin, "app", "serve", "--port", "8080", "--name", "master")
	backup.Start(bin, "app", "serve", "--port", "8080", "--name", "backup")
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	serve(t, master, client, "master", "10.1.0.9:8080")

	s := startStream(t, client, "--to", "10.1.0.9:8080", "--proto", "udp", "--count", "0", "--interval", "20ms", "--timeout", "100ms")
	s.waitLines(t, 5)
	died := time.Now()
	c.killAgent(c.serverName(1), syscall.SIGKILL)
	c.w.Servers[1].Run("ip", "link", "set", "uplink", "down")
	s.waitFor(t, " ok backup saw 10.1.0.5:", 4*cp.ttl+10*time.Second, "the backup answering after its master's server died")
	t.Logf("server death to the first answer from the backup: %v (liveness TTL %v)", time.Since(died).Round(time.Millisecond), cp.ttl)
	srv := got(c.mc.Server(context.Background(), c.serverName(1)))(t)
	if !srv.Gone {
		t.Errorf("%s is not marked gone: %+v", srv.Name, srv)
	}
	// The registry still says the master is active: it was never marked
	// down; the others treat it as down because its server is gone.
	if e := got(c.mc.Endpoint(context.Background(), "master"))(t); e.Endpoint.State != mapper.Active {
		t.Errorf("master is %s in the registry, want active (only its server is gone)", e.Endpoint.State)
	}
}

// waitFor waits until the stream's last line contains want.
func (s *stream) waitFor(t *testing.T, want string, timeout time.Duration, what string) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		last := ""
		if n := len(s.lines); n > 0 {
			last = s.lines[n-1]
		}
		s.mu.Unlock()
		if strings.Contains(last, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last line %q", what, timeout, last)
		}
	}
}
