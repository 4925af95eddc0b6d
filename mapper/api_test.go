package mapper_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
)

func newAPI(t *testing.T, retain int64) (*mapper.Client, *httptest.Server, *store.Bolt) {
	t.Helper()
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(t.TempDir(), "db"), Retain: retain})
	if err != nil {
		t.Fatal(err)
	}
	reg := must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st}))
	srv := httptest.NewServer(mapper.NewAPI(reg, nil))
	t.Cleanup(func() { srv.Close(); st.Close() })
	return mapper.NewClient(srv.URL, nil), srv, st
}

func TestAPIRejectsBadInput(t *testing.T) {
	c, srv, st := newAPI(t, 0)
	world(t, must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st})))
	tests := []struct {
		name, method, path, body string
		status                   int
		code, field, fragment    string
	}{
		{"malformed", "POST", "/v1/networks", `{"name": "n",`, 400, "invalid", "body", "malformed JSON"},
		{"empty", "POST", "/v1/networks", ``, 400, "invalid", "body", "empty"},
		{"not an object", "POST", "/v1/networks", `[1]`, 400, "invalid", "body", "expected an object, got an array"},
		{"trailing", "POST", "/v1/networks", `{"name":"n","subnet":"10.5.0.0/24"} {}`, 400, "invalid", "body", "after the JSON value"},
		{"unknown field", "POST", "/v1/networks", `{"name":"n","subnet":"10.5.0.0/24","vlan":3}`, 400, "invalid", "vlan", "unknown field"},
		{"subnet type", "POST", "/v1/networks", `{"name":"n","subnet":24}`, 400, "invalid", "subnet", "expected a CIDR string, got number"},
		{"subnet text", "POST", "/v1/networks", `{"name":"n","subnet":"10.5.0.0/33"}`, 400, "invalid", "subnet", "10.5.0.0/33"},
		{"port type", "POST", "/v1/endpoints", `{"network":"net1","ip":"10.1.0.7","server":"s1","ports":[{"port":"80"}]}`, 400, "invalid", "ports[0].port", "expected a whole number from 0 to 65535, got string"},
		{"port range", "POST", "/v1/endpoints", `{"network":"net1","ip":"10.1.0.7","server":"s1","ports":[{"port":70000,"protocol":"tcp"}]}`, 400, "invalid", "ports[0].port", "got number 70000"},
		{"bad ip", "POST", "/v1/endpoints", `{"network":"net1","ip":"10.1.0.x","server":"s1"}`, 400, "invalid", "ip", "10.1.0.x"},
		{"bad mac", "POST", "/v1/endpoints", `{"network":"net1","ip":"10.1.0.7","server":"s1","mac":"zz:00"}`, 400, "invalid", "mac", "six hex bytes"},
		{"ports not array", "POST", "/v1/endpoints", `{"network":"net1","ip":"10.1.0.7","server":"s1","ports":"80/tcp"}`, 400, "invalid", "ports", "expected an array, got a string"},
		{"outside subnet", "POST", "/v1/endpoints", `{"network":"net1","ip":"10.2.0.7","server":"s1"}`, 400, "invalid", "ip", "outside the subnet"},
		{"unknown network", "POST", "/v1/endpoints", `{"network":"nope","ip":"10.1.0.7","server":"s1"}`, 404, "not_found", "network", "does not exist"},
		{"batch field", "POST", "/v1/endpoints/batch", `{"endpoints":[{"network":"net1","ip":"10.1.0.7","server":"s1"},{"network":"net1","ip":"10.1.0.0","server":"s1"}]}`, 400, "invalid", "endpoints[1].ip", "network address"},
		{"network exists", "POST", "/v1/networks", `{"name":"net1","subnet":"10.5.0.0/24"}`, 409, "exists", "name", "already exists"},
		{"state", "PUT", "/v1/endpoints/1/state", `{"state":"sleeping"}`, 400, "invalid", "state", `"sleeping"`},
		{"move without server", "POST", "/v1/endpoints/1/move", `{}`, 400, "invalid", "server", "missing"},
		{"unknown endpoint", "GET", "/v1/endpoints/nope", ``, 404, "not_found", "", "not found"},
		{"unknown route", "GET", "/v1/bogus", ``, 404, "not_found", "", "no route"},
		{"watch revision", "GET", "/v1/watch?revision=x", ``, 400, "invalid", "revision", "whole number"},
		{"watch future", "GET", "/v1/watch?revision=999", ``, 400, "invalid", "revision", "in the future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e mapper.APIError
			body, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("status %d, body %q is not an API error: %v", resp.StatusCode, body, err)
			}
			if resp.StatusCode != tt.status || e.Code != tt.code || e.Field != tt.field || !strings.Contains(e.Message, tt.fragment) {
				t.Errorf("got %d %s field=%q %q; want %d %s field=%q saying %q",
					resp.StatusCode, e.Code, e.Field, e.Message, tt.status, tt.code, tt.field, tt.fragment)
			}
		})
	}
	// Nothing was written by any of them.
	if eps, err := c.Endpoints(ctx, "", ""); err != nil || len(eps) != 0 {
		t.Errorf("after rejected requests: %d endpoints, %v; want none", len(eps), err)
	}
}

