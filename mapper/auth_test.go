package mapper_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/pkitest"
)

// TestClientCertificates: with client certificates required, a request
// without one, or with one of another CA, is answered 401 saying why;
// each role may do what docs/security.md says and gets 403 naming
// itself for the rest.
func TestClientCertificates(t *testing.T) {
	_, _, srv, p := tlsWorld(t)

	status := func(err error) int {
		var ae *mapper.APIError
		if errors.As(err, &ae) {
			return ae.Status
		}
		return 0
	}
	want := func(err error, code int, says string) {
		t.Helper()
		if status(err) != code || !strings.Contains(err.Error(), says) {
			t.Errorf("got %v (status %d), want %d saying %q", err, status(err), code, says)
		}
	}
	anon := p.Client(srv.URL, "", "")
	_, err := anon.Networks(ctx)
	want(err, 401, "no client certificate")

	other := pkitest.New(t)
	ocert, okey := other.Issue(mapper.RoleOperator, "mallory")
	cfg, _ := mapper.ClientTLS(p.CAFile(), ocert, okey)
	foreign := mapper.NewClient(srv.URL, &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}})
	_, err = foreign.Networks(ctx)
	want(err, 401, "certificate signed by unknown authority")

	mcert, mkey := p.Issue(mapper.RoleMapper, "m2", "127.0.0.1")
	cfg, _ = mapper.ClientTLS(p.CAFile(), mcert, mkey)
	_, err = mapper.NewClient(srv.URL, &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}).Networks(ctx)
	if status(err) != 401 {
		t.Errorf("a mapper's serving certificate used as a client's: %v, want 401", err)
	}

	reader := p.Client(srv.URL, mapper.RoleReader, "dash")
	if _, err := reader.Snapshot(ctx); err != nil {
		t.Errorf("reader snapshot: %v", err)
	}
	_, err = reader.CreateEndpoint(ctx, web("w", "s1"))
	want(err, 403, "reader dash may only read and watch")
	_, err = reader.CreateNetwork(ctx, mapper.NetworkSpec{Name: "x", Subnet: prefix("10.7.0.0/24")})
	want(err, 403, "that takes an operator certificate")

	s1 := p.Client(srv.URL, mapper.RoleServer, "s1")
	if _, err := s1.CreateEndpoint(ctx, web("w1", "s1")); err != nil {
		t.Fatalf("server s1 creating its own endpoint: %v", err)
	}
	_, err = s1.CreateEndpoint(ctx, web("w2", "s2"))
	want(err, 403, "server s1 may create endpoints only on its own server, not on s2")
	_, err = s1.Heartbeat(ctx, "s2")
	want(err, 403, "only on its own server")
	_, err = s1.RegisterServer(ctx, mapper.ServerSpec{Name: "s2", IPs: []netip.Addr{ip("192.0.2.2")}, MAC: mac("52:54:00:00:00:02")})
	want(err, 403, "only on its own server")
	if _, err := s1.Heartbeat(ctx, "s1"); err != nil {
		t.Errorf("s1 heartbeat: %v", err)
	}
	if e := s1.DeleteNetwork(ctx, "net1"); status(e) != 403 {
		t.Errorf("server deleting a network: %v", e)
	}
	_, err = s1.ConnectNetworks(ctx, "net1", "net2")
	want(err, 403, "that takes an operator certificate")
	_, err = s1.ExportService(ctx, "net1", mapper.ExportSpec{IP: ip("10.1.0.5"), Port: 80, To: "net2"})
	want(err, 403, "that takes an operator certificate")

	op := p.Client(srv.URL, mapper.RoleOperator, "alice")
	if _, err := op.CreateEndpoint(ctx, web("w2", "s2")); err != nil {
		t.Fatalf("operator: %v", err)
	}
	// s1 may not touch s2's endpoint, but may take it over by a move, and
	// give its own away.
	_, err = s1.DeleteEndpoint(ctx, "w2")
	want(err, 403, "remove endpoints only on its own server, not on s2")
	_, err = s1.SetEndpointState(ctx, "w2", mapper.StateRequest{State: mapper.Down})
	want(err, 403, "not on s2")
	if _, err := s1.MoveEndpoint(ctx, "w2", "s1", ""); err != nil {
		t.Errorf("s1 taking w2 over: %v", err)
	}
	if _, err := s1.MoveEndpoint(ctx, "w2", "s2", ""); err != nil {
		t.Errorf("s1 giving w2 back: %v", err)
	}
	_, err = s1.MoveEndpoint(ctx, "w2", "s2", "")
	want(err, 403, "")
	if _, err := s1.DeleteEndpoint(ctx, "w1"); err != nil {
		t.Errorf("s1 removing its own endpoint: %v", err)
	}
	if _, err := op.DeleteEndpoint(ctx, "w2"); err != nil {
		t.Errorf("operator: %v", err)
	}
	// A watch is reading.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp := <-reader.Watch(wctx, 1)
	if resp.Err != nil {
		t.Errorf("reader watch: %v", resp.Err)
	}
	respAnon := <-anon.Watch(wctx, 1)
	if status(respAnon.Err) != 401 {
		t.Errorf("watch without a certificate: %v", respAnon.Err)
	}
}

// tlsWorld serves world's registry over TLS, requiring client
// certificates of the returned CA.
func tlsWorld(t *testing.T) (*mapper.Registry, *mapper.API, *httptest.Server, *pkitest.PKI) {
	reg, _ := newRegistry(t, mapper.Config{})
	world(t, reg)
	p := pkitest.New(t)
	api := mapper.NewAPI(reg, nil)
	srv := httptest.NewUnstartedServer(api)
	srv.TLS = p.ServerTLS(api, "127.0.0.1")
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(api.Close)
	return reg, api, srv, p
}
