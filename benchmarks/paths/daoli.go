package paths

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
	"github.com/daolinet/daoli/mapper/store/etcdtest"
)

// MapperIP is the mapper's address on a Cluster's fabric.
var MapperIP = netip.MustParseAddr("192.0.2.250")

// Network is the network a Cluster creates for its containers.
const Network = "blue"

// ClusterConfig configures NewCluster.
type ClusterConfig struct {
	// Bin is the daoli binary the agents run. Required.
	Bin string
	// Servers is the number of servers. Zero means 3.
	Servers int
	// Logs is where the agents' output goes, one file each. Empty means
	// a temporary directory removed at cleanup.
	Logs string
	// Etcd, when not zero, keeps the registry in an etcd cluster of this
	// many members, run in the fabric namespace, with Mappers `daoli
	// mapper --etcd` processes beside them (zero: one). Agents are given
	// every mapper. EtcdBin is the etcd server; zero means
	// etcdtest.Binary().
	Etcd, Mappers int
	EtcdBin       string
}

// Cluster is a testbed World with daoli on it, as daoli/agent's tests
// build it: the mapper served from this process on the fabric (and on
// loopback, for the harness), a real agent process in every server
// namespace, and containers attached through the agents' sockets. It is
// not safe for concurrent use, except for its clients.
type Cluster struct {
	t     testbed.TB
	World *testbed.World
	// Registry is the mapper's registry, in this process; Mapper its
	// HTTP client over loopback.
	Registry *mapper.Registry
	Mapper   *mapper.Client
	// MapperAddr is where agents reach the mapper, on the fabric.
	MapperAddr string
	// Etcd and MapperProcs are the etcd members and the mapper
	// processes of a cluster built with ClusterConfig.Etcd; Registry
	// then only follows the registry (for the harness's watch).
	Etcd        *etcdtest.Cluster
	MapperProcs []*Proc
	mapperArgs  [][]string
	mapperLogs  []string
	// Agents holds each server's agent process; BPFFS is the bpf
	// filesystem under which each pins its dataplane, in a directory
	// named for its server.
	Agents []*Proc
	BPFFS  string
	runDir string
	dir    string
}

// NewCluster builds the world, starts the mapper and the agents, and
// creates Network (10.1.0.0/24).
func NewCluster(t testbed.TB, cfg ClusterConfig) *Cluster {
	t.Helper()
	n := cfg.Servers
	if n == 0 {
		n = 3
	}
	if cfg.Bin == "" {
		t.Fatalf("cluster: no daoli binary")
	}
	dir, err := os.MkdirTemp("", "daoli-bench-cluster-")
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logs := cfg.Logs
	if logs == "" {
		logs = dir
	}
	w := testbed.Build(t, n)
	bpffs := testbed.BPFFS(t)
	c := &Cluster{t: t, World: w, BPFFS: bpffs, runDir: filepath.Join(dir, "run"), dir: dir}
	w.Fabric.Run("ip", "addr", "add", netip.PrefixFrom(MapperIP, 24).String(), "dev", "br0")
	if cfg.Etcd > 0 {
		c.startEtcd(cfg, logs)
	} else {
		c.startMapper()
	}
	ctx := context.Background()
	if _, err := c.Mapper.CreateNetwork(ctx, mapper.NetworkSpec{Name: Network, Subnet: netip.MustParsePrefix("10.1.0.0/24")}); err != nil {
		t.Fatalf("cluster: create network: %v", err)
	}
	for i, s := range w.Servers {
		name := c.ServerName(i)
		log, err := os.Create(filepath.Join(logs, name+".log"))
		if err != nil {
			t.Fatalf("cluster: %v", err)
		}
		p := Start(t, s.Namespace, log, -1, cfg.Bin, "agent", "--uplink", "uplink", "--name", name,
			"--mapper", c.MapperAddr, "--bpffs", filepath.Join(bpffs, name), "--run-dir", c.runDir)
		log.Close()
		c.Agents = append(c.Agents, p)
	}
	for i := range w.Servers {
		cl := c.Agent(i)
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := waitFor(wctx, func() error {
			_, err := cl.Status(wctx)
			return err
		})
		cancel()
		if err != nil {
			t.Fatalf("the agent of %s did not come up: %v (its log: %s)", c.ServerName(i), err, filepath.Join(logs, c.ServerName(i)+".log"))
		}
	}
	return c
}

