// Package paths builds, in network namespaces (internal/testbed), each way
// of connecting a client container on one server to a server container on
// another that daoli's benchmarks compare:
//
//	Baseline   server to server, no containers: the physical limit here
//	Routes     plain host routes, one per container (Calico / flannel host-gw style)
//	VXLAN      a Linux VXLAN overlay bridged with the containers, MTU 1450 (flannel vxlan style)
//	BridgeNAT  a bridge per server, MASQUERADE out, DNAT ServerIP:port in (Docker's default)
//	NATEgress  a container behind a bridge + MASQUERADE to a host outside (Docker's egress)
//	NATIngress a host outside to a container published with DNAT ServerIP:port (Docker's -p)
//	Daoli      daoli's eBPF path, container to container (a Cluster with real agents)
//	Service    daoli with a service balanced over 3 backends on 2 servers
//	Egress     daoli's egress: a container to a host outside every network
//	Ingress    daoli's ingress: a host outside to a published port of the server it dials
//	IngressRemote  the same, the backend on another server than the one dialled
//
// The egress and ingress paths reach, or are reached from, the same kind
// of host: testbed's outside host, behind a router, running no daoli.
//
// Every builder takes a testbed.TB, creates what it needs with unique
// names and registers its removal (namespaces, processes, iptables rules,
// bpffs mounts) as a cleanup, so a failing or interrupted run leaves
// nothing behind. Nothing touches the root namespace's interfaces, routes
// or firewall.
//
// Every path's servers serve the same port numbers (IperfPort,
// BenchPort), and the client dials them at Target whatever sits behind
// it, shifted by the path's PortOffset where its ports are published on
// other host ports (Addr).
package paths

import (
	"fmt"
	"net/netip"

	"github.com/coreos/go-iptables/iptables"
	"github.com/daolinet/daoli/internal/testbed"
)

// The ports every path serves on its server side.
const (
	// IperfPort is iperf3's (TCP).
	IperfPort = 5201
	// BenchPort is netbench's, TCP and UDP.
	BenchPort = 7000
)

// Path is one built path.
type Path struct {
	// Key names the path in results ("baseline", "routes", ...); Title
	// describes it for people.
	Key, Title string
	// Client is where clients run; Servers where server workloads run,
	// one namespace per backend.
	Client  *testbed.Namespace
	Servers []*testbed.Namespace
	// Target is the address the client dials.
	Target netip.Addr
	// IPerf is false where iperf3 cannot run: its control and data
	// connections are separate flows, and a balanced service sends them
	// to different backends.
	IPerf bool
	// MTU is the client's interface MTU.
	MTU int
	// PortOffset is added to IperfPort and BenchPort where the client
	// dials them: a path whose servers' ports are published on other
	// host ports. Zero for most.
	PortOffset int
	// World is the testbed World the path lives in.
	World *testbed.World
}

func (p *Path) String() string { return p.Key }

// Addr is where the client dials port (IperfPort or BenchPort) of the
// path's servers: Target, at port shifted by PortOffset.
func (p *Path) Addr(port int) netip.AddrPort {
	return netip.AddrPortFrom(p.Target, uint16(port+p.PortOffset))
}

// Baseline is server to server: the client runs in server 0's namespace and
// dials server 1's address, with no container in between.
func Baseline(t testbed.TB) *Path {
	t.Helper()
	w := testbed.Build(t, 2)
	return &Path{Key: "baseline", Title: "server to server, no containers", World: w,
		Client: w.Servers[0].Namespace, Servers: []*testbed.Namespace{w.Servers[1].Namespace},
		Target: w.Servers[1].IP, IPerf: true, MTU: 1500}
}

