// Package storetest is the conformance suite every store.Store backend
// passes: revisions, serializable updates, watch ordering and resume,
// compaction and leases. A backend's test calls Run with a constructor.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper/store"
	"github.com/google/go-cmp/cmp"
)

// Options say what a backend does differently.
type Options struct {
	// SharedRevisions: concurrent Updates may commit together and share
	// one revision (etcd's group commit), so only the values, not the
	// number of revisions, show that no update was lost.
	SharedRevisions bool
}

// Run runs the suite with no Options.
func Run(t *testing.T, open func(t *testing.T) store.Store) { RunWith(t, open, Options{}) }

// RunWith runs the suite. open returns a new, empty store; the suite closes it.
//
// Revisions are checked relative to the store's revision when it was
// opened: a store on a shared cluster (etcd) starts at the cluster's
// revision, not at zero. Nothing else may write to the cluster while a
// case runs, so that every Update still advances the revision by one.
func RunWith(t *testing.T, open func(t *testing.T) store.Store, opts Options) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"Revisions", testRevisions},
		{"AbortLeavesNothing", testAbort},
		{"ReadsAreCopies", testReadsAreCopies},
		{"ListAndMetadata", testList},
		{"NoLostUpdates", func(t *testing.T, s store.Store) { testNoLostUpdates(t, s, opts) }},
		{"WatchOrderAndResume", testWatchResume},
		{"WatchPrefixAndFuture", testWatchPrefix},
		{"WatchCompacted", testWatchCompacted},
		{"Leases", testLeases},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { s.Close() })
			tt.fn(t, s)
		})
	}
}

