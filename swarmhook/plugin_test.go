package swarmhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/daolinet/daoli/agentapi"
	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// These tests run the plugin's protocol over HTTP against a real mapper
// (bbolt in a temporary directory) and a fake agent that speaks the real
// agent's socket JSON but creates no interfaces. They need no root.

const testServer = "server-a"

// fakeDocker names networks like the engine: only once they are stored.
// Its containers and event streams are in events_test.go.
type fakeDocker struct {
	mu    sync.Mutex
	names map[string]string
	// containers are what Containers and Container answer.
	containers map[string]Container
	// streams receives every stream Events opens, for the test to feed.
	streams chan *fakeStream
	// listErr, if set, fails Containers.
	listErr error
}

func (d *fakeDocker) NetworkName(_ context.Context, id string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n, ok := d.names[id]; ok {
		return n, nil
	}
	return "", fmt.Errorf("network %s: %w", id, ErrUnknownNetwork)
}

func (d *fakeDocker) Close() error { return nil }

func (d *fakeDocker) name(id, name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.names[id] = name
}

// fakeAgent answers POST /v1/host-veth and /v1/detach on a unix socket by
// registering and removing endpoints in the mapper, as the agent does.
type fakeAgent struct {
	mc *mapper.Client
	n  int
	// beforeRegister, if set, runs before each registration: a test
	// makes another server win a race with it.
	beforeRegister func()
}

func (f *fakeAgent) serve(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			status := http.StatusInternalServerError
			var ae *mapper.APIError
			if errors.As(err, &ae) {
				status = ae.Status
			}
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("POST /v1/host-veth", func(w http.ResponseWriter, r *http.Request) {
		var req agentapi.HostVethRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, nil, err)
			return
		}
		if f.beforeRegister != nil {
			f.beforeRegister()
		}
		f.n++
		host := fmt.Sprintf("dl%08d", f.n)
		e, err := f.mc.CreateEndpoint(r.Context(), mapper.EndpointSpec{
			Name: req.Name, Network: req.Network, IP: req.IP, MAC: req.MAC, Server: testServer, Interface: host,
			Ports: req.Ports, Mode: req.Mode, Priority: req.Priority, State: req.State,
		})
		reply(w, agentapi.HostVethResponse{Endpoint: e, Peer: "dlc" + host[2:]}, err)
	})
	mux.HandleFunc("POST /v1/detach", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Endpoint string }
		json.NewDecoder(r.Body).Decode(&req)
		e, err := f.mc.DeleteEndpoint(r.Context(), req.Endpoint)
		reply(w, e, err)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return path
}

type fixture struct {
	t      *testing.T
	mc     *mapper.Client
	docker *fakeDocker
	agent  *fakeAgent
	cfg    Config
	p      *Plugin
	url    string // the plugin's HTTP server
	stop   func()
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(t.TempDir(), "registry.db")})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := mapper.New(mapper.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	api := mapper.NewAPI(reg, nil)
	ms := httptest.NewServer(api)
	t.Cleanup(func() { api.Close(); ms.Close(); st.Close() })
	mc := mapper.NewClient(ms.URL, nil)
	if _, err := mc.RegisterServer(context.Background(), mapper.ServerSpec{
		Name: testServer, IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, MAC: mustMAC(t, "52:54:00:00:00:0a"),
	}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, mc: mc, docker: newFakeDocker(), agent: &fakeAgent{mc: mc}}
	f.cfg = Config{Mapper: mc, AgentSocket: f.agent.serve(t), StateDir: t.TempDir(), Docker: f.docker}
	f.start()
	t.Cleanup(func() { f.stop() })
	return f
}

// start (re)starts the plugin from its state directory.
func (f *fixture) start() {
	f.t.Helper()
	p, err := New(f.cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	f.p, f.url = p, srv.URL
	f.stop = func() { srv.Close(); p.Close() }
}

func mustMAC(t *testing.T, s string) mapper.MAC {
	t.Helper()
	m, err := mapper.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// call posts one plugin request and decodes the answer into out. It
// returns the plugin's error message, if any.
func (f *fixture) call(method string, in, out any) error {
	f.t.Helper()
	var body bytes.Buffer
	if in != nil {
		json.NewEncoder(&body).Encode(in)
	}
	resp, err := http.Post(f.url+"/"+method, pluginContentType, &body)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		json.NewDecoder(resp.Body).Decode(&e)
		if e.Err == "" || e.Err != e.Error {
			f.t.Fatalf("%s: status %s, error fields %+v: want both fields set alike", method, resp.Status, e)
		}
		return errors.New(e.Err)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			f.t.Fatalf("%s: decode answer: %v", method, err)
		}
	}
	return nil
}