// Routes gives each container its own /24 whose gateway address sits on
// the host-side veth, a /32 route to the container on its server, and a
// /32 route per remote container via that container's server: the fabric
// (here, the servers themselves, on one L2) needs a route per container.
func Routes(t testbed.TB) *Path {
	t.Helper()
	w := testbed.Build(t, 2)
	nets := [2]netip.Prefix{netip.MustParsePrefix("10.2.1.2/24"), netip.MustParsePrefix("10.2.2.2/24")}
	var cs [2]*testbed.Container
	for i, s := range w.Servers {
		s.Run("sysctl", "-qw", "net.ipv4.ip_forward=1")
		gw := nets[i].Masked().Addr().Next()
		cs[i] = w.AddContainer(s, nets[i], gw)
		s.Run("ip", "addr", "add", gw.String()+"/32", "dev", cs[i].HostIfname)
		s.Run("ip", "route", "add", nets[i].Addr().String()+"/32", "dev", cs[i].HostIfname)
	}
	for i, s := range w.Servers {
		peer := 1 - i
		s.Run("ip", "route", "add", nets[peer].Addr().String()+"/32", "via", w.Servers[peer].IP.String(), "dev", "uplink")
	}
	return &Path{Key: "routes", Title: "plain host routes (Calico / flannel host-gw style)", World: w,
		Client: cs[0].Namespace, Servers: []*testbed.Namespace{cs[1].Namespace},
		Target: cs[1].IP, IPerf: true, MTU: 1500}
}

// VXLAN bridges each server's containers with a vxlan device (VNI 42,
// port 4789, head-end replication to the other server), containers on one
// 10.3.0.0/24 with MTU 1450.
func VXLAN(t testbed.TB) *Path {
	t.Helper()
	w := testbed.Build(t, 2)
	var cs [2]*testbed.Container
	for i, s := range w.Servers {
		peer := w.Servers[1-i]
		s.Run("ip", "link", "add", "vxlan0", "type", "vxlan", "id", "42", "dstport", "4789",
			"local", s.IP.String(), "dev", "uplink", "nolearning")
		s.Run("ip", "link", "add", "br0", "type", "bridge")
		s.Run("ip", "link", "set", "vxlan0", "master", "br0", "up")
		s.Run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxlan0", "dst", peer.IP.String())
		s.Run("ip", "link", "set", "br0", "up")
		cs[i] = w.AddContainer(s, netip.MustParsePrefix(fmt.Sprintf("10.3.0.%d/24", i+2)), netip.MustParseAddr("10.3.0.1"))
		cs[i].Run("ip", "link", "set", "eth0", "mtu", "1450")
		s.Run("ip", "link", "set", cs[i].HostIfname, "mtu", "1450", "master", "br0")
	}
	return &Path{Key: "vxlan", Title: "Linux VXLAN overlay (flannel vxlan style)", World: w,
		Client: cs[0].Namespace, Servers: []*testbed.Namespace{cs[1].Namespace},
		Target: cs[1].IP, IPerf: true, MTU: 1450}
}

// natChain holds the DNAT rules of published ports, as Docker's DOCKER
// chain does.
const natChain = "DAOLI-BENCH"

// BridgeNAT puts each server's container on a bridge in 172.17.0.0/16
// (the same private subnet on both servers), MASQUERADEs what leaves and
// DNATs ServerIP:port to the container for every served port, with
// filter rules in Docker's shape. The client dials the other server's
// address. The rules are written with go-iptables inside each server's
// namespace and removed at cleanup.
func BridgeNAT(t testbed.TB) *Path {
	t.Helper()
	w := testbed.Build(t, 2)
	var cs [2]*testbed.Container
	for i, s := range w.Servers {
		cs[i] = dockerContainer(t, w, s)
	}
	return &Path{Key: "nat", Title: "bridge + iptables DNAT/MASQUERADE (Docker's default style)", World: w,
		Client: cs[0].Namespace, Servers: []*testbed.Namespace{cs[1].Namespace},
		Target: w.Servers[1].IP, IPerf: true, MTU: 1500}
}

// NATEgress is a container on server 0 behind a bridge and MASQUERADE, as
// BridgeNAT builds it, dialling the host outside the cluster (behind the
// router): what a Docker container reaching a host outside costs.
func NATEgress(t testbed.TB) *Path {
	t.Helper()
	w := testbed.Build(t, 1)
	out := w.AddOutside(0)
	s := w.Servers[0]
	c := dockerContainer(t, w, s)
	return &Path{Key: "nat-egress", Title: "bridge + MASQUERADE, container to a host outside (Docker's egress)", World: w,
		Client: c.Namespace, Servers: []*testbed.Namespace{out.Namespace},
		Target: out.IP, IPerf: true, MTU: 1500}
}

