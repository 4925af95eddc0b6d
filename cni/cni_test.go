package cni_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/daolinet/daoli/mapper"
)

// TestAddCheckDel: two pods on two servers get addresses through ADD,
// pass CHECK, talk by their IPs; DEL removes one's endpoint and veth, and
// DEL again, or of a container never added, succeeds.
func TestAddCheckDel(t *testing.T) {
	e := newEnv(t, 2)
	cn := e.runtime()
	l0, l1 := e.conflist(0, "1.1.0", nil), e.conflist(1, "1.1.0", nil)
	a, b := e.newPod("default", "client", nil), e.newPod("default", "web", nil)
	ra := e.mustAdd(cn, l0, a)
	rb := e.mustAdd(cn, l1, b)
	ipA, ipB := podIP(t, ra), podIP(t, rb)
	if ipA == ipB || !netip.MustParsePrefix("10.1.0.0/24").Contains(ipA) {
		t.Fatalf("pods got %s and %s; want two addresses of 10.1.0.0/24", ipA, ipB)
	}
	if ones, _ := ra.IPs[0].Address.Mask.Size(); ones != 24 || ra.IPs[0].Gateway.String() != "10.1.0.1" {
		t.Errorf("result address %s via %s, want a /24 via the gateway 10.1.0.1", ra.IPs[0].Address.String(), ra.IPs[0].Gateway)
	}
	if len(ra.Interfaces) != 2 || ra.Interfaces[1].Sandbox != a.rt.NetNS || ra.Interfaces[1].Name != "eth0" {
		t.Errorf("result interfaces %+v, want the host veth and eth0 in %s", ra.Interfaces, a.rt.NetNS)
	}
	for _, c := range []struct {
		l *libcni.NetworkConfigList
		p *pod
	}{{l0, a}, {l1, b}} {
		if err := cn.CheckNetworkList(context.Background(), c.l, c.p.rt); err != nil {
			t.Errorf("CHECK %s: %v", c.p.ns.Name, err)
		}
	}
	e.serve(b, a, "web", ipB.String()+":8080")

	if err := cn.DelNetworkList(context.Background(), l0, a.rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	for _, ep := range e.endpoints() {
		if ep.IP == ipA {
			t.Errorf("after DEL the registry still has endpoint %d at %s", ep.ID, ipA)
		}
	}
	if v := e.veths(0); len(v) != 0 {
		t.Errorf("after DEL server-0 still has veths %v", v)
	}
	// CHECK of what was deleted fails and says why. (libcni refuses
	// CHECK without a cached result, so the plugin is asked directly.)
	if err := checkDirect(e, l0, a); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("CHECK after DEL: %v, want an error saying the endpoint is not found", err)
	}
	if err := cn.DelNetworkList(context.Background(), l0, a.rt); err != nil {
		t.Errorf("DEL again: %v", err)
	}
	never := e.newPod("default", "never", nil)
	if err := cn.DelNetworkList(context.Background(), l0, never.rt); err != nil {
		t.Errorf("DEL of a container never added: %v", err)
	}
}

// checkDirect runs CHECK without libcni's cache.
func checkDirect(e *env, l *libcni.NetworkConfigList, p *pod) error {
	cn := libcni.NewCNIConfigWithCacheDir([]string{e.pluginDir}, e.t.TempDir(), nil)
	conf, err := libcni.InjectConf(l.Plugins[0], map[string]any{"name": l.Name, "cniVersion": l.CNIVersion})
	if err != nil {
		return err
	}
	return cn.CheckNetwork(context.Background(), conf, p.rt)
}

// TestPodKeepsItsAddress: a pod deleted and added again, under a new
// sandbox on another server, gets its IP and MAC back; a pod that asks
// for an address by annotation gets it, and keeps it.
func TestPodKeepsItsAddress(t *testing.T) {
	e := newEnv(t, 2)
	cn := e.runtime()
	l0, l1 := e.conflist(0, "1.1.0", nil), e.conflist(1, "1.1.0", nil)
	first := e.newPod("shop", "db-0", nil)
	r1 := e.mustAdd(cn, l0, first)
	other := e.mustAdd(cn, l0, e.newPod("shop", "db-1", nil))
	if err := cn.DelNetworkList(context.Background(), l0, first.rt); err != nil {
		t.Fatal(err)
	}
	// Meanwhile a new pod must not be handed db-0's address.
	newcomer := e.mustAdd(cn, l1, e.newPod("shop", "cache", nil))
	if podIP(t, newcomer) == podIP(t, r1) {
		t.Fatalf("a new pod got db-0's address %s while db-0 was away", podIP(t, r1))
	}
	again := e.newPod("shop", "db-0", nil)
	r2 := e.mustAdd(cn, l1, again)
	if podIP(t, r2) != podIP(t, r1) || r2.Interfaces[1].Mac != r1.Interfaces[1].Mac {
		t.Errorf("db-0 rescheduled got %s %s, want its old %s %s", podIP(t, r2), r2.Interfaces[1].Mac, podIP(t, r1), r1.Interfaces[1].Mac)
	}
	if podIP(t, other) == podIP(t, r1) {
		t.Errorf("db-1 shares db-0's address")
	}
	client := e.newPod("shop", "client", nil)
	e.mustAdd(cn, l0, client)
	e.serve(again, client, "db-0", podIP(t, r1).String()+":8080")

	pinned := e.newPod("shop", "pinned", map[string]string{"daoli.io/ip": "10.1.0.77"})
	if ip := podIP(t, e.mustAdd(cn, l0, pinned)); ip != netip.MustParseAddr("10.1.0.77") {
		t.Errorf("a pod annotated daoli.io/ip=10.1.0.77 got %s", ip)
	}
	// Kubernetes' longest names: a 63-character namespace, a 253-character pod.
	long := e.newPod(strings.Repeat("n", 63), strings.Repeat("p", 253), nil)
	e.mustAdd(cn, l0, long)
	claims, err := e.mc.Claims(context.Background(), "blue")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(claims, func(c mapper.Claim) bool {
		return c.Owner == "pod:shop/pinned" && c.IP == netip.MustParseAddr("10.1.0.77")
	}) {
		t.Errorf("claims %+v do not remember pod:shop/pinned at 10.1.0.77", claims)
	}
}