func put(t *testing.T, s store.Store, kv ...string) int64 {
	t.Helper()
	rev, err := s.Update(context.Background(), func(tx store.STM) error {
		for i := 0; i+1 < len(kv); i += 2 {
			tx.Put(kv[i], []byte(kv[i+1]), 0)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	return rev
}

func del(t *testing.T, s store.Store, keys ...string) int64 {
	t.Helper()
	rev, err := s.Update(context.Background(), func(tx store.STM) error {
		for _, k := range keys {
			tx.Del(k)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	return rev
}

// base is the store's revision before a case writes anything.
func base(t *testing.T, s store.Store) int64 {
	t.Helper()
	rev, _, err := s.Revision(context.Background())
	if err != nil {
		t.Fatalf("revision: %v", err)
	}
	return rev
}

func testRevisions(t *testing.T, s store.Store) {
	ctx := context.Background()
	b := base(t, s)
	if kvs, _, err := s.List(ctx, ""); err != nil || len(kvs) != 0 {
		t.Fatalf("new store: %d keys, %v; want none", len(kvs), err)
	}
	if got := put(t, s, "a", "1", "b", "2"); got != b+1 {
		t.Errorf("first write: revision %d, want %d", got, b+1)
	}
	if got := put(t, s, "a", "3"); got != b+2 {
		t.Errorf("second write: revision %d, want %d", got, b+2)
	}
	// Reading only, and deleting a missing key, change nothing.
	rev, err := s.Update(ctx, func(tx store.STM) error { tx.Get("a"); return nil })
	if err != nil || rev != b+2 {
		t.Errorf("read-only update: revision %d, %v; want %d", rev, err, b+2)
	}
	if got := del(t, s, "missing"); got != b+2 {
		t.Errorf("deleting a missing key: revision %d, want %d", got, b+2)
	}
	if got := del(t, s, "b"); got != b+3 {
		t.Errorf("delete: revision %d, want %d", got, b+3)
	}
	if _, ok, _, _ := s.Get(ctx, "b"); ok {
		t.Error("deleted key b is still there")
	}
}

func testAbort(t *testing.T, s store.Store) {
	ctx := context.Background()
	b := put(t, s, "k", "before")
	errBoom := errors.New("boom")
	_, err := s.Update(ctx, func(tx store.STM) error {
		tx.Put("k", []byte("after"), 0)
		tx.Put("other", []byte("x"), 0)
		if v, _ := tx.Get("k"); string(v) != "after" {
			t.Errorf("a transaction does not read its own write: %q", v)
		}
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("aborted update returned %v, want %v", err, errBoom)
	}
	_, err = s.Update(ctx, func(tx store.STM) error { panic("oops") })
	if err == nil {
		t.Fatal("a panicking transaction returned no error")
	}
	kv, _, rev, _ := s.Get(ctx, "k")
	if string(kv.Value) != "before" || rev != b {
		t.Errorf("after aborts: k=%q at revision %d, want \"before\" at %d", kv.Value, rev, b)
	}
	if _, ok, _, _ := s.Get(ctx, "other"); ok {
		t.Error("an aborted transaction left a key behind")
	}
}

// testReadsAreCopies: a transaction that changes a value it read, in
// place, and then aborts changes nothing that later transactions read.
func testReadsAreCopies(t *testing.T, s store.Store) {
	ctx := context.Background()
	put(t, s, "bits/a", "0000")
	for range 2 {
		s.Update(ctx, func(tx store.STM) error {
			v, _ := tx.Get("bits/a")
			v[0] = 'X'
			for _, kv := range tx.List("bits/") {
				kv.Value[1] = 'Y'
			}
			return errors.New("abort")
		})
	}
	var seen string
	if _, err := s.Update(ctx, func(tx store.STM) error { v, _ := tx.Get("bits/a"); seen = string(v); return nil }); err != nil {
		t.Fatal(err)
	}
	if seen != "0000" {
		t.Errorf("after aborted transactions changed what they read in place, a transaction reads %q, want \"0000\"", seen)
	}
}

func testList(t *testing.T, s store.Store) {
	ctx := context.Background()
	b := put(t, s, "p/b", "2", "p/a", "1", "q/c", "3") - 1
	put(t, s, "p/a", "1b")
	var seen []store.KeyValue
	_, err := s.Update(ctx, func(tx store.STM) error {
		tx.Put("p/c", []byte("new"), 0)
		tx.Del("p/b")
		seen = tx.List("p/")
		return errors.New("only looking")
	})
	if err == nil {
		t.Fatal("update did not return its error")
	}
	if got := keys(seen); !cmp.Equal(got, []string{"p/a", "p/c"}) {
		t.Errorf("List inside a transaction: %v, want [p/a p/c]", got)
	}
	kvs, rev, err := s.List(ctx, "p/")
	if err != nil {
		t.Fatal(err)
	}
	want := []store.KeyValue{
		{Key: "p/a", Value: []byte("1b"), CreateRevision: b + 1, ModRevision: b + 2, Version: 2},
		{Key: "p/b", Value: []byte("2"), CreateRevision: b + 1, ModRevision: b + 1, Version: 1},
	}
	if diff := cmp.Diff(want, kvs); diff != "" || rev != b+2 {
		t.Errorf("List at revision %d (want %d) (-want +got):\n%s", rev, b+2, diff)
	}
}

func keys(kvs []store.KeyValue) []string {
	var out []string
	for _, kv := range kvs {
		out = append(out, kv.Key)
	}
	return out
}

// testNoLostUpdates runs read-modify-write transactions concurrently: with
// serializable isolation, no increment may be lost and every write gets its
// own revision.
func testNoLostUpdates(t *testing.T, s store.Store, opts Options) {
	const workers, each = 16, 25
	b := base(t, s)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		revs = map[int64]bool{}
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				rev, err := s.Update(context.Background(), func(tx store.STM) error {
					v, _ := tx.Get("counter")
					n, _ := strconv.Atoi(string(v))
					tx.Put("counter", []byte(strconv.Itoa(n+1)), 0)
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if revs[rev] && !opts.SharedRevisions {
					t.Errorf("revision %d acknowledged twice", rev)
				}
				revs[rev] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	kv, _, rev, _ := s.Get(context.Background(), "counter")
	want := b + workers*each
	if opts.SharedRevisions {
		want = b + int64(len(revs)) // one revision per commit
	}
	if string(kv.Value) != strconv.Itoa(workers*each) || rev != want {
		t.Errorf("counter=%s at revision %d, want %d at %d", kv.Value, rev, workers*each, want)
	}
}

// collect reads events from ch until it has n or the deadline passes.
func collect(t *testing.T, ch <-chan store.WatchResponse, n int) []store.Event {
	t.Helper()
	var out []store.Event
	deadline := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case r, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d of %d events", len(out), n)
			}
			if r.Err != nil {
				t.Fatalf("watch error after %d of %d events: %v", len(out), n, r.Err)
			}
			out = append(out, r.Events...)
		case <-deadline:
			t.Fatalf("got %d of %d events before the deadline", len(out), n)
		}
	}
	return out
}

type ev struct {
	Type  store.EventType
	Key   string
	Value string
	Rev   int64
}

func summarize(evs []store.Event) []ev {
	var out []ev
	for _, e := range evs {
		out = append(out, ev{e.Type, e.KV.Key, string(e.KV.Value), e.KV.ModRevision})
	}
	return out
}

func testWatchResume(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := base(t, s)
	for i := 1; i <= 10; i++ {
		put(t, s, "k"+strconv.Itoa(i%3), strconv.Itoa(i))
	}
	del(t, s, "k1")
	// A watcher that reads four revisions and disconnects...
	first := collect(t, s.Watch(ctx, "", b+1), 4)[:4]
	last := first[3].KV.ModRevision
	// ...resumes after the last one it saw, while writes go on.
	put(t, s, "k9", "12")
	rest := collect(t, s.Watch(ctx, "", last+1), 8)
	var want []ev
	for i := 1; i <= 10; i++ {
		want = append(want, ev{store.EventPut, "k" + strconv.Itoa(i%3), strconv.Itoa(i), b + int64(i)})
	}
	want = append(want, ev{store.EventDelete, "k1", "", b + 11}, ev{store.EventPut, "k9", "12", b + 12})
	if diff := cmp.Diff(want, summarize(append(first, rest...))); diff != "" {
		t.Errorf("events across a resume (-want +got):\n%s", diff)
	}
	if rest[len(rest)-2].PrevValue == nil || string(rest[len(rest)-2].PrevValue) != "10" {
		t.Errorf("delete event carries previous value %q, want \"10\"", rest[len(rest)-2].PrevValue)
	}
}

func testWatchPrefix(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := put(t, s, "x/old", "0") - 1
	w := s.Watch(ctx, "x/", 0) // from the next revision on
	// Give the watcher time to settle at its start revision; events
	// written after it are delivered whether or not it has.
	time.Sleep(20 * time.Millisecond)
	put(t, s, "y/other", "1")
	put(t, s, "x/new", "2")
	got := summarize(collect(t, w, 1))
	if diff := cmp.Diff([]ev{{store.EventPut, "x/new", "2", b + 3}}, got); diff != "" {
		t.Errorf("prefix watch (-want +got):\n%s", diff)
	}
	r := <-s.Watch(ctx, "", b+10)
	if r.Err == nil || !errors.Is(r.Err, store.ErrFutureRevision) {
		t.Errorf("watch from a future revision: %v, want ErrFutureRevision", r.Err)
	}
}

func testWatchCompacted(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := base(t, s)
	for i := 0; i < 5; i++ {
		put(t, s, "k", strconv.Itoa(i))
	}
	if err := s.Compact(ctx, b+4); err != nil {
		t.Fatal(err)
	}
	r := <-s.Watch(ctx, "", b+2)
	if !errors.Is(r.Err, store.ErrCompacted) || r.CompactRevision != b+4 {
		t.Errorf("watch from a compacted revision: err=%v compact=%d, want ErrCompacted at %d", r.Err, r.CompactRevision, b+4)
	}
	if _, compacted, err := s.Revision(ctx); err != nil || compacted != b+4 {
		t.Errorf("compaction revision %d, %v; want %d", compacted, err, b+4)
	}
	got := summarize(collect(t, s.Watch(ctx, "", b+4), 2))
	want := []ev{{store.EventPut, "k", "3", b + 4}, {store.EventPut, "k", "4", b + 5}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("watch from the compaction revision (-want +got):\n%s", diff)
	}
}

func testLeases(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := s.Update(ctx, func(tx store.STM) error { tx.Put("orphan", nil, 12345); return nil })
	if !errors.Is(err, store.ErrLeaseNotFound) {
		t.Errorf("put with an unknown lease: %v, want ErrLeaseNotFound", err)
	}
	short, err := s.Grant(ctx, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := s.Grant(ctx, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := s.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := s.Update(ctx, func(tx store.STM) error {
		tx.Put("short", []byte("1"), short)
		tx.Put("kept", []byte("1"), kept)
		tx.Put("revoked", []byte("1"), revoked)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	w := s.Watch(ctx, "", rev+1)
	if err := s.Revoke(ctx, revoked); err != nil {
		t.Fatal(err)
	}
	if err := s.KeepAlive(ctx, revoked); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Errorf("keep-alive of a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := s.KeepAlive(ctx, kept); err != nil {
			t.Fatalf("keep-alive: %v", err)
		}
		_, shortThere, _, _ := s.Get(ctx, "short")
		if !shortThere {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a lease that was not kept alive did not expire")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok, _, _ := s.Get(ctx, "kept"); !ok {
		t.Error("a key whose lease was kept alive was deleted")
	}
	got := summarize(collect(t, w, 2))
	want := []ev{{store.EventDelete, "revoked", "", rev + 1}, {store.EventDelete, "short", "", rev + 2}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lease deletions in the change log (-want +got):\n%s", diff)
	}
}

// Fill writes n keys, one revision each, for backend-specific tests.
func Fill(t *testing.T, s store.Store, prefix string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		put(t, s, fmt.Sprintf("%s%06d", prefix, i), strconv.Itoa(i))
	}
}