func TestAPIRoundTrip(t *testing.T) {
	c, srv, _ := newAPI(t, 0)
	must[mapper.Network](t)(c.CreateNetwork(ctx, mapper.NetworkSpec{Name: "net1", Subnet: prefix("10.1.0.0/24")}))
	for i, name := range []string{"s1", "s2"} {
		must[mapper.Server](t)(c.RegisterServer(ctx, mapper.ServerSpec{Name: name,
			IPs: []netip.Addr{ip(fmt.Sprintf("192.0.2.%d", i+1))}, MAC: mac(fmt.Sprintf("52:54:00:00:00:0%d", i+1))}))
	}
	var created []mapper.Endpoint
	for i, srv := range []string{"s1", "s2", "s2"} {
		created = append(created, must[mapper.Endpoint](t)(c.CreateEndpoint(ctx, web(fmt.Sprintf("web%d", i), srv))))
	}
	alloc := must[mapper.Allocation](t)(c.Allocation(ctx))
	if want := (mapper.Allocation{BlockSize: 256, WirePorts: mapper.DefaultWirePorts, IdentityPorts: mapper.DefaultIdentityPorts, GatewayBase: 32512}); alloc != want {
		t.Errorf("allocation: %+v, want %+v", alloc, want)
	}
	d := must[mapper.EndpointDetail](t)(c.Endpoint(ctx, "web2"))
	want := mapper.SixTuple{ServerMAC: mac("52:54:00:00:00:02"), ServerIP: ip("192.0.2.2"), ServerPort: 16640,
		MAC: created[2].MAC, IP: ip("10.1.0.5"), Port: 80, Protocol: mapper.TCP}
	if len(d.SixTuples) != 1 || d.SixTuples[0] != want {
		t.Errorf("6-tuples of web2: %v, want [%v]", d.SixTuples, want)
	}
	svcs := must[[]mapper.Service](t)(c.Services(ctx))
	if len(svcs) != 1 || len(svcs[0].Backends) != 3 {
		t.Fatalf("services: %+v, want one with three backends", svcs)
	}
	if eps := must[[]mapper.Endpoint](t)(c.Endpoints(ctx, "net1", "s2")); len(eps) != 2 {
		t.Errorf("endpoints of net1 on s2: %d, want 2", len(eps))
	}
	moved := must[mapper.Endpoint](t)(c.MoveEndpoint(ctx, "web0", "s2", ""))
	if moved.Server != "s2" || moved.Identity != created[0].Identity || moved.MAC != created[0].MAC {
		t.Errorf("moved: %+v, want web0 on s2 with its identity block and MAC", moved)
	}
	down := must[mapper.Endpoint](t)(c.SetEndpointState(ctx, "web1", mapper.StateRequest{State: mapper.Down}))
	if down.State != mapper.Down {
		t.Errorf("state after down: %s", down.State)
	}
	_, err := c.CreateEndpoint(ctx, mapper.EndpointSpec{Network: "net1", IP: ip("10.1.0.5"), Server: "s1", Mode: mapper.Failover,
		Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}}})
	var ae *mapper.APIError
	if !errors.Is(err, mapper.ErrConflict) || !errors.As(err, &ae) || ae.Field != "ports[0]" {
		t.Errorf("joining a balance service in failover mode: %v, want a conflict on ports[0]", err)
	}
	deny := mapper.Egress{Deny: true}
	if n := must[mapper.Network](t)(c.UpdateNetwork(ctx, "net1", mapper.NetworkUpdate{Egress: &deny})); !n.Egress.Deny {
		t.Errorf("egress after PATCH: %s, want deny", n.Egress)
	}
	for _, tc := range []struct{ body, field, says string }{
		{`{"egress": {"deyn": true}}`, "egress.deyn", "unknown field"},
		{`{"egress": "deny"}`, "egress", "expected an object"},
		{`{"egress": {"to": ["bogus"]}}`, "egress.to[0]", `"bogus" is not a CIDR string`},
	} {
		req, _ := http.NewRequest(http.MethodPatch, srv.URL+"/v1/networks/net1", strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e mapper.APIError
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || e.Field != tc.field || !strings.Contains(e.Message, tc.says) {
			t.Errorf("PATCH %s: %d %+v, want 400 on %s saying %q", tc.body, resp.StatusCode, e, tc.field, tc.says)
		}
	}
	if n := must[mapper.Network](t)(c.Network(ctx, "net1")); !n.Egress.Deny {
		t.Errorf("refused PATCHes changed egress to %s", n.Egress)
	}
	bad := mapper.Egress{To: []netip.Prefix{prefix("203.0.113.9/24")}}
	if _, err := c.UpdateNetwork(ctx, "net1", mapper.NetworkUpdate{Egress: &bad}); !errors.As(err, &ae) || ae.Field != "egress.to[0]" {
		t.Errorf("PATCH with a bad prefix: %v, want an error on egress.to[0]", err)
	}
	if err := c.DeleteNetwork(ctx, "net1"); !errors.Is(err, mapper.ErrInUse) {
		t.Errorf("removing a network in use: %v, want ErrInUse", err)
	}
	for _, e := range created {
		must[mapper.Endpoint](t)(c.DeleteEndpoint(ctx, e.Name))
	}
	if err := c.DeleteNetwork(ctx, "net1"); err != nil {
		t.Error(err)
	}
	if _, err := c.Network(ctx, "net1"); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("removed network: %v, want ErrNotFound", err)
	}
}

