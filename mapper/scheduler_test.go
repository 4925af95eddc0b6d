package mapper_test

import (
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

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
)

// The scheduler API, through a real HTTP server and the Client.

// schedWorld serves a registry with network net1 and servers s1..s3 whose
// locator addresses hold blocks wire blocks each.
func schedWorld(t *testing.T, blocks int) (*mapper.Client, string) {
	t.Helper()
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	reg := must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st, WirePorts: mapper.PortRange{First: 16384, Last: uint16(16384 + 256*(blocks+1) - 1)}}))
	srv := httptest.NewServer(mapper.NewAPI(reg, nil))
	t.Cleanup(func() { srv.Close(); st.Close() })
	c := mapper.NewClient(srv.URL, nil)
	must[mapper.Network](t)(c.CreateNetwork(ctx, mapper.NetworkSpec{Name: "net1", Subnet: prefix("10.1.0.0/24")}))
	for i := 1; i <= 3; i++ {
		must[mapper.Server](t)(c.RegisterServer(ctx, mapper.ServerSpec{Name: fmt.Sprintf("s%d", i),
			IPs: []netip.Addr{ip(fmt.Sprintf("192.0.2.%d", i))}, MAC: mac(fmt.Sprintf("52:54:00:00:00:0%d", i))}))
	}
	return c, srv.URL
}

var webKey = mapper.ServiceKey{Network: "net1", IP: netip.MustParseAddr("10.1.0.5"), Port: 80, Protocol: mapper.TCP}

// servers returns "name@server" of each replica.
func servers(s mapper.ScheduledService) string {
	var out []string
	for _, p := range s.Replicas {
		out = append(out, p.Name+"@"+p.Server)
	}
	return strings.Join(out, " ")
}

func TestSchedulerPlace(t *testing.T) {
	c, base := schedWorld(t, 4)
	// s1 already runs two other endpoints: it is the fullest.
	for _, n := range []string{"a", "b"} {
		must[mapper.Endpoint](t)(c.CreateEndpoint(ctx, mapper.EndpointSpec{Name: n, Network: "net1", IP: ip("10.1.0.9"), Server: "s1"}))
	}
	req := mapper.PlaceRequest{Name: "web", Replicas: 4, Mode: mapper.Failover, Priority: 10}
	s := must[mapper.ScheduledService](t)(c.PlaceService(ctx, webKey, req))
	// Spread first (fewest replicas of the service), then the emptiest
	// server, then by name: deterministic.
	if got, want := servers(s), "web-1@s2 web-2@s3 web-3@s1 web-4@s2"; got != want {
		t.Errorf("placements %s, want %s", got, want)
	}
	for i, p := range s.Replicas {
		srvIP := ip("192.0.2." + p.Server[1:])
		if p.State != mapper.Down || p.Tuple.IP != webKey.IP || p.Tuple.Port != 80 || p.Tuple.ServerIP != srvIP || p.Tuple.ServerPort < 16384 {
			t.Errorf("replica %d: %+v; want down, 10.1.0.5:80 on %s with a ServerPort", i, p, srvIP)
		}
	}
	if d := must[mapper.EndpointDetail](t)(c.Endpoint(ctx, "web-1")); d.Endpoint.Mode != mapper.Failover || d.Endpoint.Priority != 10 {
		t.Errorf("web-1 in the registry: %+v", d.Endpoint)
	}
	svcs := must[[]mapper.Service](t)(c.Services(ctx))
	if len(svcs) != 1 || len(svcs[0].Backends) != 4 {
		t.Errorf("services: %+v, want 10.1.0.5:80 with 4 backends", svcs)
	}

	// The same request again: 200, nothing changed.
	status, body := rawCall(t, "POST", base+"/v1/scheduler/services/net1/10.1.0.5/80", `{"name":"web","replicas":4,"mode":"failover","priority":10}`)
	if status != http.StatusOK {
		t.Errorf("repeated place: status %d %s, want 200", status, body)
	}
	if again := must[mapper.ScheduledService](t)(c.ScheduledService(ctx, webKey)); servers(again) != servers(s) {
		t.Errorf("after the repeat: %s, want %s", servers(again), servers(s))
	}
	// A different request is a conflict naming the field.
	req.Replicas = 2
	_, err := c.PlaceService(ctx, webKey, req)
	wantAPIErr(t, err, mapper.ErrConflict, "replicas", "has 4 replicas")
	req.Replicas, req.Mode = 4, mapper.Balance
	_, err = c.PlaceService(ctx, webKey, req)
	wantAPIErr(t, err, mapper.ErrConflict, "mode", "mode failover")
	// UDP on the same IP:Port is another service.
	udp := webKey
	udp.Protocol = mapper.UDP
	u := must[mapper.ScheduledService](t)(c.PlaceService(ctx, udp, mapper.PlaceRequest{Name: "dns", Replicas: 1, State: mapper.Active}))
	if len(u.Replicas) != 1 || u.Replicas[0].State != mapper.Active || u.Protocol != mapper.UDP {
		t.Errorf("udp service: %+v", u)
	}
}