// must is call that fails the test on a plugin error.
func (f *fixture) must(method string, in, out any) {
	f.t.Helper()
	if err := f.call(method, in, out); err != nil {
		f.t.Fatalf("%s: %v", method, err)
	}
}

// network creates a Docker network as dockerd does: pool, gateway,
// CreateNetwork; then Docker stores it under its name.
func (f *fixture) network(id, name, subnet string) string {
	f.t.Helper()
	var pool requestPoolResponse
	f.must("IpamDriver.RequestPool", requestPoolRequest{AddressSpace: "daoli", Pool: subnet}, &pool)
	var gw requestAddressResponse
	f.must("IpamDriver.RequestAddress", requestAddressRequest{PoolID: pool.PoolID, Options: map[string]string{optRequestAddressType: gatewayAddressType}}, &gw)
	f.must("NetworkDriver.CreateNetwork", createNetworkRequest{NetworkID: id, IPv4Data: []ipamData{{AddressSpace: "daoli", Pool: subnet, Gateway: gw.Address}}}, nil)
	f.docker.name(id, name)
	return pool.PoolID
}

// endpoint asks for addr (empty: any) and creates endpoint eid with opts.
func (f *fixture) endpoint(poolID, netID, eid, addr string, opts map[string]any) (requestAddressResponse, createEndpointResponse, error) {
	f.t.Helper()
	var a requestAddressResponse
	if err := f.call("IpamDriver.RequestAddress", requestAddressRequest{PoolID: poolID, Address: addr}, &a); err != nil {
		return a, createEndpointResponse{}, err
	}
	var ce createEndpointResponse
	err := f.call("NetworkDriver.CreateEndpoint", createEndpointRequest{NetworkID: netID, EndpointID: eid, Interface: &endpointInterface{Address: a.Address}, Options: opts}, &ce)
	if err != nil {
		f.must("IpamDriver.ReleaseAddress", releaseAddressRequest{PoolID: poolID, Address: strings.Split(a.Address, "/")[0]}, nil)
	}
	return a, ce, err
}