func TestAPIWatchResumeAndCompaction(t *testing.T) {
	c, _, st := newAPI(t, 0)
	reg := must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st}))
	world(t, reg)
	snap := must[mapper.Snapshot](t)(c.Snapshot(ctx))
	cctx, cancel := context.WithCancel(ctx)
	w := c.Watch(cctx, snap.Revision+1)
	for i := 0; i < 6; i++ {
		must[mapper.Endpoint](t)(c.CreateEndpoint(ctx, web(fmt.Sprintf("w%d", i), "s1")))
	}
	var seen []int64
	for len(seen) < 3 {
		r := <-w
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		for _, ch := range r.Changes {
			seen = append(seen, ch.Revision)
		}
	}
	cancel() // the watcher disconnects after three changes...
	for range w {
	}
	for i := 6; i < 8; i++ { // ...writes go on meanwhile...
		must[mapper.Endpoint](t)(c.CreateEndpoint(ctx, web(fmt.Sprintf("w%d", i), "s2")))
	}
	// ...and it resumes from its last revision without a gap or a repeat.
	cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w = c.Watch(cctx, seen[len(seen)-1]+1)
	for len(seen) < 8 {
		r := <-w
		if r.Err != nil {
			t.Fatalf("after %d changes: %v", len(seen), r.Err)
		}
		for _, ch := range r.Changes {
			seen = append(seen, ch.Revision)
		}
	}
	for i, rev := range seen {
		if rev != snap.Revision+1+int64(i) {
			t.Fatalf("revisions seen %v: want %d consecutive from %d", seen, len(seen), snap.Revision+1)
		}
	}
	// Once the log is compacted past it, the watcher is told to list again.
	if err := st.Compact(ctx, seen[5]); err != nil {
		t.Fatal(err)
	}
	r := <-c.Watch(ctx, seen[0])
	var ae *mapper.APIError
	if !errors.Is(r.Err, mapper.ErrCompacted) || !errors.As(r.Err, &ae) || ae.Status != http.StatusGone || r.CompactRevision != seen[5] {
		t.Errorf("watch from a compacted revision: %v (compact revision %d), want 410 ErrCompacted at %d", r.Err, r.CompactRevision, seen[5])
	}
}