func TestSchedulerScaleMoveRemove(t *testing.T) {
	c, base := schedWorld(t, 4)
	s := must[mapper.ScheduledService](t)(c.PlaceService(ctx, webKey, mapper.PlaceRequest{Name: "web", Replicas: 3}))
	if got := servers(s); got != "web-1@s1 web-2@s2 web-3@s3" {
		t.Fatalf("placements %s", got)
	}
	s = must[mapper.ScheduledService](t)(c.ScaleService(ctx, webKey, 5))
	if got := servers(s); got != "web-1@s1 web-2@s2 web-3@s3 web-4@s1 web-5@s2" {
		t.Errorf("scaled to 5: %s", got)
	}
	s = must[mapper.ScheduledService](t)(c.ScaleService(ctx, webKey, 2))
	if got := servers(s); got != "web-1@s1 web-2@s2" {
		t.Errorf("scaled to 2 (the newest go first): %s", got)
	}
	if _, err := c.Endpoint(ctx, "web-3"); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("web-3 after scaling down: %v, want not found", err)
	}
	// Names are never reused: the next replica is web-6.
	s = must[mapper.ScheduledService](t)(c.ScaleService(ctx, webKey, 3))
	if got := servers(s); got != "web-1@s1 web-2@s2 web-6@s3" {
		t.Errorf("scaled to 3 again: %s", got)
	}

	before := must[mapper.EndpointDetail](t)(c.Endpoint(ctx, "web-1")).Endpoint
	must[mapper.Endpoint](t)(c.SetEndpointState(ctx, "web-1", mapper.StateRequest{State: mapper.Active}))
	s = must[mapper.ScheduledService](t)(c.MoveReplica(ctx, webKey, "web-1", "s3"))
	if got := servers(s); got != "web-1@s3 web-2@s2 web-6@s3" {
		t.Errorf("after moving web-1 to s3: %s", got)
	}
	after := must[mapper.EndpointDetail](t)(c.Endpoint(ctx, "web-1")).Endpoint
	if after.Server != "s3" || after.State != mapper.Down || after.Identity != before.Identity || after.MAC != before.MAC || after.Wire.Addr != ip("192.0.2.3") {
		t.Errorf("moved web-1: %+v; want on s3, down, same identity block and MAC, a wire block of 192.0.2.3", after)
	}
	// Without "to", the best other server: s1 has no replica left.
	s = must[mapper.ScheduledService](t)(c.MoveReplica(ctx, webKey, "web-6", ""))
	if got := servers(s); got != "web-1@s3 web-2@s2 web-6@s1" {
		t.Errorf("after the moves: %s", got)
	}
	_, err := c.MoveReplica(ctx, webKey, "web-9", "")
	wantAPIErr(t, err, mapper.ErrNotFound, "replica", "not a replica")
	_, err = c.MoveReplica(ctx, webKey, "web-1", "s9")
	wantAPIErr(t, err, mapper.ErrNotFound, "to", "does not exist")

	was := must[mapper.ScheduledService](t)(c.RemoveService(ctx, webKey))
	if len(was.Replicas) != 3 {
		t.Errorf("removed: %+v, want the 3 replicas it had", was)
	}
	if eps := must[[]mapper.Endpoint](t)(c.Endpoints(ctx, "net1", "")); len(eps) != 0 {
		t.Errorf("after remove: %d endpoints remain", len(eps))
	}
	// Again: 404, nothing to remove.
	if status, body := rawCall(t, "DELETE", base+"/v1/scheduler/services/net1/10.1.0.5/80", ""); status != http.StatusNotFound {
		t.Errorf("second DELETE: %d %s, want 404", status, body)
	}
}

