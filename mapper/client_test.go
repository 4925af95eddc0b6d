package mapper_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
)

// twoMappers serves one registry through two APIs, as two stateless
// mappers on one etcd cluster are.
func twoMappers(t *testing.T) (a, b *httptest.Server) {
	t.Helper()
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	reg := must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st}))
	a, b = httptest.NewServer(mapper.NewAPI(reg, nil)), httptest.NewServer(mapper.NewAPI(reg, nil))
	t.Cleanup(func() { a.Close(); b.Close(); st.Close() })
	return a, b
}

// A client of two mappers keeps working when the one it uses dies, for
// writes and for a watch resumed from the last revision it saw.
func TestClientMovesToAnotherMapper(t *testing.T) {
	a, b := twoMappers(t)
	c := mapper.NewClient(a.URL+","+b.URL, nil)
	n := must[mapper.Network](t)(c.CreateNetwork(ctx, mapper.NetworkSpec{Name: "one", Subnet: prefix("10.1.0.0/24")}))
	if c.URL() != a.URL {
		t.Fatalf("client uses %s, want the first mapper %s", c.URL(), a.URL)
	}
	snap := must[mapper.Snapshot](t)(c.Snapshot(ctx))
	a.Close() // the first mapper dies
	must[mapper.Network](t)(c.CreateNetwork(ctx, mapper.NetworkSpec{Name: "two", Subnet: prefix("10.2.0.0/24")}))
	if c.URL() != b.URL {
		t.Errorf("after the first mapper died the client uses %s, want %s", c.URL(), b.URL)
	}
	// The watch resumes from the snapshot's revision at the other mapper,
	// without a new snapshot.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp := <-c.Watch(wctx, snap.Revision+1)
	if resp.Err != nil || len(resp.Changes) != 1 || resp.Changes[0].Network.Name != "two" {
		t.Fatalf("watch at the other mapper from revision %d: %+v, want network two", snap.Revision+1, resp)
	}
	if got := must[mapper.Network](t)(c.Network(ctx, "one")); got.ID != n.ID {
		t.Errorf("network one through the other mapper: %+v", got)
	}
}

// A request that creates something is not sent again to another mapper
// when the first died after receiving it: that could create it twice.
func TestClientDoesNotRepeatACreate(t *testing.T) {
	_, b := twoMappers(t)
	dying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close() // received, then gone without an answer
		}
	}))
	defer dying.Close()
	c := mapper.NewClient(dying.URL+","+b.URL, nil)
	_, err := c.CreateNetwork(ctx, mapper.NetworkSpec{Name: "once", Subnet: prefix("10.1.0.0/24")})
	if !errors.Is(err, mapper.ErrOutcomeUnknown) {
		t.Fatalf("create through a mapper that died on it: %v, want ErrOutcomeUnknown", err)
	}
	if _, err := mapper.NewClient(b.URL, nil).Network(ctx, "once"); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("the create was repeated at the other mapper: %v", err)
	}
	// A read through the same pair is repeated, and answered.
	c = mapper.NewClient(dying.URL+","+b.URL, nil)
	if _, err := c.Networks(ctx); err != nil {
		t.Errorf("a read through a dying mapper and a live one: %v", err)
	}
}

// A mapper whose machine died answers nothing and sends no reset: a call
// that runs out of time moves the next one to another mapper, and a watch
// stream that goes silent ends, so that it can resume elsewhere.
func TestClientLeavesASilentMapper(t *testing.T) {
	_, b := twoMappers(t)
	hold := make(chan struct{})
	defer close(hold)
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/watch" {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
		}
		select { // never a byte more
		case <-hold:
		case <-r.Context().Done():
		}
	}))
	defer silent.Close()
	c := mapper.NewClient(silent.URL+","+b.URL, nil)
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := c.Networks(tctx)
	cancel()
	if err == nil {
		t.Fatal("a call to a silent mapper succeeded")
	}
	if _, err := c.Networks(ctx); err != nil || c.URL() != b.URL {
		t.Errorf("the next call: %v at %s, want an answer from %s", err, c.URL(), b.URL)
	}

	w := mapper.NewClient(silent.URL, nil)
	t0 := time.Now()
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	for resp := range w.Watch(wctx, 0) {
		if resp.Err != nil {
			break
		}
	}
	if d := time.Since(t0); d > 4*mapper.WatchKeepalive {
		t.Errorf("a silent watch stream ended after %v, want within three keepalives (%v)", d, 3*mapper.WatchKeepalive)
	}
}