// TestReplicasShareAnIP: pods of one namespace that declare one service
// share its IP and both answer on it; a pod of another namespace that
// declares the same service name, or asks for the address, does not get it.
func TestReplicasShareAnIP(t *testing.T) {
	e := newEnv(t, 2)
	cn := e.runtime()
	l0, l1 := e.conflist(0, "1.1.0", nil), e.conflist(1, "1.1.0", nil)
	svc := map[string]string{"daoli.io/service": "web"}
	r0 := e.mustAdd(cn, l0, e.newPod("shop", "web-a1", svc))
	w1 := e.newPod("shop", "web-b2", svc)
	r1 := e.mustAdd(cn, l1, w1)
	if podIP(t, r0) != podIP(t, r1) {
		t.Fatalf("replicas got %s and %s, want one IP", podIP(t, r0), podIP(t, r1))
	}
	if r0.Interfaces[1].Mac == r1.Interfaces[1].Mac {
		t.Errorf("replicas share MAC %s", r0.Interfaces[1].Mac)
	}
	foreign := e.mustAdd(cn, l0, e.newPod("other", "web-x", svc))
	if podIP(t, foreign) == podIP(t, r0) {
		t.Errorf("a pod of namespace other joined shop's service web at %s", podIP(t, r0))
	}
	thief := e.newPod("other", "thief", map[string]string{"daoli.io/ip": podIP(t, r0).String()})
	_, err := e.add(cn, l0, thief)
	if te := cniError(t, err); !strings.Contains(te.Msg, "claimed by service:shop/web") {
		t.Errorf("a pod asking for the service's address: %q, want it refused as claimed by service:shop/web", te.Msg)
	}
}

// TestBadInput: a bad configuration, a bad annotation, a missing agent
// and a duplicate ADD each get a CNI error that says what was wrong, and
// leave nothing behind.
func TestBadInput(t *testing.T) {
	e := newEnv(t, 1)
	cn := e.runtime()
	good := e.conflist(0, "1.1.0", nil)
	held := e.newPod("default", "held", nil)
	e.mustAdd(cn, good, held)
	before, beforeVeths := len(e.endpoints()), e.veths(0)
	for _, tc := range []struct {
		name  string
		conf  map[string]any
		annot map[string]string
		code  uint
		says  string
	}{
		{"mode", map[string]any{"mode": "sideways"}, nil, types.ErrInvalidNetworkConfig, `"mode": "sideways"; want balance or failover`},
		{"ports", map[string]any{"ports": []string{"http"}}, nil, types.ErrInvalidNetworkConfig, `"ports"[0]`},
		{"priority annotation", nil, map[string]string{"daoli.io/priority": "high"}, types.ErrInvalidNetworkConfig, `daoli.io/priority: "high"`},
		{"ip annotation", nil, map[string]string{"daoli.io/ip": "10.1.0.300"}, types.ErrInvalidNetworkConfig, `daoli.io/ip: "10.1.0.300" is not an IPv4 address`},
		{"ip outside", nil, map[string]string{"daoli.io/ip": "10.9.0.5"}, types.ErrInvalidNetworkConfig, "10.9.0.5 is outside the subnet 10.1.0.0/24"},
		{"service annotation", nil, map[string]string{"daoli.io/service": "web/../x"}, types.ErrInvalidNetworkConfig, "daoli.io/service"},
		{"unknown network", map[string]any{"network": "nowhere"}, nil, types.ErrInvalidNetworkConfig, "network nowhere: not found"},
		{"missing agent", map[string]any{"agentSocket": "/nonexistent/daoli.sock"}, nil, types.ErrTryAgainLater, "is daoli agent running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.add(cn, e.conflist(0, "1.1.0", tc.conf), e.newPod("default", "bad", tc.annot))
			te := cniError(t, err)
			if te.Code != tc.code || !strings.Contains(te.Msg, tc.says) {
				t.Errorf("error %d %q; want code %d saying %q", te.Code, te.Msg, tc.code, tc.says)
			}
		})
	}
	// Stdin that is not JSON, sent as a runtime would.
	cmd := exec.Command(filepath.Join(e.pluginDir, "daoli-cni"))
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=x", "CNI_NETNS=" + held.rt.NetNS, "CNI_IFNAME=eth1", "CNI_PATH=" + e.pluginDir}
	cmd.Stdin = strings.NewReader(`{"cniVersion": "1.1.0", "name": "blue", "type": "daoli-cni", "ports": [8080`)
	out, _ := cmd.Output()
	var te types.Error
	if err := json.Unmarshal(out, &te); err != nil || te.Code != types.ErrDecodingFailure {
		t.Errorf("ADD with broken JSON answered %q, want CNI error %d", out, types.ErrDecodingFailure)
	}
	// The runtime adds the same container twice.
	_, err := e.add(e.runtime(), good, held)
	if te := cniError(t, err); !strings.Contains(te.Msg, "already has eth0 in network blue") {
		t.Errorf("duplicate ADD: %q, want it refused as already attached", te.Msg)
	}
	if err := cn.CheckNetworkList(context.Background(), good, held.rt); err != nil {
		t.Errorf("the first attachment after a duplicate ADD: %v", err)
	}
	if n, v := len(e.endpoints()), e.veths(0); n != before || !slices.Equal(v, beforeVeths) {
		t.Errorf("after the refused ADDs: %d endpoints and veths %v, want %d and %v", n, v, before, beforeVeths)
	}
}