// TestSchedulerHostPort: every replica of a service placed with a host
// port publishes it, a new replica too, and another service cannot take
// it.
func TestSchedulerHostPort(t *testing.T) {
	c, _ := schedWorld(t, 4)
	svc := must[mapper.ScheduledService](t)(c.PlaceService(ctx, webKey, mapper.PlaceRequest{Name: "web", Replicas: 2, HostPort: 8080}))
	if svc.HostPort != 8080 {
		t.Errorf("scheduled service: host port %d, want 8080", svc.HostPort)
	}
	must[mapper.ScheduledService](t)(c.ScaleService(ctx, webKey, 3))
	eps := must[[]mapper.Endpoint](t)(c.Endpoints(ctx, "net1", ""))
	if len(eps) != 3 {
		t.Fatalf("%d endpoints, want 3", len(eps))
	}
	for _, e := range eps {
		if fmt.Sprint(e.Published) != "[8080->80/tcp]" {
			t.Errorf("replica %s publishes %v, want [8080->80/tcp]", e.Name, e.Published)
		}
	}
	other := webKey
	other.IP = netip.MustParseAddr("10.1.0.6")
	_, err := c.PlaceService(ctx, other, mapper.PlaceRequest{Name: "db", Replicas: 1, HostPort: 8080})
	wantAPIErr(t, err, mapper.ErrConflict, "host_port", "8080/tcp already leads to net1/10.1.0.5:80")
	if eps := must[[]mapper.Endpoint](t)(c.Endpoints(ctx, "net1", "")); len(eps) != 3 {
		t.Errorf("a refused placement left %d endpoints, want 3", len(eps))
	}
}

// TestSchedulerAllOrNothing: when not every replica fits, none is placed.
func TestSchedulerAllOrNothing(t *testing.T) {
	c, _ := schedWorld(t, 1) // one wire block per server
	_, err := c.PlaceService(ctx, webKey, mapper.PlaceRequest{Name: "web", Replicas: 4})
	wantAPIErr(t, err, mapper.ErrPortSpaceFull, "replicas", "has a free wire block")
	if eps := must[[]mapper.Endpoint](t)(c.Endpoints(ctx, "", "")); len(eps) != 0 {
		t.Errorf("a refused placement left %d endpoints", len(eps))
	}
	_, err = c.PlaceService(ctx, webKey, mapper.PlaceRequest{Name: "web", Replicas: 2, Constraints: mapper.Constraints{Servers: []string{"s1", "s2", "s3"}, MaxPerServer: 1, Exclude: []string{"s2"}}})
	if err != nil {
		t.Fatal(err)
	}
	s := must[mapper.ScheduledService](t)(c.ScheduledService(ctx, webKey))
	if got := servers(s); got != "web-1@s1 web-2@s3" {
		t.Errorf("with s2 excluded: %s", got)
	}
	_, err = c.ScaleService(ctx, webKey, 3)
	wantAPIErr(t, err, mapper.ErrPortSpaceFull, "replicas", "max_per_server 1")
	if s := must[mapper.ScheduledService](t)(c.ScheduledService(ctx, webKey)); len(s.Replicas) != 2 {
		t.Errorf("a refused scale changed the replicas: %s", servers(s))
	}
}

