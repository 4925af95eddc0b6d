package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper/store"
	"github.com/daolinet/daoli/mapper/store/etcdtest"
	"github.com/daolinet/daoli/mapper/store/storetest"
)

// cluster is the package's one etcd cluster of three members; each test
// keeps to keys of its own prefix.
var cluster *etcdtest.Cluster

func TestMain(m *testing.M) {
	c, err := etcdtest.Start(3, etcdtest.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start etcd:", err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	c.Close()
	os.Exit(code)
}

var prefixes atomic.Int64

func openEtcd(t *testing.T, endpoints []string) *store.Etcd {
	t.Helper()
	s, err := store.OpenEtcd(store.EtcdConfig{
		Endpoints: endpoints,
		Prefix:    "/test" + strconv.FormatInt(prefixes.Add(1), 10) + "/",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestEtcdConformance(t *testing.T) {
	storetest.RunWith(t, func(t *testing.T) store.Store { return openEtcd(t, cluster.Endpoints()) },
		storetest.Options{SharedRevisions: true})
}

// Two stores on one prefix are two stateless mappers: a write through
// one is read, listed and watched through the other, and concurrent
// read-modify-writes through both lose nothing.
func TestEtcdTwoStoresShareOneRegistry(t *testing.T) {
	prefix := "/shared" + strconv.FormatInt(prefixes.Add(1), 10) + "/"
	open := func() *store.Etcd {
		s, err := store.OpenEtcd(store.EtcdConfig{Endpoints: cluster.Endpoints(), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := open(), open()
	ctx := context.Background()
	const each = 50
	done := make(chan error, 2)
	for _, s := range []store.Store{a, b} {
		go func() {
			for i := 0; i < each; i++ {
				_, err := s.Update(ctx, func(tx store.STM) error {
					v, _ := tx.Get("counter")
					n, _ := strconv.Atoi(string(v))
					tx.Put("counter", []byte(strconv.Itoa(n+1)), 0)
					return nil
				})
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for name, s := range map[string]store.Store{"a": a, "b": b} {
		kv, ok, _, err := s.Get(ctx, "counter")
		if err != nil || !ok || string(kv.Value) != strconv.Itoa(2*each) {
			t.Errorf("counter through %s: %q, %v, %v; want %d", name, kv.Value, ok, err, 2*each)
		}
		// A transaction through either store reads the other's writes.
		var seen string
		if _, err := s.Update(ctx, func(tx store.STM) error { v, _ := tx.Get("counter"); seen = string(v); return nil }); err != nil {
			t.Fatal(err)
		}
		if seen != strconv.Itoa(2*each) {
			t.Errorf("a transaction through %s read counter=%s, want %d", name, seen, 2*each)
		}
	}
}

// A List inside a transaction is guarded: a key deleted under the prefix
// by another store between the read and the commit makes the
// transaction run again rather than commit on a stale list.
func TestEtcdListConflictsWithDelete(t *testing.T) {
	prefix := "/listconflict" + strconv.FormatInt(prefixes.Add(1), 10) + "/"
	a, err := store.OpenEtcd(store.EtcdConfig{Endpoints: cluster.Endpoints(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := store.OpenEtcd(store.EtcdConfig{Endpoints: cluster.Endpoints(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if _, err := a.Update(ctx, func(tx store.STM) error {
		tx.Put("servers/x", []byte("1"), 0)
		tx.Put("servers/y", []byte("1"), 0)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	runs := 0
	_, err = a.Update(ctx, func(tx store.STM) error {
		runs++
		n := len(tx.List("servers/"))
		if runs == 1 {
			// Another mapper removes a server while this one decides.
			if _, err := b.Update(ctx, func(tx store.STM) error { tx.Del("servers/y"); return nil }); err != nil {
				t.Error(err)
			}
		}
		tx.Put("count", []byte(strconv.Itoa(n)), 0)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	kv, _, _, _ := a.Get(ctx, "count")
	if runs < 2 || string(kv.Value) != "1" {
		t.Errorf("after a concurrent delete: %d runs, count=%s; want a second run and count=1", runs, kv.Value)
	}
}

// A store keeps working while one member of three is dead, and a write
// acknowledged before the kill is there afterwards.
func TestEtcdSurvivesAMemberKill(t *testing.T) {
	c, err := etcdtest.Start(3, etcdtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := openEtcd(t, c.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	storetest.Fill(t, s, "before/", 10)
	w := s.Watch(ctx, "after/", 0)
	c.Members[0].Kill()
	storetest.Fill(t, s, "after/", 10)
	kvs, _, err := s.List(ctx, "")
	if err != nil || len(kvs) != 20 {
		t.Fatalf("with a member dead: %d keys, %v; want 20", len(kvs), err)
	}
	n := 0
	for n < 10 {
		select {
		case r := <-w:
			if r.Err != nil {
				t.Fatalf("watch across a member's death: %v", r.Err)
			}
			n += len(r.Events)
		case <-ctx.Done():
			t.Fatalf("watch across a member's death: %d of 10 events", n)
		}
	}
	if err := c.Members[0].Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestEtcdTLS(t *testing.T) {
	c, err := etcdtest.Start(1, etcdtest.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg, err := c.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.Fill(t, s, "k/", 3)
	if kvs, _, err := s.List(context.Background(), "k/"); err != nil || len(kvs) != 3 {
		t.Errorf("over TLS: %d keys, %v; want 3", len(kvs), err)
	}
	// Without a client certificate the cluster refuses us, clearly.
	if _, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), DialTimeout: time.Second}); err == nil {
		t.Error("a client without TLS opened a store on a TLS cluster")
	}
}

// A store with a prefix keeps writing when others write to the cluster
// outside it: its mirror then sees no event for the newest revisions and
// must learn by a progress notification that it is current.
func TestEtcdPrefixWithForeignWriters(t *testing.T) {
	mine := openEtcd(t, cluster.Endpoints())
	other := openEtcd(t, cluster.Endpoints())
	storetest.Fill(t, mine, "k/", 1)
	storetest.Fill(t, other, "x/", 3) // revisions the first store's mirror has no event for
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	if _, err := mine.Update(ctx, func(tx store.STM) error { tx.Put("k/after", []byte("1"), 0); return nil }); err != nil {
		t.Fatalf("update after foreign writes: %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("an update after foreign writes took %v", d)
	}
}

// Without a quorum, an update fails with ErrUnavailable instead of
// hanging, and reads fail the same way.
func TestEtcdWithoutQuorum(t *testing.T) {
	c, err := etcdtest.Start(3, etcdtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := openEtcd(t, c.Endpoints())
	storetest.Fill(t, s, "k/", 1)
	c.Members[0].Kill()
	c.Members[1].Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err = s.Update(ctx, func(tx store.STM) error { tx.Put("k/x", []byte("1"), 0); return nil })
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("update without a quorum: %v, want ErrUnavailable", err)
	}
	if _, _, err := s.List(ctx, "k/"); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("list without a quorum: %v, want ErrUnavailable", err)
	}
}