func TestAPIPublished(t *testing.T) {
	c, srv, st := newAPI(t, 0)
	world(t, must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st})))
	must[mapper.Endpoint](t)(c.CreateEndpoint(ctx, web("web1", "s1")))
	e := must[mapper.Endpoint](t)(c.SetPublished(ctx, "web1", []mapper.PublishedPort{{HostPort: 8080, Port: 80, Protocol: mapper.TCP}}))
	if len(e.Published) != 1 {
		t.Fatalf("answer %+v: want the published port", e)
	}
	d := must[mapper.EndpointDetail](t)(c.Endpoint(ctx, "web1"))
	if len(d.Endpoint.Published) != 1 || d.Endpoint.Published[0].HostPort != 8080 {
		t.Errorf("GET endpoint: published %v, want 8080->80/tcp", d.Endpoint.Published)
	}
	for _, tt := range []struct{ body, field, fragment string }{
		{`{"published":[{"host_port":"8080","port":80,"protocol":"tcp"}]}`, "published[0].host_port", "expected a whole number"},
		{`{"published":[{"host_port":8080,"port":80,"protocol":"tcp","host_ip":"0.0.0.0"}]}`, "published[0].host_ip", "unknown field"},
		{`{"published":[{"host_port":8080,"port":99,"protocol":"tcp"}]}`, "published[0].port", "does not serve"},
	} {
		req, _ := http.NewRequest("PUT", srv.URL+"/v1/endpoints/web1/published", strings.NewReader(tt.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		e := readAPIError(t, resp)
		if resp.StatusCode != 400 || e.Field != tt.field || !strings.Contains(e.Message, tt.fragment) {
			t.Errorf("%s: %d field=%q %q; want 400 on %s saying %q", tt.body, resp.StatusCode, e.Field, e.Message, tt.field, tt.fragment)
		}
	}
	// Clearing is an empty list; a rejected request changed nothing.
	if d := must[mapper.EndpointDetail](t)(c.Endpoint(ctx, "web1")); len(d.Endpoint.Published) != 1 {
		t.Errorf("after rejected requests: %v", d.Endpoint.Published)
	}
	if e := must[mapper.Endpoint](t)(c.SetPublished(ctx, "web1", nil)); len(e.Published) != 0 {
		t.Errorf("after clearing: %v", e.Published)
	}
}

func readAPIError(t *testing.T, resp *http.Response) mapper.APIError {
	t.Helper()
	defer resp.Body.Close()
	var e mapper.APIError
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("status %d: body is not an API error: %v", resp.StatusCode, err)
	}
	return e
}