func (f *fixture) endpoints(network string) []mapper.Endpoint {
	f.t.Helper()
	es, err := f.mc.Endpoints(context.Background(), network, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return es
}

func TestHandshake(t *testing.T) {
	f := newFixture(t)
	var act activateResponse
	f.must("Plugin.Activate", nil, &act)
	if diff := cmp.Diff([]string{"NetworkDriver", "IpamDriver"}, act.Implements); diff != "" {
		t.Errorf("Activate (-want +got):\n%s", diff)
	}
	var caps capabilitiesResponse
	f.must("NetworkDriver.GetCapabilities", nil, &caps)
	if caps.Scope != "local" || caps.ConnectivityScope != "global" {
		t.Errorf("capabilities %+v: want local scope, global connectivity", caps)
	}
	var icaps ipamCapabilitiesResponse
	f.must("IpamDriver.GetCapabilities", nil, &icaps)
	if icaps.RequiresMACAddress {
		t.Error("IPAM requires a MAC address; the mapper makes MACs, it should not")
	}
	var spaces addressSpacesResponse
	f.must("IpamDriver.GetDefaultAddressSpaces", nil, &spaces)
	if spaces.LocalDefaultAddressSpace == "" || spaces.GlobalDefaultAddressSpace == "" {
		t.Errorf("address spaces %+v: want both named", spaces)
	}
	for _, m := range []string{"NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete", "NetworkDriver.RevokeExternalConnectivity", "IpamDriver.ReleasePool"} { // revoking an unknown endpoint is fine
		f.must(m, map[string]any{}, nil)
	}
}

// TestLifecycle walks one container through everything Docker calls, and
// checks the registry after each step.
func TestLifecycle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	pool := f.network("n1", "net1", "10.1.0.0/24")
	if pool != "daoli/10.1.0.0/24" {
		t.Errorf("pool ID %q", pool)
	}
	n := waitNetwork(t, f.mc, "net1")
	if n.Subnet.String() != "10.1.0.0/24" || n.Gateway.String() != "10.1.0.1" {
		t.Errorf("mapper network %+v: want 10.1.0.0/24 via 10.1.0.1", n)
	}

	a, ce, err := f.endpoint(pool, "n1", "e1aaaaaaaaaaaaaaaa", "10.1.0.5", map[string]any{
		optExposedPorts: []map[string]any{{"Proto": 6, "Port": 80}, {"Proto": 17, "Port": 53}},
		OptService:      "web", OptMode: "failover", OptPriority: "7",
	})
	if err != nil {
		t.Fatal(err)
	}
	if a.Address != "10.1.0.5/24" {
		t.Errorf("address %q, want 10.1.0.5/24", a.Address)
	}
	es := f.endpoints("net1")
	if len(es) != 1 {
		t.Fatalf("mapper has %d endpoints, want 1", len(es))
	}
	e := es[0]
	if ce.Interface == nil || ce.Interface.MacAddress != e.MAC.String() {
		t.Errorf("CreateEndpoint answered %+v; want the mapper's MAC %s", ce.Interface, e.MAC)
	}
	want := mapper.Endpoint{
		ID: e.ID, Name: "web.e1aaaaaaaaaa", Network: "net1", NetworkID: n.ID, IP: netip.MustParseAddr("10.1.0.5"), MAC: e.MAC,
		Server: testServer, Interface: "dl00000001", Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}, {Port: 53, Protocol: mapper.UDP}},
		Mode: mapper.Failover, Priority: 7, State: mapper.Down, Wire: e.Wire, Identity: e.Identity,
	}
	if diff := cmp.Diff(want, e, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("registered endpoint (-want +got):\n%s", diff)
	}

	var j joinResponse
	f.must("NetworkDriver.Join", joinRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa", SandboxKey: "/var/run/docker/netns/x"}, &j)
	if diff := cmp.Diff(joinResponse{InterfaceName: interfaceName{SrcName: "dlc00000001", DstPrefix: "eth"}, Gateway: "10.1.0.1"}, j); diff != "" {
		t.Errorf("Join (-want +got):\n%s", diff)
	}
	if s := f.endpoints("net1")[0].State; s != mapper.Active {
		t.Errorf("after Join the endpoint is %s, want active", s)
	}
	var info endpointInfoResponse
	f.must("NetworkDriver.EndpointOperInfo", endpointRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa"}, &info)
	if info.Value["daoli.interface"] != "dl00000001" || info.Value["daoli.service"] != "web" {
		t.Errorf("EndpointOperInfo %v", info.Value)
	}
	f.must("NetworkDriver.ProgramExternalConnectivity", externalConnectivityRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa",
		Options: map[string]any{optPortMap: []map[string]any{{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080}, {"Proto": 17, "Port": 53}}}}, nil)
	if got := fmt.Sprint(f.endpoints("net1")[0].Published); got != "[8080->80/tcp]" {
		t.Errorf("after ProgramExternalConnectivity the mapper endpoint publishes %s, want [8080->80/tcp] (53/udp has no host port)", got)
	}
	// A container of another service may not publish 8080/tcp too.
	if _, _, err := f.endpoint(pool, "n1", "e2bbbbbbbbbbbbbbbb", "10.1.0.6", map[string]any{optExposedPorts: []map[string]any{{"Proto": 6, "Port": 80}}}); err != nil {
		t.Fatal(err)
	}
	err = f.call("NetworkDriver.ProgramExternalConnectivity", externalConnectivityRequest{NetworkID: "n1", EndpointID: "e2bbbbbbbbbbbbbbbb",
		Options: map[string]any{optPortMap: []map[string]any{{"Proto": 6, "Port": 80, "HostPort": 8080}}}}, nil)
	if err == nil || !strings.Contains(err.Error(), "8080/tcp already leads to net1/10.1.0.5:80") {
		t.Errorf("second container publishing 8080: %v, want a refusal", err)
	}
	f.must("NetworkDriver.DeleteEndpoint", endpointRequest{NetworkID: "n1", EndpointID: "e2bbbbbbbbbbbbbbbb"}, nil)
	f.must("IpamDriver.ReleaseAddress", releaseAddressRequest{PoolID: pool, Address: "10.1.0.6"}, nil)
	f.must("NetworkDriver.RevokeExternalConnectivity", externalConnectivityRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa"}, nil)
	if got := f.endpoints("net1")[0].Published; len(got) != 0 {
		t.Errorf("after RevokeExternalConnectivity the endpoint publishes %v", got)
	}

	f.must("NetworkDriver.Leave", endpointRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa"}, nil)
	if s := f.endpoints("net1")[0].State; s != mapper.Down {
		t.Errorf("after Leave the endpoint is %s, want down", s)
	}
	f.must("NetworkDriver.DeleteEndpoint", endpointRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa"}, nil)
	if es := f.endpoints("net1"); len(es) != 0 {
		t.Errorf("after DeleteEndpoint the mapper has %v", es)
	}
	f.must("NetworkDriver.DeleteEndpoint", endpointRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa"}, nil) // twice is fine
	f.must("IpamDriver.ReleaseAddress", releaseAddressRequest{PoolID: pool, Address: "10.1.0.5"}, nil)
	f.must("NetworkDriver.DeleteNetwork", networkRequest{NetworkID: "n1"}, nil)
	if _, err := f.mc.Network(ctx, "net1"); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("after DeleteNetwork the mapper network: %v, want not found", err)
	}
}

func waitNetwork(t *testing.T, mc *mapper.Client, name string) mapper.Network {
	t.Helper()
	for range 200 {
		n, err := mc.Network(context.Background(), name)
		if err == nil {
			return n
		}
		if !errors.Is(err, mapper.ErrNotFound) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("network %s never reached the mapper", name)
	return mapper.Network{}
}

// TestSharedAddress: an address is shared only by containers that declare
// the same service; everything else is refused and leaves nothing behind.
func TestSharedAddress(t *testing.T) {
	svc := func(s string) map[string]any {
		if s == "" {
			return nil
		}
		return map[string]any{OptService: s}
	}
	tests := []struct {
		name          string
		holder, asker string // declared services; "" is none
		shared        bool
	}{
		{"same service", "web", "web", true},
		{"other service", "web", "db", false},
		{"asker declares none", "web", "", false},
		{"holder declared none", "", "web", false},
		{"neither declared", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			pool := f.network("n1", "net1", "10.1.0.0/24")
			if _, _, err := f.endpoint(pool, "n1", "e1aaaaaaaaaaaaaaaa", "10.1.0.5", svc(tt.holder)); err != nil {
				t.Fatal(err)
			}
			_, _, err := f.endpoint(pool, "n1", "e2bbbbbbbbbbbbbbbb", "10.1.0.5", svc(tt.asker))
			if got := err == nil; got != tt.shared {
				t.Fatalf("second container: error %v; want shared=%v", err, tt.shared)
			}
			es := f.endpoints("net1")
			if want := map[bool]int{true: 2, false: 1}[tt.shared]; len(es) != want {
				t.Errorf("mapper has %d endpoints, want %d", len(es), want)
			}
			if !tt.shared && !strings.Contains(err.Error(), "only containers that declare the same service") {
				t.Errorf("refusal does not say how to share: %v", err)
			}
			// A different address is always fine.
			if _, _, err := f.endpoint(pool, "n1", "e3cccccccccccccccc", "10.1.0.6", svc(tt.asker)); err != nil {
				t.Errorf("another address: %v", err)
			}
		})
	}
}

// TestClaimRace: another server registered an unrelated endpoint with the
// same address between this plugin's check and its registration. The
// older endpoint keeps the address; this one is rolled back.
func TestClaimRace(t *testing.T) {
	f := newFixture(t)
	pool := f.network("n1", "net1", "10.1.0.0/24")
	waitNetwork(t, f.mc, "net1")
	var rival mapper.Endpoint
	f.agent.beforeRegister = func() {
		f.agent.beforeRegister = nil
		var err error
		rival, err = f.mc.CreateEndpoint(context.Background(), mapper.EndpointSpec{Name: "docker-ffffffffffff", Network: "net1", IP: netip.MustParseAddr("10.1.0.5"), Server: testServer})
		if err != nil {
			t.Error(err)
		}
	}
	_, _, err := f.endpoint(pool, "n1", "e1aaaaaaaaaaaaaaaa", "10.1.0.5", map[string]any{OptService: "web"})
	if err == nil || !errors.Is(err, ErrAddressInUse) && !strings.Contains(err.Error(), "address in use") || !strings.Contains(err.Error(), "held by endpoint docker-ffffffffffff") {
		t.Fatalf("lost race: error %v, want the rival named", err)
	}
	es := f.endpoints("net1")
	if len(es) != 1 || es[0].ID != rival.ID {
		t.Errorf("mapper has %v, want only the rival %d", es, rival.ID)
	}
}

func TestDynamicAddresses(t *testing.T) {
	f := newFixture(t)
	pool := f.network("n1", "net1", "10.1.0.0/29") // .1 gateway, .2-.6 hosts
	if _, _, err := f.endpoint(pool, "n1", "e1aaaaaaaaaaaaaaaa", "10.1.0.3", nil); err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 4 {
		var a requestAddressResponse
		f.must("IpamDriver.RequestAddress", requestAddressRequest{PoolID: pool}, &a)
		got = append(got, a.Address)
	}
	if diff := cmp.Diff([]string{"10.1.0.2/29", "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29"}, got); diff != "" {
		t.Errorf("dynamic addresses (-want +got):\n%s", diff)
	}
	if err := f.call("IpamDriver.RequestAddress", requestAddressRequest{PoolID: pool}, nil); err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Errorf("full pool: %v", err)
	}
	f.must("IpamDriver.ReleaseAddress", releaseAddressRequest{PoolID: pool, Address: "10.1.0.5"}, nil)
	var a requestAddressResponse
	f.must("IpamDriver.RequestAddress", requestAddressRequest{PoolID: pool}, &a)
	if a.Address != "10.1.0.5/29" {
		t.Errorf("after release: %s, want 10.1.0.5/29 again", a.Address)
	}
}

// TestRestart: Docker never sends CreateNetwork again, so a restarted
// plugin must serve networks and endpoints from its state file.
func TestRestart(t *testing.T) {
	f := newFixture(t)
	pool := f.network("n1", "net1", "10.1.0.0/24")
	if _, _, err := f.endpoint(pool, "n1", "e1aaaaaaaaaaaaaaaa", "10.1.0.5", nil); err != nil {
		t.Fatal(err)
	}
	f.stop()
	f.start()
	var j joinResponse
	f.must("NetworkDriver.Join", joinRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa"}, &j)
	if j.Gateway != "10.1.0.1" || j.InterfaceName.SrcName != "dlc00000001" {
		t.Errorf("Join after restart: %+v", j)
	}
	if _, _, err := f.endpoint(pool, "n1", "e2bbbbbbbbbbbbbbbb", "10.1.0.6", nil); err != nil {
		t.Fatalf("new endpoint after restart: %v", err)
	}
	f.must("NetworkDriver.DeleteEndpoint", endpointRequest{NetworkID: "n1", EndpointID: "e1aaaaaaaaaaaaaaaa"}, nil)
	es := f.endpoints("net1")
	if len(es) != 1 || es[0].IP.String() != "10.1.0.6" {
		t.Errorf("after restart and delete the mapper has %v, want only 10.1.0.6", es)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	pool := f.network("n1", "net1", "10.1.0.0/24")
	tests := []struct {
		name, method string
		req          any
		want         string
	}{
		{"IPv6 pool", "IpamDriver.RequestPool", requestPoolRequest{AddressSpace: "daoli", V6: true}, "IPv6"},
		{"no subnet", "IpamDriver.RequestPool", requestPoolRequest{AddressSpace: "daoli"}, "give --subnet"},
		{"host bits", "IpamDriver.RequestPool", requestPoolRequest{Pool: "10.1.0.1/24"}, "host bits"},
		{"outside", "IpamDriver.RequestAddress", requestAddressRequest{PoolID: pool, Address: "10.2.0.5"}, "not a host address"},
		{"broadcast", "IpamDriver.RequestAddress", requestAddressRequest{PoolID: pool, Address: "10.1.0.255"}, "not a host address"},
		{"foreign pool", "IpamDriver.RequestAddress", requestAddressRequest{PoolID: "default/10.1.0.0/24"}, "not one of daoli's"},
		{"IPv6 network", "NetworkDriver.CreateNetwork", createNetworkRequest{NetworkID: "n2", IPv4Data: []ipamData{{Pool: "10.2.0.0/24", Gateway: "10.2.0.1/24"}}, IPv6Data: []ipamData{{Pool: "fd00::/64"}}}, "IPv6"},
		{"unknown network", "NetworkDriver.CreateEndpoint", createEndpointRequest{NetworkID: "nx", EndpointID: "e9", Interface: &endpointInterface{Address: "10.1.0.9/24"}}, "unknown to the plugin"},
		{"bad mode", "NetworkDriver.CreateEndpoint", createEndpointRequest{NetworkID: "n1", EndpointID: "e9", Interface: &endpointInterface{Address: "10.1.0.9/24"}, Options: map[string]any{OptMode: "random"}}, "want balance or failover"},
		{"bad service", "NetworkDriver.CreateEndpoint", createEndpointRequest{NetworkID: "n1", EndpointID: "e9", Interface: &endpointInterface{Address: "10.1.0.9/24"}, Options: map[string]any{OptService: "a.b"}}, "daoli.service"},
		{"gateway", "NetworkDriver.CreateEndpoint", createEndpointRequest{NetworkID: "n1", EndpointID: "e9", Interface: &endpointInterface{Address: "10.1.0.1/24"}}, "gateway"},
		{"unknown join", "NetworkDriver.Join", joinRequest{NetworkID: "n1", EndpointID: "nope"}, "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.call(tt.method, tt.req, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: error %v, want one that mentions %q", tt.method, err, tt.want)
			}
		})
	}
	if es := f.endpoints("net1"); len(es) != 0 {
		t.Errorf("refused requests left endpoints: %v", es)
	}
}

// TestNetworkNamedByOption: without the Docker API the name comes from
// -o daoli.network, and an existing mapper network with another subnet
// is refused.
func TestNetworkNamedByOption(t *testing.T) {
	f := newFixture(t)
	f.stop()
	f.cfg.Docker = nil
	f.start()
	opts := func(name string) map[string]any {
		return map[string]any{optGeneric: map[string]any{OptNetwork: name}}
	}
	f.must("NetworkDriver.CreateNetwork", createNetworkRequest{NetworkID: "n1", Options: opts("blue"), IPv4Data: []ipamData{{Pool: "10.1.0.0/24", Gateway: "10.1.0.1/24"}}}, nil)
	if _, err := f.mc.Network(context.Background(), "blue"); err != nil {
		t.Fatalf("mapper network blue: %v", err)
	}
	err := f.call("NetworkDriver.CreateNetwork", createNetworkRequest{NetworkID: "n2", Options: opts("blue"), IPv4Data: []ipamData{{Pool: "10.9.0.0/24", Gateway: "10.9.0.1/24"}}}, nil)
	if err == nil || !strings.Contains(err.Error(), "the mapper has it with subnet 10.1.0.0/24") {
		t.Errorf("clashing subnet: %v", err)
	}
	err = f.call("NetworkDriver.CreateNetwork", createNetworkRequest{NetworkID: "n3", IPv4Data: []ipamData{{Pool: "10.3.0.0/24", Gateway: "10.3.0.1/24"}}}, nil)
	if err == nil || !strings.Contains(err.Error(), OptNetwork) {
		t.Errorf("no name and no Docker: %v", err)
	}
}

func TestEndpointNames(t *testing.T) {
	tests := []struct{ service, id, name, back string }{
		{"web", "0123456789abcdef0123", "web.0123456789ab", "web"},
		{"", "0123456789abcdef0123", "docker-0123456789ab", ""},
		{"a-b_c", "fedcba9876543210", "a-b_c.fedcba987654", "a-b_c"},
	}
	for _, tt := range tests {
		if got := endpointName(tt.service, tt.id); got != tt.name {
			t.Errorf("endpointName(%q, %q) = %q, want %q", tt.service, tt.id, got, tt.name)
		}
		if got := serviceOf(tt.name); got != tt.back {
			t.Errorf("serviceOf(%q) = %q, want %q", tt.name, got, tt.back)
		}
	}
	for _, name := range []string{"web-1", "web.1", "web.0123456789AB", "12", ".0123456789ab"} {
		if s := serviceOf(name); s != "" {
			t.Errorf("serviceOf(%q) = %q, want none", name, s)
		}
	}
}