// NATIngress is the host outside the cluster (behind the router, as for
// NATEgress) dialling server 0's address, whose ports iptables DNATs to a
// container behind a bridge, as BridgeNAT builds it: what a port
// published with `docker run -p` costs a client outside. The container
// sees the client's own address; its answers go back through conntrack's
// reverse DNAT.
func NATIngress(t testbed.TB) *Path {
	t.Helper()
	w := testbed.Build(t, 1)
	out := w.AddOutside(0)
	s := w.Servers[0]
	c := dockerContainer(t, w, s)
	return &Path{Key: "nat-ingress", Title: "bridge + iptables DNAT, a host outside to a published port (Docker's -p)", World: w,
		Client: out.Namespace, Servers: []*testbed.Namespace{c.Namespace},
		Target: s.IP, IPerf: true, MTU: 1500}
}

// dockerContainer puts a container on s behind a bridge docker0 in
// 172.17.0.0/16, published on s's address with natRules, as a lone
// Docker host would.
func dockerContainer(t testbed.TB, w *testbed.World, s *testbed.Server) *testbed.Container {
	t.Helper()
	bridgeIP := netip.MustParsePrefix("172.17.0.1/16")
	s.Run("sysctl", "-qw", "net.ipv4.ip_forward=1")
	s.Run("ip", "link", "add", "docker0", "type", "bridge")
	s.Run("ip", "addr", "add", bridgeIP.String(), "dev", "docker0")
	s.Run("ip", "link", "set", "docker0", "up")
	c := w.AddContainer(s, netip.MustParsePrefix("172.17.0.2/16"), bridgeIP.Addr())
	s.Run("ip", "link", "set", c.HostIfname, "master", "docker0")
	natRules(t, s, c.IP)
	return c
}

type rule struct {
	table, chain string
	spec         []string
}

// natRules publishes the container at ctr on s's address, as
// `docker run -p` does.
func natRules(t testbed.TB, s *testbed.Server, ctr netip.Addr) {
	t.Helper()
	rules := []rule{
		{"nat", "POSTROUTING", []string{"-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"}},
		{"nat", "PREROUTING", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", natChain}},
		{"filter", "FORWARD", []string{"-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
		{"filter", "FORWARD", []string{"-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"}},
	}
	for _, p := range []struct {
		proto string
		port  int
	}{{"tcp", IperfPort}, {"tcp", BenchPort}, {"udp", BenchPort}} {
		port := fmt.Sprint(p.port)
		rules = append(rules,
			rule{"nat", natChain, []string{"-d", s.IP.String() + "/32", "!", "-i", "docker0", "-p", p.proto, "-m", p.proto, "--dport", port,
				"-j", "DNAT", "--to-destination", ctr.String() + ":" + port}},
			rule{"filter", "FORWARD", []string{"-d", ctr.String() + "/32", "!", "-i", "docker0", "-o", "docker0", "-p", p.proto, "-m", p.proto, "--dport", port, "-j", "ACCEPT"}})
	}
	var added []rule
	t.Cleanup(func() {
		err := s.Do(func() error {
			ipt, err := iptables.New()
			if err != nil {
				return err
			}
			for i := len(added) - 1; i >= 0; i-- {
				r := added[i]
				if err := ipt.DeleteIfExists(r.table, r.chain, r.spec...); err != nil {
					return err
				}
			}
			if ok, _ := ipt.ChainExists("nat", natChain); ok {
				return ipt.ClearAndDeleteChain("nat", natChain)
			}
			return nil
		})
		if err != nil {
			t.Errorf("remove iptables rules in %s: %v", s.Name, err)
		}
	})
	err := s.Do(func() error {
		ipt, err := iptables.New()
		if err != nil {
			return fmt.Errorf("iptables: %w (apt-get install iptables)", err)
		}
		if err := ipt.NewChain("nat", natChain); err != nil {
			return fmt.Errorf("create chain %s: %w", natChain, err)
		}
		if err := ipt.ChangePolicy("filter", "FORWARD", "DROP"); err != nil {
			return fmt.Errorf("set FORWARD policy: %w", err)
		}
		for _, r := range rules {
			if err := ipt.Append(r.table, r.chain, r.spec...); err != nil {
				return fmt.Errorf("add rule to %s/%s: %w", r.table, r.chain, err)
			}
			added = append(added, r)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("bridge + NAT on %s: %v", s.Name, err)
	}
}