// startMapper serves a registry on a fresh bbolt file on the fabric, for
// the agents, and on loopback, for the harness.
func (c *Cluster) startMapper() {
	t := c.t
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(c.dir, "registry.db")})
	if err != nil {
		t.Fatalf("cluster: open the registry: %v", err)
	}
	reg, err := mapper.New(mapper.Config{Store: st})
	if err != nil {
		st.Close()
		t.Fatalf("cluster: %v", err)
	}
	api := mapper.NewAPI(reg, nil)
	var fabric net.Listener
	err = c.World.Fabric.Do(func() error {
		var err error
		fabric, err = net.Listen("tcp", netip.AddrPortFrom(MapperIP, 9470).String())
		return err
	})
	if err != nil {
		st.Close()
		t.Fatalf("cluster: listen on the fabric: %v", err)
	}
	local, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fabric.Close()
		st.Close()
		t.Fatalf("cluster: listen on loopback: %v", err)
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
	c.Registry = reg
	c.MapperAddr = fabric.Addr().String()
	c.Mapper = mapper.NewClient(local.Addr().String(), &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}})
}

// startEtcd starts the etcd members and cfg.Mappers mapper processes on
// the fabric (MapperIP, then the addresses after it), and a registry in
// this process that follows it.
func (c *Cluster) startEtcd(cfg ClusterConfig, logs string) {
	t := c.t
	ec, err := etcdtest.Start(cfg.Etcd, etcdtest.Options{Host: MapperIP.String(), Binary: cfg.EtcdBin,
		Exec: []string{"ip", "netns", "exec", c.World.Fabric.Name}, Dial: c.World.Fabric.DialContext})
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Cleanup(ec.Close)
	c.Etcd = ec
	var addrs []string
	ip := MapperIP
	for i := range max(cfg.Mappers, 1) {
		if i > 0 {
			ip = ip.Next()
			c.World.Fabric.Run("ip", "addr", "add", netip.PrefixFrom(ip, 24).String(), "dev", "br0")
		}
		addr := netip.AddrPortFrom(ip, 9470).String()
		// No rate limit: the benchmarks measure what a mapper can take,
		// from a few clients.
		c.mapperArgs = append(c.mapperArgs, []string{cfg.Bin, "mapper", "--listen", addr, "--insecure", "--rate", "0", "--etcd", strings.Join(ec.Endpoints(), ",")})
		c.mapperLogs = append(c.mapperLogs, filepath.Join(logs, fmt.Sprintf("mapper-%d.log", i)))
		c.MapperProcs = append(c.MapperProcs, nil)
		c.StartMapper(i)
		addrs = append(addrs, addr)
	}
	st, err := store.OpenEtcd(store.EtcdConfig{Endpoints: ec.Endpoints(),
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return c.World.Fabric.DialContext(ctx, "tcp", addr)
		}})
	if err != nil {
		t.Fatalf("cluster: open the registry on etcd: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	reg, err := mapper.New(mapper.Config{Store: st})
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	c.Registry = reg
	c.MapperAddr = strings.Join(addrs, ",")
	c.Mapper = mapper.NewClient(c.MapperAddr, &http.Client{Transport: &http.Transport{DialContext: c.World.Fabric.DialContext, MaxIdleConnsPerHost: 256}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, a := range addrs {
		one := mapper.NewClient(a, &http.Client{Transport: &http.Transport{DialContext: c.World.Fabric.DialContext}})
		if err := waitFor(ctx, func() error { _, err := one.Allocation(ctx); return err }); err != nil {
			t.Fatalf("cluster: the mapper at %s did not come up: %v", a, err)
		}
	}
}

// StartMapper starts mapper process i of a cluster on etcd (again, after
// its process was stopped).
func (c *Cluster) StartMapper(i int) {
	log, err := os.OpenFile(c.mapperLogs[i], os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatalf("cluster: %v", err)
	}
	defer log.Close()
	c.MapperProcs[i] = Start(c.t, c.World.Fabric, log, -1, c.mapperArgs[i]...)
}

// ServerName is the registry's name of server i.
func (c *Cluster) ServerName(i int) string { return fmt.Sprintf("server-%d", i) }

// Agent is a client of server i's agent.
func (c *Cluster) Agent(i int) *agent.Client {
	return agent.NewClient(agent.SocketPath(c.runDir, c.ServerName(i)))
}

// Attach creates an empty namespace for a container and attaches it
// through server i's agent in Network.
func (c *Cluster) Attach(ctx context.Context, role string, server int, req agent.AttachRequest) (*testbed.Namespace, mapper.Endpoint) {
	c.t.Helper()
	ns := c.World.AddNamespace(role)
	req.Netns = filepath.Join("/run/netns", ns.Name)
	if req.Network == "" {
		req.Network = Network
	}
	if req.Name == "" {
		req.Name = role
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	e, err := c.Agent(server).Attach(ctx, req)
	if err != nil {
		c.t.Fatalf("attach %s on %s: %v", role, c.ServerName(server), err)
	}
	return ns, e
}

// Settle waits until every agent has programmed the registry's current
// revision.
func (c *Cluster) Settle(ctx context.Context) {
	c.t.Helper()
	snap, err := c.Mapper.Snapshot(ctx)
	if err != nil {
		c.t.Fatalf("snapshot: %v", err)
	}
	if err := c.WaitApplied(ctx, snap.Revision, 20*time.Second); err != nil {
		c.t.Fatal(err)
	}
}

// WaitApplied waits until every agent has applied revision rev, at most
// timeout, or until ctx ends.
func (c *Cluster) WaitApplied(ctx context.Context, rev int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errs := make(chan error, len(c.World.Servers))
	for i := range c.World.Servers {
		go func() {
			cl := c.Agent(i)
			errs <- waitFor(ctx, func() error {
				st, err := cl.Status(ctx)
				if err != nil {
					return err
				}
				if st.Applied < rev {
					return fmt.Errorf("applied %d", st.Applied)
				}
				return nil
			})
		}()
	}
	var all []error
	for i := range c.World.Servers {
		if err := <-errs; err != nil {
			all = append(all, fmt.Errorf("agent of %s did not apply revision %d: %w", c.ServerName(i), rev, err))
		}
	}
	return errors.Join(all...)
}

// ServedPorts are what a Cluster's benchmark servers serve.
var ServedPorts = []mapper.PortSpec{
	{Port: IperfPort, Protocol: mapper.TCP}, {Port: BenchPort, Protocol: mapper.TCP}, {Port: BenchPort, Protocol: mapper.UDP},
}

// Daoli is daoli's eBPF path: a client container on server 0 and a server
// container on server 1, each with its own IP in Network.
func (c *Cluster) Daoli(ctx context.Context) *Path {
	c.t.Helper()
	client, _ := c.Attach(ctx, "dl-client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	server, e := c.Attach(ctx, "dl-server", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: ServedPorts})
	c.Settle(ctx)
	return &Path{Key: "daoli", Title: "daoli eBPF, container to container", World: c.World,
		Client: client, Servers: []*testbed.Namespace{server}, Target: e.IP, IPerf: true, MTU: 1500}
}

// Egress is daoli's egress: a client container on server 0 dialling the
// host outside the cluster (testbed's, behind a router, shared with the
// ingress paths), from server 0's address.
func (c *Cluster) Egress(ctx context.Context) *Path {
	c.t.Helper()
	out := c.outside()
	client, _ := c.Attach(ctx, "eg-client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.7")})
	c.Settle(ctx)
	return &Path{Key: "egress", Title: "daoli egress, container to a host outside", World: c.World,
		Client: client, Servers: []*testbed.Namespace{out.Namespace}, Target: out.IP, IPerf: true, MTU: 1500}
}

// IngressOffset is how far above IperfPort and BenchPort IngressRemote
// publishes them: a host port leads to one service cluster-wide, and
// Ingress publishes the ports themselves.
const IngressOffset = 100

// Ingress is daoli's ingress on the server dialled: the host outside the
// cluster (testbed's, behind a router, shared with Egress) dials server
// 0's address at the ports of ServedPorts, which a backend on server 0
// publishes (docker run -p 5201:5201 -p 7000:7000 -p 7000:7000/udp).
func (c *Cluster) Ingress(ctx context.Context) *Path {
	c.t.Helper()
	return c.ingress(ctx, "ingress", "daoli ingress, a host outside to a published port of the backend's server", "in-local", 0, 0, netip.MustParseAddr("10.1.0.11"))
}

// IngressRemote is daoli's ingress forwarded: the host outside dials
// server 0's address, as for Ingress, at ports a backend on server 1
// publishes IngressOffset above those it serves. Server 0 forwards the
// flows over the wire; the answers come back through it.
func (c *Cluster) IngressRemote(ctx context.Context) *Path {
	c.t.Helper()
	return c.ingress(ctx, "ingress-remote", "daoli ingress, a host outside to a published port of another server than the backend's", "in-remote", 1, IngressOffset, netip.MustParseAddr("10.1.0.12"))
}

// ingress attaches a backend on server with address ip, serving
// ServedPorts and publishing each offset above itself, dialled by the
// outside host at server 0's address.
func (c *Cluster) ingress(ctx context.Context, key, title, role string, server, offset int, ip netip.Addr) *Path {
	c.t.Helper()
	out := c.outside()
	var pub []mapper.PublishedPort
	for _, p := range ServedPorts {
		pub = append(pub, mapper.PublishedPort{HostPort: p.Port + uint16(offset), Port: p.Port, Protocol: p.Protocol})
	}
	backend, _ := c.Attach(ctx, role, server, agent.AttachRequest{IP: ip, Ports: ServedPorts, Published: pub})
	c.Settle(ctx)
	return &Path{Key: key, Title: title, World: c.World,
		Client: out.Namespace, Servers: []*testbed.Namespace{backend}, Target: c.World.Servers[0].IP,
		IPerf: true, MTU: 1500, PortOffset: offset}
}

// outside is the host outside the cluster, added on first use.
func (c *Cluster) outside() *testbed.Outside {
	c.t.Helper()
	if c.World.Outside != nil {
		return c.World.Outside
	}
	return c.World.AddOutside(0)
}

// Service is daoli with one IP:Port balanced over three backends, two on
// server 1 and one on server 2, and its own client on server 0.
func (c *Cluster) Service(ctx context.Context) *Path {
	c.t.Helper()
	vip := netip.MustParseAddr("10.1.0.20")
	client, _ := c.Attach(ctx, "svc-client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.6")})
	var servers []*testbed.Namespace
	for i, server := range []int{1, 1, 2} {
		ns, _ := c.Attach(ctx, fmt.Sprintf("svc-b%d", i), server, agent.AttachRequest{IP: vip, Ports: ServedPorts, Mode: mapper.Balance})
		servers = append(servers, ns)
	}
	c.Settle(ctx)
	return &Path{Key: "service", Title: "daoli service balanced over 3 backends on 2 servers", World: c.World,
		Client: client, Servers: servers, Target: vip, IPerf: false, MTU: 1500}
}

// waitFor calls f until it succeeds or ctx ends, and returns f's last
// error.
func waitFor(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(5 * time.Millisecond):
		}
	}
}
