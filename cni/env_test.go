package cni_test

// The tests drive the plugin binary with libcni, as a runtime does, against
// real agents in a testbed world:
//
//	test process     mapper (bbolt) on the fabric and on loopback; libcni
//	fabric ns        br0, 192.0.2.250: the mapper, for the agents
//	server-N ns      uplink; daoli agent (socket in the test's run dir)
//	pod namespaces   made by the test (or by containerd, runtime_test.go)
//
// Everything is removed at cleanup, also on failure.

import (
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
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/daolinet/daoli/agentapi"
	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var (
	buildOnce sync.Once
	binDir    string // daoli and daoli-cni, built once per test binary
	buildErr  error
)

func binaries(t *testing.T) (daoli, pluginDir string) {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "daoli-cni-bin-"); buildErr != nil {
			return
		}
		for pkg, name := range map[string]string{"../daoli": "daoli", "../cmd/daoli-cni": "daoli-cni"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %w\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "daoli"), binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var mapperIP = netip.MustParseAddr("192.0.2.250")

// env is a mapper, and an agent on each server of a testbed world.
type env struct {
	t          *testing.T
	w          *testbed.World
	mc         *mapper.Client
	bin        string // daoli
	pluginDir  string // holds daoli-cni
	runDir     string
	mapperAddr string // on the fabric
	stopMapper func()
	agents     []*exec.Cmd
	pods       int
}

func newEnv(t *testing.T, servers int) *env {
	t.Helper()
	testbed.RequirePrivileged(t)
	bin, dir := binaries(t)
	e := &env{t: t, w: testbed.New(t, servers), bin: bin, pluginDir: dir, runDir: t.TempDir()}
	e.w.Fabric.Run("ip", "addr", "add", netip.PrefixFrom(mapperIP, 24).String(), "dev", "br0")
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
	if err := e.w.Fabric.Do(func() error {
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
	hs := []*http.Server{{Handler: api}, {Handler: api}}
	go hs[0].Serve(fabric)
	go hs[1].Serve(local)
	var once sync.Once
	e.stopMapper = func() {
		once.Do(func() {
			api.Close()
			for _, s := range hs {
				s.Close()
			}
			st.Close()
		})
	}
	t.Cleanup(e.stopMapper)
	e.mapperAddr = fabric.Addr().String()
	e.mc = mapper.NewClient(local.Addr().String(), nil)
	if _, err := e.mc.CreateNetwork(context.Background(), mapper.NetworkSpec{Name: "blue", Subnet: netip.MustParsePrefix("10.1.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	for i := range e.w.Servers {
		e.agents = append(e.agents, nil)
		e.startAgent(i)
	}
	return e
}

func serverName(i int) string { return fmt.Sprintf("server-%d", i) }

func (e *env) socket(i int) string { return agentapi.SocketPath(e.runDir, serverName(i)) }

func (e *env) startAgent(i int) {
	e.t.Helper()
	name := serverName(i)
	e.agents[i] = e.w.Servers[i].Start(e.bin, "agent", "--uplink", "uplink", "--name", name, "--mapper", e.mapperAddr,
		"--bpffs", filepath.Join(testbed.BPFFS(e.t), name), "--run-dir", e.runDir, "--log-level", "debug")
	c := agentapi.NewClient(e.socket(i))
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Ready(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("agent of %s did not come up: %v", name, err)
		}
	}
}

func (e *env) killAgent(i int) {
	e.agents[i].Process.Kill()
	e.agents[i].Wait()
}

// conflist is the network configuration for server i, with extra fields
// for the plugin's entry.
func (e *env) conflist(i int, version string, extra map[string]any) *libcni.NetworkConfigList {
	e.t.Helper()
	plugin := map[string]any{"type": "daoli-cni", "agentSocket": e.socket(i), "ports": []string{"8080/tcp"},
		"capabilities": map[string]bool{"io.kubernetes.cri.pod-annotations": true, "ips": true, "mac": true}}
	for k, v := range extra {
		plugin[k] = v
	}
	b, err := json.Marshal(map[string]any{"cniVersion": version, "name": "blue", "plugins": []any{plugin}})
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		e.t.Fatalf("parse conflist: %v\n%s", err, b)
	}
	return l
}

// runtime is one CNI runtime: libcni with a cache of its own.
func (e *env) runtime() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{e.pluginDir}, e.t.TempDir(), nil)
}

// pod is a pod sandbox made by hand: a namespace and the runtime's view.
type pod struct {
	ns *testbed.Namespace
	rt *libcni.RuntimeConf
}

// newPod makes a pod's namespace; annotations are passed as a CRI runtime
// passes them.
func (e *env) newPod(namespace, name string, annotations map[string]string) *pod {
	e.t.Helper()
	e.pods++
	ns := e.w.AddNamespace(fmt.Sprintf("pod%d", e.pods))
	var id [32]byte
	rand.Read(id[:])
	rt := &libcni.RuntimeConf{
		ContainerID: hex.EncodeToString(id[:]), NetNS: filepath.Join("/run/netns", ns.Name), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", name}},
	}
	if annotations != nil {
		rt.CapabilityArgs = map[string]any{"io.kubernetes.cri.pod-annotations": annotations}
	}
	return &pod{ns: ns, rt: rt}
}

func (e *env) add(cn *libcni.CNIConfig, l *libcni.NetworkConfigList, p *pod) (*types100.Result, error) {
	r, err := cn.AddNetworkList(context.Background(), l, p.rt)
	if err != nil {
		return nil, err
	}
	return types100.NewResultFromResult(r)
}

func (e *env) mustAdd(cn *libcni.CNIConfig, l *libcni.NetworkConfigList, p *pod) *types100.Result {
	e.t.Helper()
	r, err := e.add(cn, l, p)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", p.ns.Name, err)
	}
	return r
}

// podIP is the address a result gives the pod.
func podIP(t *testing.T, r *types100.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) != 1 {
		t.Fatalf("result has %d addresses, want 1: %s", len(r.IPs), r)
	}
	ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	return ip
}

// endpoints are the registry's endpoints of the network.
func (e *env) endpoints() []mapper.Endpoint {
	e.t.Helper()
	eps, err := e.mc.Endpoints(context.Background(), "blue", "")
	if err != nil {
		e.t.Fatal(err)
	}
	return eps
}

// veths are the daoli veths on server i.
func (e *env) veths(i int) []string {
	e.t.Helper()
	h, err := netns.GetFromName(e.w.Servers[i].Name)
	if err != nil {
		e.t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		e.t.Fatal(err)
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "dl") {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// cniError is err as the plugin's CNI error.
func cniError(t *testing.T, err error) *types.Error {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %q is not a CNI error", err)
	}
	return te
}

// serve runs the app server in p's namespace on 8080 and waits until
// client reaches it at addr.
func (e *env) serve(p, client *pod, name, addr string) {
	e.t.Helper()
	p.ns.Start(e.bin, "app", "serve", "--port", "8080", "--name", name)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, _ := client.ns.Output(e.bin, "app", "ask", "--to", addr, "--count", "1", "--timeout", "200ms")
		if strings.Contains(out, " ok "+name+" saw") {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s at %s never answered: %s", name, addr, out)
		}
	}
}