func TestSchedulerRejectsBadInput(t *testing.T) {
	_, base := schedWorld(t, 4)
	svc := base + "/v1/scheduler/services/net1/10.1.0.5/80"
	tests := []struct {
		name, method, url, body string
		status                  int
		field, fragment         string
	}{
		{"bad ip", "POST", base + "/v1/scheduler/services/net1/10.1.0.x/80", `{"name":"web","replicas":1}`, 400, "ip", "not an IPv4 address"},
		{"bad port", "POST", base + "/v1/scheduler/services/net1/10.1.0.5/http", `{"name":"web","replicas":1}`, 400, "port", "from 1 to 65535"},
		{"port 0", "GET", base + "/v1/scheduler/services/net1/10.1.0.5/0", ``, 400, "port", "from 1 to 65535"},
		{"protocol", "POST", svc, `{"name":"web","replicas":1,"protocol":"sctp"}`, 400, "protocol", "sctp"},
		{"unknown network", "POST", base + "/v1/scheduler/services/nope/10.1.0.5/80", `{"name":"web","replicas":1}`, 404, "network", "does not exist"},
		{"outside subnet", "POST", base + "/v1/scheduler/services/net1/10.2.0.5/80", `{"name":"web","replicas":1}`, 400, "ip", "outside the subnet"},
		{"no name", "POST", svc, `{"replicas":1}`, 400, "name", "missing"},
		{"no replicas", "POST", svc, `{"name":"web"}`, 400, "replicas", "1 or more"},
		{"replicas type", "POST", svc, `{"name":"web","replicas":"3"}`, 400, "replicas", "whole number"},
		{"mode", "POST", svc, `{"name":"web","replicas":1,"mode":"random"}`, 400, "mode", "balance or failover"},
		{"unknown field", "POST", svc, `{"name":"web","replicas":1,"image":"nginx"}`, 400, "image", "unknown field"},
		{"constraint field", "POST", svc, `{"name":"web","replicas":1,"constraints":{"zone":"a"}}`, 400, "constraints.zone", "unknown field"},
		{"unknown server", "POST", svc, `{"name":"web","replicas":1,"constraints":{"servers":["s1","s9"]}}`, 404, "constraints.servers[1]", "does not exist"},
		{"not scheduled", "GET", svc, ``, 404, "", "not scheduled"},
		{"scale unscheduled", "POST", svc + "/scale", `{"replicas":2}`, 404, "", "not scheduled"},
		{"scale to 0", "POST", svc + "/scale", `{"replicas":0}`, 400, "replicas", "DELETE removes"},
		{"move without replica", "POST", svc + "/move", `{}`, 400, "replica", "missing"},
		{"host port in the wire range", "POST", svc, `{"name":"web","replicas":1,"host_port":16500}`, 400, "host_port", "inside the wire range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := rawCall(t, tt.method, tt.url, tt.body)
			var e mapper.APIError
			if err := jsonUnmarshal(body, &e); err != nil {
				t.Fatalf("status %d, body %q is not an API error", status, body)
			}
			if status != tt.status || e.Field != tt.field || !strings.Contains(e.Message, tt.fragment) {
				t.Errorf("got %d field=%q %q; want %d field=%q saying %q", status, e.Field, e.Message, tt.status, tt.field, tt.fragment)
			}
		})
	}
}

func rawCall(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func wantAPIErr(t *testing.T, err, sentinel error, field, fragment string) {
	t.Helper()
	var ae *mapper.APIError
	if !errors.Is(err, sentinel) || !errors.As(err, &ae) || ae.Field != field || !strings.Contains(ae.Message, fragment) {
		t.Errorf("error %v (field %q); want %v on %q saying %q", err, fieldOf(ae), sentinel, field, fragment)
	}
}

func fieldOf(ae *mapper.APIError) string {
	if ae == nil {
		return ""
	}
	return ae.Field
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