// TestGC: GC removes the endpoints of this server's pods that the runtime
// no longer lists, and only those.
func TestGC(t *testing.T) {
	e := newEnv(t, 1)
	l := e.conflist(0, "1.1.0", nil)
	keep, stale := e.newPod("default", "keep", nil), e.newPod("default", "stale", nil)
	e.mustAdd(e.runtime(), l, keep)
	rs := e.mustAdd(e.runtime(), l, stale)
	// A runtime that lost its cache (a reinstalled node) lists only keep.
	if err := e.runtime().GCNetworkList(context.Background(), l, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
		{ContainerID: keep.rt.ContainerID, IfName: "eth0"}}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	var ips []string
	for _, ep := range e.endpoints() {
		ips = append(ips, ep.IP.String())
	}
	if len(ips) != 1 || ips[0] == podIP(t, rs).String() {
		t.Errorf("after GC the network holds %v; want keep's address only (stale had %s)", ips, podIP(t, rs))
	}
	if err := checkDirect(e, l, keep); err != nil {
		t.Errorf("keep after GC: %v", err)
	}
	if v := e.veths(0); len(v) != 1 {
		t.Errorf("after GC server-0 has veths %v, want keep's alone", v)
	}
}

// TestStatus: STATUS succeeds while the agent and its mapper answer, and
// fails, saying which, while either is gone.
func TestStatus(t *testing.T) {
	e := newEnv(t, 1)
	cn := e.runtime()
	l := e.conflist(0, "1.1.0", nil)
	if err := cn.GetStatusNetworkList(context.Background(), l); err != nil {
		t.Fatalf("STATUS with agent and mapper up: %v", err)
	}
	e.stopMapper()
	err := cn.GetStatusNetworkList(context.Background(), l)
	if te := cniError(t, err); te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "no mapper answers") {
		t.Errorf("STATUS without the mapper: %d %q, want code 50 saying no mapper answers", te.Code, te.Msg)
	}
	e.killAgent(0)
	err = cn.GetStatusNetworkList(context.Background(), l)
	if te := cniError(t, err); te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "is daoli agent running") {
		t.Errorf("STATUS without the agent: %d %q, want code 50 asking whether the agent runs", te.Code, te.Msg)
	}
}

// TestOlderSpecVersions: a runtime speaking CNI 0.4.0 or 1.0.0 (containerd
// 1.6 speaks up to 1.0.0) gets a result in its version.
func TestOlderSpecVersions(t *testing.T) {
	e := newEnv(t, 1)
	for _, v := range []string{"0.4.0", "1.0.0"} {
		cn := e.runtime()
		l := e.conflist(0, v, nil)
		p := e.newPod("default", "v"+strings.ReplaceAll(v, ".", ""), nil)
		r, err := cn.AddNetworkList(context.Background(), l, p.rt)
		if err != nil {
			t.Fatalf("ADD at %s: %v", v, err)
		}
		if r.Version() != v {
			t.Errorf("result version %s, want %s", r.Version(), v)
		}
		if err := cn.CheckNetworkList(context.Background(), l, p.rt); err != nil {
			t.Errorf("CHECK at %s: %v", v, err)
		}
		if err := cn.DelNetworkList(context.Background(), l, p.rt); err != nil {
			t.Errorf("DEL at %s: %v", v, err)
		}
	}
}
