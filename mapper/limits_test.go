package mapper_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/pkitest"
)

// TestLimits: a client over its request rate or its watch streams gets
// 429 saying which limit, while another client is served; a list longer
// than a page comes in pages the client follows to the end.
func TestLimits(t *testing.T) {
	reg, api, srv, p := tlsWorld(t)
	alice := p.Client(srv.URL, mapper.RoleOperator, "alice")
	bob := p.Client(srv.URL, mapper.RoleReader, "bob")
	tooMany := func(err error, says string) {
		t.Helper()
		var ae *mapper.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests || ae.Code != "too_many_requests" ||
			!errors.Is(err, mapper.ErrTooManyRequests) || !strings.Contains(err.Error(), says) {
			t.Errorf("got %v, want 429 too_many_requests saying %q", err, says)
		}
	}

	t.Run("rate", func(t *testing.T) {
		api.SetLimits(mapper.Limits{Rate: 1, Burst: 3})
		for i := range 3 {
			if _, err := alice.Networks(ctx); err != nil {
				t.Fatalf("request %d of a burst of 3: %v", i+1, err)
			}
		}
		// A caller that cannot wait a second gets the 429 at once.
		short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, err := alice.Networks(short)
		tooMany(err, "operator alice made more than 1 requests per second (burst 3); retry in")
		if _, err := bob.Networks(ctx); err != nil {
			t.Errorf("another client, while alice is over her rate: %v", err)
		}
		// The answer says when to come back, in the standard header.
		resp := get(t, p, srv.URL+"/v1/networks", mapper.RoleOperator, "alice")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
			t.Errorf("status %d, Retry-After %q; want 429 and 1", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		// One that can waits as long as the mapper asks, and is served.
		start := time.Now()
		if _, err := alice.Networks(ctx); err != nil || time.Since(start) < 500*time.Millisecond {
			t.Errorf("over the rate, with time to wait: %v after %v; want an answer after about a second", err, time.Since(start))
		}
		// Refused requests count against their address's rate too.
		anon := p.Client(srv.URL, "", "")
		var codes []int
		for range 5 {
			short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, err := anon.Networks(short)
			cancel()
			var ae *mapper.APIError
			if errors.As(err, &ae) {
				codes = append(codes, ae.Status)
			}
		}
		if !slices.Contains(codes, http.StatusTooManyRequests) {
			t.Errorf("5 requests without a certificate over a rate of 1/s (burst 3): statuses %v, want a 429 among the 401s", codes)
		}
	})

	t.Run("watches", func(t *testing.T) {
		api.SetLimits(mapper.Limits{Watches: 2})
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// Each watch starts at the next revision, so the change below
		// reaches it however late its request arrives.
		next := func() int64 {
			t.Helper()
			return must[mapper.Snapshot](t)(reg.Snapshot(ctx)).Revision + 1
		}
		recv := func(s <-chan mapper.WatchResponse) mapper.WatchResponse {
			t.Helper()
			select {
			case r := <-s:
				return r
			case <-time.After(10 * time.Second):
				t.Fatal("no answer on the watch in 10s")
				return mapper.WatchResponse{}
			}
		}
		var streams []<-chan mapper.WatchResponse
		rev := next()
		for range 2 {
			streams = append(streams, alice.Watch(wctx, rev))
		}
		// Both are open once a change reaches them.
		must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "w1", Subnet: prefix("10.9.0.0/24")}))
		for i, s := range streams {
			if r := recv(s); r.Err != nil || len(r.Changes) != 1 {
				t.Fatalf("watch %d: %+v", i, r)
			}
		}
		third := recv(alice.Watch(wctx, next()))
		tooMany(third.Err, "operator alice holds 2 watch streams, the most a client may; close one first")
		other := bob.Watch(wctx, next())
		must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "w2", Subnet: prefix("10.9.1.0/24")}))
		if r := recv(other); r.Err != nil {
			t.Errorf("another client's watch, while alice holds her most: %v", r.Err)
		}
		cancel()
		// Closed streams are counted off: a new one opens.
		deadline := time.Now().Add(5 * time.Second)
		for {
			wctx, cancel := context.WithCancel(ctx)
			s := alice.Watch(wctx, next())
			must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: fmt.Sprintf("w3-%d", time.Now().UnixNano()), Subnet: prefix("10.9.2.0/24")}))
			r := recv(s)
			cancel()
			if r.Err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after closing both watches, a new one: %v", r.Err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("pages", func(t *testing.T) {
		api.SetLimits(mapper.Limits{ListPage: 2})
		for i := range 5 {
			spec := web(fmt.Sprintf("web-%d", i), "s1")
			spec.IP = ip(fmt.Sprintf("10.1.0.%d", 10+i))
			must[mapper.Endpoint](t)(reg.CreateEndpoint(ctx, spec))
		}
		eps, err := alice.Endpoints(ctx, "net1", "")
		if err != nil || len(eps) != 5 {
			t.Fatalf("endpoints over pages of 2: %d, %v; want all 5", len(eps), err)
		}
		for i := 1; i < len(eps); i++ {
			if eps[i].ID <= eps[i-1].ID {
				t.Errorf("endpoints out of order or repeated: %d after %d", eps[i].ID, eps[i-1].ID)
			}
		}
		svcs, err := alice.Services(ctx)
		if err != nil || len(svcs) != 5 {
			t.Errorf("services over pages of 2: %d, %v; want 5", len(svcs), err)
		}
		ns, err := alice.Networks(ctx)
		if err != nil || len(ns) < 5 {
			t.Errorf("networks over pages of 2: %d, %v", len(ns), err)
		}
		// Pages over the rate: the client waits between them.
		api.SetLimits(mapper.Limits{ListPage: 2, Rate: 2, Burst: 1})
		if eps, err := alice.Endpoints(ctx, "net1", ""); err != nil || len(eps) != 5 {
			t.Errorf("endpoints over pages of 2 at 2 requests/s: %d, %v; want all 5", len(eps), err)
		}
		api.SetLimits(mapper.Limits{ListPage: 2})
		resp := get(t, p, srv.URL+"/v1/endpoints", mapper.RoleReader, "bob")
		if next := resp.Header.Get(mapper.NextHeader); next != fmt.Sprint(eps[1].ID) {
			t.Errorf("first page's %s: %q, want %d", mapper.NextHeader, next, eps[1].ID)
		}
		resp = get(t, p, srv.URL+fmt.Sprintf("/v1/endpoints?after=%d&limit=1", eps[3].ID), mapper.RoleReader, "bob")
		if next := resp.Header.Get(mapper.NextHeader); next != "" {
			t.Errorf("last page has %s %q", mapper.NextHeader, next)
		}
		for _, q := range []string{"/v1/endpoints?limit=0", "/v1/endpoints?after=x", "/v1/services?after=net1/10.1.0.5/80"} {
			if resp := get(t, p, srv.URL+q, mapper.RoleReader, "bob"); resp.StatusCode != http.StatusBadRequest {
				t.Errorf("GET %s: status %d, want 400", q, resp.StatusCode)
			}
		}
	})
}

// get sends one GET as role/name and returns the response, its body read.
func get(t *testing.T, p *pkitest.PKI, url string, role mapper.Role, name string) *http.Response {
	t.Helper()
	resp, err := p.HTTPClient(role, name).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}
